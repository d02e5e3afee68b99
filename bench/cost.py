"""Benchmark 5 (cost): how the estimate of `daydream plan` compares with what the run then pays,
and what the spending cap costs in time, on the sample experiment (84 generations, 336 pairs)
against the local OpenAI-protocol server (it counts words as tokens and reports each call's cost
at the prices in data/1_raw/llm_models.csv, as OpenRouter reports usage.cost).

Prints, per stage and model: calls planned and made, and input tokens, output tokens and cost as
"expected (low-high)" next to the actual figure, for the first plan (nothing stored: default
characters per token, answers bounded by max_tokens) and for the plan of the whole experiment
made after the run (calibrated from the stored answers). Then the wall time of `daydream plan`,
of a run with and without `--max-cost`, and the sentence a tight cap stops with. Last, what the
cap's check costs on large output roots (synthetic sidecars).

    uv run python bench/cost.py [--latency 0] [--ledger-only]
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
from collections import defaultdict
from pathlib import Path

from common import REPO, fresh_home, machine
from llm_runs import daydream_run, start_server

sys.path.insert(0, str(REPO))
from daydreaming_dagster.analysis.estimate import span, tokens, usd  # noqa: E402


def prices(data: Path) -> dict[str, tuple[float, float]]:
    with (data / "1_raw" / "llm_models.csv").open() as f:
        return {r["model"]: (float(r["input_usd_per_mtok"]), float(r["output_usd_per_mtok"])) for r in csv.DictReader(f)}


def paid(server, since: int = 0) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for body in server.responses[since:]:
        row = out[body["model"]]
        row["calls"] += 1
        row["input_tokens"] += body["usage"]["prompt_tokens"]
        row["output_tokens"] += body["usage"]["completion_tokens"]
        row["cost_usd"] += body["usage"]["cost"]
    return out


def plan_table(home: Path, data: Path, include_all: bool):
    """The plan's estimate table, computed in a fresh process as `daydream plan` computes it."""
    code = (
        "import sys; from daydreaming_dagster.runner.plan import make_plan;"
        "from daydreaming_dagster.resources.config import ExperimentConfig; import dagster as dg;"
        f"p = make_plan(ExperimentConfig.for_experiment({str(data)!r}, {str(data)!r}), dg.DagsterInstance.get(), {include_all});"
        "p.table.to_csv(sys.stdout, index=False)"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=home.parent).stdout
    return list(csv.DictReader(out.splitlines()))


def compare(title: str, table: list[dict], made: dict[str, dict], model_names: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"  {'stage':10s} {'model':16s} {'calls':>9s}  {'input tokens':>34s}  {'output tokens':>32s}  {'cost USD':>40s}")
    totals = defaultdict(float)
    for row in table:
        m = made.get(model_names[row["model_id"]], {})
        cells = []
        for what, fmt in (("input_tokens", tokens), ("output_tokens", tokens), ("cost_usd", usd)):
            low, exp, high = (float(row[f"{what}_{b}"]) for b in ("low", "expected", "high"))
            actual = m.get(what, 0.0)
            totals[f"{what}_low"] += low
            totals[f"{what}_high"] += high
            totals[what] += actual
            inside = "" if low <= actual <= high else " OUTSIDE"
            cells.append(f"{span(low, exp, high, fmt)} | {fmt(actual)}{inside}")
        print(f"  {row['stage']:10s} {row['model_id']:16s} {row['calls']:>4s}/{int(m.get('calls', 0)):<4d}  "
              f"{cells[0]:>34s}  {cells[1]:>32s}  {cells[2]:>40s}")
    for what, fmt in (("input_tokens", tokens), ("output_tokens", tokens), ("cost_usd", usd)):
        low, high, actual = totals[f"{what}_low"], totals[f"{what}_high"], totals[what]
        print(f"  total {what}: {fmt(low)}-{fmt(high)} | actual {fmt(actual)} ({'inside' if low <= actual <= high else 'OUTSIDE'})")


def timed_plan(home: Path, data: Path, server) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(home), "OPENROUTER_API_KEY": "bench-key", "OPENROUTER_BASE_URL": server.base_url}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "daydreaming_dagster.runner.cli", "plan", "--data-root", str(data)], env=env,
                   check=True, capture_output=True, cwd=home.parent)
    return time.perf_counter() - started


def fresh(tmp: Path, name: str) -> Path:
    data = tmp / name / "data"
    shutil.copytree(REPO / "data" / "1_raw", data / "1_raw")
    return data


