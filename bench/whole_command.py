"""Benchmark 5 (whole command): `daydream run`, from Enter to results, next to the asyncio floor.

Against the test suite's OpenAI-protocol server, with C calls in flight: bench/floor.py (a plain
asyncio script making the same calls, judges streamed behind generations) and `daydream run` (fresh
instance and outputs each time), back to back, `--repeat` times. Both walls are measured from
starting the process to its exit. Latency is fixed (`--latency fixed`, L = `--seconds`) or
heavy-tailed (`--latency heavy`: log-normal, median 4 s, p95 20 s, at most 60 s, seeded, so both
commands wait the same time for the same call). Checks that both sent the same requests.

`--max-cost USD` gives every model a price ($1 in, $2 out per million tokens) and runs `daydream
run --max-cost USD` (a cap that does not bind measures what the spending guard costs); `--no-head-start`
runs it with DAYDREAM_HEAD_START=off.

    uv run python bench/whole_command.py [--latency fixed|heavy] [--pairs 200|2000] [--concurrency 16]
                                         [--repeat 3] [--seed 1] [--seconds 2] [--compare-with DIR]
                                         [--max-cost USD] [--no-head-start]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import REPO, busy_cpu_seconds, fresh_home, machine, tree_pss_mb, write_synthetic_experiment
from llm_runs import judge_or_generation_answer

sys.path.insert(0, str(REPO))
from tests.latency_models import HeavyTailedLatency  # noqa: E402
from tests.openai_server import FakeOpenAIServer  # noqa: E402

# (concepts, k, generation templates, generators, evaluation templates, judges)
EXPERIMENTS = {
    200: (5, 2, 1, 5, 2, 2),  # 10 combos x 5 generators = 50 generations; x 4 methods = 200 pairs
    2000: (23, 2, 1, 2, 2, 2),  # 253 combos x 2 generators = 506 generations; x 4 methods = 2,024 pairs
}


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def identity(body: dict) -> str:
    """What makes two requests the same call."""
    text = json.dumps([body.get("model"), body.get("messages"), body.get("temperature"), body.get("max_tokens")])
    return hashlib.sha256(text.encode()).hexdigest()


def timed(server: FakeOpenAIServer, argv: list[str], env: dict, cwd: Path) -> dict:
    """Run a command; its wall, the machine's busy CPU meanwhile, and when its calls came."""
    before = len(server.requests)
    # Output to files, not pipes: the wall ends when the command's own process exits (when the
    # prompt comes back), not when helper processes that inherited its pipes (a forkserver) are gone.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        cpu0, started = busy_cpu_seconds(), time.time()
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=err, cwd=cwd)
        peak_mb = 0.0
        while True:
            peak_mb = max(peak_mb, tree_pss_mb(process.pid))
            # Memory once a second (reading every process's smaps costs ~45 ms of CPU: at 4 Hz it
            # took a tenth of a core from the command measured); the exit is seen at once.
            try:
                returncode = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
        wall, cpu = time.time() - started, busy_cpu_seconds() - cpu0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    requests = server.requests[before:]
    answered = [r.received_at + (server.latency_for(r.body) if server.latency_for else server.latency_s) for r in requests]
    return {
        "wall": wall, "cpu": cpu, "peak_mb": peak_mb, "stdout": stdout, "calls": Counter(identity(r.body) for r in requests),
        "first_call": min(r.received_at for r in requests) - started, "tail": started + wall - max(answered),
    }


