"""Benchmark 4 (rerun): a finished experiment run again makes no LLM call, and costs little time.

`daydream run` twice against a local OpenAI-compatible server on the sample experiment's size
(84 generation tasks, 336 evaluation pairs): LLM requests and wall time of each. Twice: with an
instant server (the first run is as short as it gets, so the rerun's fixed cost weighs most) and
with the latency of benchmark 2 (L = 2 s, C = 16), closer to a real provider.

    uv run python bench/rerun.py [--latency 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import REPO, machine
from llm_runs import daydream_run, start_server


def twice(latency: float, concurrency: int) -> tuple[dict, dict]:
    server = start_server(latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            shutil.copytree(REPO / "data" / "1_raw", tmp / "data" / "1_raw")
            first = daydream_run(tmp, tmp / "data", server, concurrency, pool_limit=concurrency)
            second = daydream_run(tmp, tmp / "data", server, concurrency, pool_limit=concurrency)
    finally:
        server.stop()
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for latency in (0.0, args.latency):
        first, second = twice(latency, args.concurrency)
        print(f"\nserver latency {latency:g} s, concurrency {args.concurrency}")
        print(f"  first run : {first['requests']} LLM requests, {first['wall']:.1f} s wall")
        print(f"  second run: {second['requests']} LLM requests, {second['wall']:.1f} s wall "
              f"({100 * second['wall'] / first['wall']:.1f}% of the first)")


if __name__ == "__main__":
    main()
