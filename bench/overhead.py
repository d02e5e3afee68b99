"""Benchmark 1 (overhead): what Dagster adds per partition when the LLM costs nothing.

The offline backend (zero latency) on a synthetic experiment of 60 generation tasks x 6 methods =
360 evaluation pairs. Reports, per generation partition and per evaluation pair:
  - `daydream run --offline` (batches of up to 32 partitions per run on a pool of workers);
  - the plain approach as the baseline: one `dagster.materialize` call per partition, on the same
    instance type (the project's dagster.yaml), and on Dagster's stock SQLite storage;
  - the daemon path: a backfill of pairs executed by `dagster-daemon` (what `dagster dev` runs),
    which batches by the assets' BackfillPolicy and starts a process per run.

    uv run python bench/overhead.py [--workers N] [--baseline-partitions 30] [--daemon-pairs 96]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, busy_cpu_seconds, fresh_home, machine, run_measured, write_synthetic_experiment

EXPERIMENT = (6, 2, 2, 2, 2, 3)  # C(6,2)=15 x 2 templates x 2 generators = 60; x 2 x 3 = 6 methods


def daydream_run(env: dict, workers: int | None) -> dict:
    cpu0, t0 = busy_cpu_seconds(), time.perf_counter()
    extra = ["--workers", str(workers)] if workers else []
    out = subprocess.run(
        [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--offline", *extra],
        env={**os.environ, **env}, capture_output=True, text=True, cwd=env["BENCH_CWD"],
    )
    wall, cpu = time.perf_counter() - t0, busy_cpu_seconds() - cpu0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    stages = {
        m.group(1): (int(m.group(2)), float(m.group(3)))
        for m in re.finditer(r"(\w+): (\d+) ran, \d+ skipped, \d+ failed in ([\d.]+) s", out.stdout)
    }
    return {"wall": wall, "cpu": cpu, "stages": stages}


BASELINE = """
import os, time, resource
import dagster as dg
from daydreaming_dagster.definitions import build_definitions, ALL_ASSETS
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import table_path
settings = Settings.from_env()
defs = build_definitions(settings)
instance = dg.DagsterInstance.get()
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
assert defs.resolve_job_def("task_tables").execute_in_process(instance=instance, run_config=quiet).success
n = int(os.environ["BENCH_N"])
gens = read_table(table_path(settings.output_root, "generation_tasks"))["generation_task_id"].tolist()[:n]
pairs = read_table(table_path(settings.output_root, "evaluation_tasks"))
pairs = pairs[pairs.generation_task_id.isin(gens)]
pair_keys = (pairs.evaluation_task_id + "|" + pairs.generation_task_id).tolist()[:n]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
def timed(selection, keys):
    c, t = cpu(), time.perf_counter()
    for k in keys:
        assert dg.materialize(ALL_ASSETS, selection=selection, partition_key=k, instance=instance,
                              resources=defs.resources, run_config=quiet).success
    return (time.perf_counter() - t) / len(keys), (cpu() - c) / len(keys)
g_wall, g_cpu = timed(["generation_prompt", "generation_response"], gens)
e_wall, e_cpu = timed(["evaluation_prompt", "evaluation_response"], pair_keys)
RESULT = {"gen_wall": g_wall, "gen_cpu": g_cpu, "eval_wall": e_wall, "eval_cpu": e_cpu, "n": n}
"""

SUBMIT = """
import dagster as dg
from daydreaming_dagster.definitions import defs as load_defs
defs = load_defs()
from daydreaming_dagster.runner.backfills import submit_pair_backfill
from daydreaming_dagster.experiment.stages import EVALUATION
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.layout import table_path
import os
instance = dg.DagsterInstance.get()
done = instance.get_materialized_partitions(dg.AssetKey("generation_response"))
table = read_table(table_path(Settings.from_env().output_root, "evaluation_tasks"))
keys = EVALUATION.select(table, parents=sorted(done),
                       exclude=instance.get_materialized_partitions(dg.AssetKey("evaluation_response")))
