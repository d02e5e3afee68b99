"""Overlapping runs: two `daydream run`s started together on one instance and one data folder,
against a local OpenAI-protocol server that answers after L seconds.

Reports the requests the server received next to the partitions there are (exactly once each is
the goal), how many times each partition was materialized, and what each runner left to the other.

    uv run python bench/overlap.py [--latency 1] [--concurrency 8] [--runners 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, fresh_home, machine, write_synthetic_experiment
from llm_runs import start_server

EXPERIMENT = (5, 2, 1, 2, 1, 2)  # C(5,2)=10 x 1 template x 2 generators = 20; x 1 template x 2 judges = 40 pairs


def materializations(home: Path, asset: str) -> collections.Counter:
    code = (
        "import collections, dagster as dg, json\n"
        "i = dg.DagsterInstance.get()\n"
        f"records = i.fetch_materializations(dg.AssetKey('{asset}'), limit=10000).records\n"
        "print(json.dumps(collections.Counter(r.partition_key for r in records)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True
    )
    import json

    return collections.Counter(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument(
        "--fresh", action="store_true", help="start the runners on a fresh DAGSTER_HOME (default: create the instance first)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    server = start_server(args.latency)
    # Every answer names its model, so no two partitions ever send the same request.
    server.default_answer = lambda body, answer=server.default_answer: f"{answer(body)} ({body['model']})"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(args.keep or tmp)
            root = write_synthetic_experiment(tmp / "data", *EXPERIMENT)
            home = fresh_home(tmp / "home")
            env = {
                **os.environ,
                "DAGSTER_HOME": str(home),
                "OPENROUTER_API_KEY": "bench-key",
                "OPENROUTER_BASE_URL": server.base_url,
            }
            if not args.fresh:  # measure the overlap of the runs, not the creation of the instance
                subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"], env=env, check=True)
            command = [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--data-root", str(root)]
            command += ["--concurrency", str(args.concurrency)]
            started = time.perf_counter()
            runners = [
                subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(args.runners)
            ]
            outputs = [r.communicate() for r in runners]
            wall = time.perf_counter() - started
            for i, (runner, (out, err)) in enumerate(zip(runners, outputs)):
                print(f"runner {i}: exit {runner.returncode}; {out.strip().splitlines()[0] if out.strip() else err[-2000:]}")
                for line in err.splitlines():
                    if "left to" in line or "waiting for" in line or "FAILED" in line:
                        print(f"  {line}")
            keys = subprocess.run(
                [sys.executable, "-c", "import dagster as dg; i = dg.DagsterInstance.get(); "
                 "print([len(i.get_dynamic_partitions(n)) for n in ('generation_tasks', 'evaluation_tasks')])"],
                env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True,
            ).stdout.strip()
            print(f"registered keys (generation, evaluation methods): {keys}")
            generations = materializations(home, "generation_response")
            pairs = materializations(home, "evaluation_response")
    finally:
        server.stop()
    partitions = len(generations) + len(pairs)
    asked = collections.Counter(
        (r.body["model"], r.body["messages"][-1]["content"]) for r in server.requests if isinstance(r.body, dict)
    )
    print(f"partitions: {len(generations)} generations + {len(pairs)} pairs = {partitions}")
    print(f"requests received: {len(server.requests)} ({sum(n > 1 for n in asked.values())} prompts asked more than once)")
    for name, counts in (("generation_response", generations), ("evaluation_response", pairs)):
        twice = sum(n > 1 for n in counts.values())
        print(f"{name}: {sum(counts.values())} materializations of {len(counts)} partitions ({twice} more than once)")
    print(f"wall: {wall:.1f} s for {args.runners} runners started together (latency {args.latency:g} s)")
    if re.search("Traceback", "".join(e for _, e in outputs)):
        print("a runner printed a traceback")


if __name__ == "__main__":
    main()