def ledger_at_scale(generations: int, methods: int) -> None:
    """What the cap's check costs on a large output root: the first read of every paid sidecar (once
    per process), a check when nothing changed, and one admission (lock, reservations, check, reserve)."""
    import json

    from daydreaming_dagster.calls.guard import SpendingGuard
    from daydreaming_dagster.llm.requests import LLMRequest
    from daydreaming_dagster.store.layout import sidecar_path, text_path
    from daydreaming_dagster.store.spend import PaidLedger

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        record = {"backend": "openai", "model_id": "judge", "prompt_tokens": 900, "completion_tokens": 300,
                  "provider_cost_usd": 0.001, "prompt_chars": 3600}
        for g in range(generations):
            paths = [text_path(root, "generation_response", f"g{g}")]
            paths += [text_path(root, "evaluation_response", {"generation_tasks": f"g{g}", "evaluation_tasks": f"m{m}"})
                      for m in range(methods)]
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                sidecar_path(path).write_text(json.dumps(record))
        time.sleep(2.5)  # past the ledger's settle time: folders count as unchanged
        ledger = PaidLedger(root)
        started = time.perf_counter()
        ledger.tallies()
        cold = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(20):
            ledger.tallies()
        warm = (time.perf_counter() - started) / 20
        guard = SpendingGuard(1e9, root, {"judge": (1.0, 2.0)})
        request = LLMRequest("judge", "x/judge", "p" * 3600, 0.0, 800)
        guard.admit("warm-up", request)
        started = time.perf_counter()
        for i in range(20):
            guard.admit(str(i), request)
        admit = (time.perf_counter() - started) / 20
        guard.settle_all()
    n = generations * (methods + 1)
    print(f"\nspend ledger, {n:,} paid sidecars in {generations:,} folders: first read {cold:.2f} s, "
          f"check with nothing changed {warm * 1000:.1f} ms, one admission under the cap {admit * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ledger-only", action="store_true", help="only the spend ledger at scale")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.ledger_only:
        ledger_at_scale(2_016, 6)
        ledger_at_scale(10_011, 10)
        return
    server = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = fresh(tmp, "plain")
            price = prices(data)
            server.cost_for = lambda body, usage: (
                usage["prompt_tokens"] * price[body["model"]][0] + usage["completion_tokens"] * price[body["model"]][1]
            ) / 1e6
            with (data / "1_raw" / "llm_models.csv").open() as f:
                names = {r["id"]: r["model"] for r in csv.DictReader(f)}
            home = fresh_home(tmp / "plain" / "home")  # as daydream_run makes it (pool limit: the default 8)
            plan_s = timed_plan(home, data, server)
            before = plan_table(home, data, include_all=False)
            run = daydream_run(tmp / "plain", data, server, args.concurrency, args.concurrency)
            made = paid(server)
            compare("First plan (nothing stored yet) | what the run paid:", before, made, names)
            after = plan_table(home, data, include_all=True)
            compare("`daydream plan --all` after the run (calibrated) | what the run paid:", after, made, names)
            rerun_plan_s = timed_plan(home, data, server)

            capped_data = fresh(tmp, "capped")
            start = len(server.responses)
            capped = daydream_run(tmp / "capped", capped_data, server, args.concurrency, args.concurrency, ["--max-cost", "1000"])
            assert len(server.responses) - start == run["requests"]
            print(f"\n`daydream plan`: {plan_s:.1f} s before any run, {rerun_plan_s:.1f} s after it (whole process)")
            print(f"`daydream run`: {run['wall']:.1f} s without a cap, {capped['wall']:.1f} s with --max-cost 1000 "
                  f"({run['requests']} calls each); stages without/with: "
                  + ", ".join(f"{k} {run['stages'][k]['seconds']:.1f}/{capped['stages'][k]['seconds']:.1f} s" for k in ("generation", "evaluation")))

            tight = fresh(tmp, "tight")
            env = {**os.environ, "DAGSTER_HOME": str(tmp / "tight" / "home"), "OPENROUTER_API_KEY": "bench-key",
                   "OPENROUTER_BASE_URL": server.base_url}
            start = len(server.responses)
            out = subprocess.run(
                [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--data-root", str(tight), "--max-cost", "0.05",
                 "--concurrency", str(args.concurrency)],
                env=env, capture_output=True, text=True, cwd=tmp / "tight",
            )
            spent = sum(b["usage"]["cost"] for b in server.responses[start:])
            print(f"\n--max-cost 0.05: exit {out.returncode}, {len(server.responses) - start} calls paid, "
                  f"{usd(spent)} as the provider reported; it said:\n  {out.stderr.strip().splitlines()[-1]}")
    finally:
        server.stop()
    ledger_at_scale(2_016, 6)
    ledger_at_scale(10_011, 10)


if __name__ == "__main__":
    main()
