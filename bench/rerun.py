"""Benchmark 4 (rerun): a finished experiment run again makes no LLM call, and costs little time.

`daydream run` twice against a local OpenAI-compatible server (zero latency) on the sample
experiment's size (84 generation tasks, 336 evaluation pairs): LLM requests and wall time of each.

    uv run python bench/rerun.py [--concurrency 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import REPO, machine
from llm_runs import daydream_run, start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    server = start_server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            shutil.copytree(REPO / "data" / "1_raw", tmp / "data" / "1_raw")
            first = daydream_run(tmp, tmp / "data", server, args.concurrency, pool_limit=8)
            second = daydream_run(tmp, tmp / "data", server, args.concurrency, pool_limit=8)
    finally:
        server.stop()
    print(f"first run : {first['requests']} LLM requests, {first['wall']:.1f} s wall")
    print(f"second run: {second['requests']} LLM requests, {second['wall']:.1f} s wall "
          f"({100 * second['wall'] / first['wall']:.1f}% of the first)")


if __name__ == "__main__":
    main()