def daydream(server: FakeOpenAIServer, tmp: Path, experiment: Path, concurrency: int, code: Path | None = None,
             max_cost: float | None = None, head_start: bool = True) -> dict:
    data = tmp / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(experiment / "1_raw", data / "1_raw")
    if max_cost is not None:  # a cap needs a price for every model it calls
        models = data / "1_raw" / "llm_models.csv"
        lines = models.read_text().splitlines()
        models.write_text("\n".join([lines[0] + ",input_usd_per_mtok,output_usd_per_mtok"] + [f"{line},1,2" for line in lines[1:]]) + "\n")
    home = fresh_home(tmp / "home")
    config = (home / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(config.replace("default_limit: 8", f"default_limit: {concurrency}"))
    env = {"DAGSTER_HOME": str(home), "OPENROUTER_API_KEY": "bench-key", "OPENROUTER_BASE_URL": server.base_url}
    if code is not None:  # another checkout of the project (e.g. `git archive main | tar -x -C DIR`)
        env["PYTHONPATH"] = str(code)
    if not head_start:
        env["DAYDREAM_HEAD_START"] = "off"
    argv = [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--data-root", str(data), "--concurrency", str(concurrency)]
    argv += ["--max-cost", str(max_cost)] if max_cost is not None else []
    r = timed(server, argv, env, tmp)
    r["stages"] = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+): \d+ ran, \d+ skipped, \d+ failed in ([\d.]+) s", r["stdout"])}
    return r


def floor(server: FakeOpenAIServer, tmp: Path, experiment: Path, concurrency: int) -> dict:
    argv = [sys.executable, str(REPO / "bench" / "floor.py"), "--base-url", server.base_url,
            "--data-root", str(experiment), "--concurrency", str(concurrency)]
    return timed(server, argv, {}, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", choices=("fixed", "heavy"), default="fixed")
    parser.add_argument("--seconds", type=float, default=2.0, help="the fixed latency L")
    parser.add_argument("--seed", type=int, default=1, help="the heavy-tailed latencies' seed")
    parser.add_argument("--pairs", type=int, choices=sorted(EXPERIMENTS), default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-with", type=Path, help="also time `daydream run` from this checkout of the project")
    parser.add_argument("--max-cost", type=float, help="run `daydream run` under this spending cap (USD), every model priced")
    parser.add_argument("--no-head-start", action="store_true", help="run `daydream run` with DAYDREAM_HEAD_START=off")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {load()} at start")
    server = FakeOpenAIServer().start()
    server.default_answer = judge_or_generation_answer
    if args.latency == "heavy":
        server.latency_for = HeavyTailedLatency(seed=args.seed)
        print(f"latency: {server.latency_for.describe()}")
    else:
        server.latency_s = args.seconds
        print(f"latency: fixed {args.seconds:g} s")
    if args.max_cost is not None or args.no_head_start:
        print(f"daydream run: {f'--max-cost {args.max_cost:g}' if args.max_cost is not None else 'no cap'}, "
              f"head start {'off' if args.no_head_start else 'on'}")
    ratios = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            experiment = write_synthetic_experiment(tmp / "experiment", *EXPERIMENTS[args.pairs])
            for rep in range(1, args.repeat + 1):
                runs = {"floor": floor(server, tmp, experiment, args.concurrency),
                        "daydream run": daydream(server, tmp, experiment, args.concurrency, None, args.max_cost, not args.no_head_start)}
                if args.compare_with:
                    runs["compared"] = daydream(server, tmp, experiment, args.concurrency, args.compare_with, args.max_cost,
                                                not args.no_head_start)
                f, d = runs["floor"], runs["daydream run"]
                same = "same calls" if all(r["calls"] == f["calls"] for r in runs.values()) else "DIFFERENT CALLS"
                ratios.append(d["wall"] / f["wall"])
                print(f"\nrun {rep} (load average {load()}): {sum(d['calls'].values())} calls, {same}")
                for name, r in runs.items():
                    print(f"  {name:12s} {r['wall']:6.1f} s wall (ratio {r['wall'] / f['wall']:.3f}): first call at "
                          f"{r['first_call']:.1f} s, exit {r['tail']:.1f} s after the last answer; {r['cpu']:.1f} s machine "
                          f"CPU; peak memory {r['peak_mb']:.0f} MB (PSS)")
                    if "stages" in r:
                        print(f"  {'':12s} stages: {', '.join(f'{k} {v:.1f} s' for k, v in r['stages'].items())}")
    finally:
        server.stop()
    print(f"\nratio daydream run / floor over {len(ratios)} run(s): {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"load average {load()} at the end")


if __name__ == "__main__":
    main()