keys = keys[: int(os.environ["BENCH_PAIRS"])]
RESULT = {"backfill_id": submit_pair_backfill(instance, defs, keys), "pairs": len(keys)}
"""

STATUS = """
import dagster as dg, os
instance = dg.DagsterInstance.get()
b = instance.get_backfill(os.environ["BENCH_BACKFILL"])
RESULT = {"status": str(b.status)}
"""


def daemon_path(env: dict, pairs: int) -> dict:
    submitted = run_measured(SUBMIT, {**env, "BENCH_PAIRS": str(pairs)})
    backfill_env = {**env, "BENCH_BACKFILL": submitted["backfill_id"]}
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "daydreaming_dagster.definitions"],
        env={**os.environ, **env}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < 1200:
            time.sleep(2)
            status = run_measured(STATUS, backfill_env)["status"]
            if not status.endswith(("REQUESTED", "CANCELING")):
                break
    finally:
        daemon.terminate()
        daemon.wait(30)
    return {"pairs": submitted["pairs"], "wall": time.perf_counter() - t0, "status": status}


def stock_storage_home(path: Path) -> Path:
    """A DAGSTER_HOME with Dagster's own SQLite storages (a new connection per statement)."""
    home = fresh_home(path)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def baseline(home: Path, root: Path, out: Path, n: int) -> dict:
    return run_measured(BASELINE, {"DAGSTER_HOME": str(home), "DAYDREAM_DATA_ROOT": str(root),
                                   "DAYDREAM_BACKEND": "offline", "DAYDREAM_OUTPUT_ROOT": str(out), "BENCH_N": str(n)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=None, help="daydream run --workers (default: its own)")
    parser.add_argument("--baseline-partitions", type=int, default=30)
    parser.add_argument("--daemon-pairs", type=int, default=96)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_synthetic_experiment(tmp / "data", *EXPERIMENT)
        home = fresh_home(tmp / "home")
        env = {"DAGSTER_HOME": str(home / "offline"), "DAYDREAM_DATA_ROOT": str(root), "BENCH_CWD": str(tmp)}
        fresh_home(home / "offline")
        r = daydream_run(env, args.workers)
        (g, g_s), (e, e_s) = r["stages"]["generation"], r["stages"]["evaluation"]
        total = sum(n for n, _ in r["stages"].values())
        print(f"\ndaydream run --offline: {g} generation partitions, {e} evaluation pairs")
        print(f"  total {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU (machine-wide busy time)")
        print(f"  per generation partition  {g_s / g:.3f} s wall (the stage includes starting the workers)")
        print(f"  per evaluation pair       {e_s / e:.3f} s wall")
        print(f"  CPU per partition         {r['cpu'] / total:.3f} s (whole command, all stages)")

        for label, base_home in (
            ("project instance (pooled SQLite)", fresh_home(tmp / "base_home")),
            ("Dagster's stock SQLite storage", stock_storage_home(tmp / "stock_home")),
        ):
            b = baseline(base_home, root, tmp / f"out_{base_home.name}", args.baseline_partitions)
            print(f"\nbaseline: one dagster.materialize per partition, sequential ({b['n']} of each), {label}")
            print(f"  per generation partition  {b['gen_wall']:.3f} s wall, {b['gen_cpu']:.3f} s CPU")
            print(f"  per evaluation pair       {b['eval_wall']:.3f} s wall, {b['eval_cpu']:.3f} s CPU")

        if args.daemon_pairs:
            base_home = tmp / "base_home"
            daemon_env = {"DAGSTER_HOME": str(base_home), "DAYDREAM_DATA_ROOT": str(root),
                          "DAYDREAM_BACKEND": "offline", "DAYDREAM_OUTPUT_ROOT": str(tmp / "out_base_home")}
            d = daemon_path(daemon_env, args.daemon_pairs)
            print(f"\ndaemon path: backfill of {d['pairs']} pairs run by dagster-daemon ({d['status']})")
            print(f"  {d['wall']:.1f} s wall from daemon start, {d['wall'] / d['pairs']:.2f} s per pair (2 s polling)")


if __name__ == "__main__":
    main()
