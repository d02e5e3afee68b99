"""Benchmark 2 (throughput): evaluation pairs per second against a server that answers after L seconds.

A local OpenAI-compatible server (the test suite's) with a fixed latency L = 2 s; an experiment of
50 generation tasks x 4 methods = 200 evaluation pairs; `daydream run --concurrency C` with C = 16
(and the instance's llm_api pool limit raised to C). Reports achieved pairs/s for the evaluation
stage and its ratio to the ideal C / L, and where the stage's time went.

    uv run python bench/throughput.py [--latency 2] [--concurrency 16] [--workers N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, write_synthetic_experiment
from llm_runs import daydream_run, start_server

EXPERIMENT = (5, 2, 1, 5, 2, 2)  # C(5,2)=10 x 1 template x 5 generators = 50; x 2 templates x 2 judges = 200 pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="daydream run --workers (default: its own)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    server = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            root = write_synthetic_experiment(tmp / "data", *EXPERIMENT)
            extra = ["--workers", str(args.workers)] if args.workers else []
            r = daydream_run(tmp, root, server, args.concurrency, pool_limit=args.concurrency, extra=extra)
    finally:
        server.stop()
    ideal = args.concurrency / args.latency
    for stage in ("generation", "evaluation"):
        s = r["stages"][stage]
        rate = s["ran"] / s["seconds"]
        print(f"{stage:10s}: {s['ran']} partitions in {s['seconds']:.1f} s = {rate:.2f}/s; "
              f"ideal C/L = {ideal:.2f}/s; ratio {rate / ideal:.2f}")
    print(f"whole run: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, {r['requests']} requests")
    # Where the stage's time goes: before its first call, while calls are made, after the last answer.
    judged = sorted(q.received_at for q in server.requests if "SCORE" in q.body["messages"][-1]["content"])
    window = judged[-1] + args.latency - judged[0]
    print(f"evaluation calls: first to last answer {window:.1f} s (ideal {len(judged) * args.latency / args.concurrency:.1f} s), "
          f"so {s['seconds'] - window:.1f} s of the stage is before the first call or after the last answer")


if __name__ == "__main__":
    main()
