"""Benchmark (batch mode): the sample experiment (data/1_raw) through the batch protocol of the local
OpenAI-protocol test server, next to the same experiment asked live.

Prints, for `daydream run --batch --wait` and for `daydream run`: requests answered (through
batches and live), files uploaded, batches created, polls made, wall time, and the cost in
llm_usage (tokens at the llm_models.csv prices; batched calls at batch_discount, default 0.5).

    uv run python bench/batch.py [--delay 2] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, fresh_home, machine
from llm_runs import start_server


def run(tmp: Path, server, extra: list[str], poll_s: float) -> dict:
    data = tmp / "data"
    shutil.copytree(REPO / "data" / "1_raw", data / "1_raw")
    home = fresh_home(tmp / "home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "OPENROUTER_API_KEY": "bench-key",
           "OPENROUTER_BASE_URL": server.base_url, "DAYDREAM_BATCH_POLL_S": str(poll_s)}
    live0, batch0 = len(server.requests), server.batches.requests_answered
    files0, polls0, created0 = server.batches.files_uploaded, server.batches.polls, server.batches.created
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--data-root", str(data), *extra],
                         env=env, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-3000:])
    with (data / "5_results" / "llm_usage.csv").open() as f:
        usage = list(csv.DictReader(f))
    return {
        "live requests": len(server.requests) - live0,
        "batch requests": server.batches.requests_answered - batch0,
        "files uploaded": server.batches.files_uploaded - files0,
        "batches created": server.batches.created - created0,
        "polls": server.batches.polls - polls0,
        "wall s": round(wall, 1),
        "cost USD": round(sum(float(r["cost_usd"]) for r in usage), 4),
        "calls": sum(int(r["calls"]) for r in usage),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=2.0, help="seconds until a batch completes")
    parser.add_argument("--poll", type=float, default=0.5, help="DAYDREAM_BATCH_POLL_S")
    args = parser.parse_args()
    print(f"machine: {machine()}; load: {os.getloadavg()[0]:.2f}")
    server = start_server(0.0)
    server.batches.delay_s = args.delay
    results = {}
    try:
        for name, extra in (("batch", ["--batch", "--wait"]), ("live", [])):
            with tempfile.TemporaryDirectory() as tmp:
                results[name] = run(Path(tmp), server, extra, args.poll)
    finally:
        server.stop()
    print(f"\n{'':16s} {'batch --wait':>14s} {'live':>10s}")
    for key in results["batch"]:
        print(f"{key:16s} {results['batch'][key]!s:>14s} {results['live'][key]!s:>10s}")
    ratio = results["batch"]["cost USD"] / results["live"]["cost USD"] if results["live"]["cost USD"] else float("nan")
    print(f"\nbatch cost / live cost: {ratio:.3f} (batch delay {args.delay:g} s, polls every {args.poll:g} s)")


if __name__ == "__main__":
    main()
