"""Benchmark (daemon path): an evaluation backfill run by `dagster-daemon`, as from the UI.

Against the test suite's OpenAI-protocol server with a fixed latency L, an experiment of ~2,000
evaluation pairs whose generations are already materialized; one backfill of every valid pair
(what `daydream backfill` and the UI's "Materialize all" submit) is run by `dagster-daemon`, which
launches each run of up to 32 pairs as a new process. Calls in flight are bounded by the machine's
call slots (DAYDREAM_MAX_CALLS_IN_FLIGHT = C, shared by every run); each response step may start
`parallel_calls` of them, and the `llm_api` pool and the run queue bound steps and runs.

Prints, from submission to the last materialization: pairs/s and the ratio to the ideal C / L;
runs, and runs failed; and per run the seconds from its creation to the start of its
evaluation_response step (what a run spends before its first call).

    uv run python bench/daemon.py [--pairs 2000] [--latency 2] [--calls 16] [--parallel-calls 16]
                                  [--pool 8] [--max-runs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from math import comb
from pathlib import Path

from common import REPO, busy_cpu_seconds, fresh_home, machine, run_measured, write_synthetic_experiment
from llm_runs import start_server

SETUP = """
import os
import dagster as dg
from daydreaming_dagster.orchestration.batches import Batch, key_batches
from daydreaming_dagster.orchestration.worker import QUIET, execute
from daydreaming_dagster.experiment.pairs import valid_pair_keys
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.layout import table_path
from daydreaming_dagster.store.tables import read_table

assert execute("task_tables", None, QUIET).success
instance = dg.DagsterInstance.get()
order = instance.get_dynamic_partitions("generation_tasks")
for batch in key_batches(order, order, 32):
    assert execute("generation", batch, QUIET).success, batch
out = Settings.from_env().output_root
RESULT = {"pairs": len(valid_pair_keys(read_table(table_path(out, "evaluation_tasks"))))}
"""


def experiment_for(pairs: int) -> tuple[int, ...]:
    """Concepts for ~pairs / 4 generations (k = 2, one template, one generator), x 2 templates x 2 judges."""
    n = 2
    while comb(n + 1, 2) * 4 <= pairs:
        n += 1
    return (n, 2, 1, 1, 2, 2)


def configure(home: Path, pool: int, max_runs: int) -> None:
    config = (home / "dagster.yaml").read_text()
    config = config.replace("default_limit: 8", f"default_limit: {pool}").replace(
        "max_concurrent_runs: 8", f"max_concurrent_runs: {max_runs}"
    )
    (home / "dagster.yaml").write_text(config)


def wait_for_backfill(instance, backfill_id: str, timeout_s: float) -> str:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        status = str(instance.get_backfill(backfill_id).status)
        if not status.endswith(("REQUESTED", "CANCELING")):
            return status
        time.sleep(1.0)
    return "TIMED OUT"


def run_figures(instance, backfill_id: str) -> tuple[list, list[float], list[float]]:
    """The backfill's runs; per run, seconds queued (created to started) and seconds from its start
    to its evaluation_response step (the process start, loading the code location, the prompts)."""
    import dagster as dg

    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    queued, before_call = [], []
    for run in runs:
        record = instance.get_run_record_by_id(run.run_id)
        starts = [
            e.timestamp
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
            if e.step_key == "evaluation_response"
        ]
        if starts and record.start_time:
            queued.append(record.start_time - record.create_timestamp.timestamp())
            before_call.append(starts[0] - record.start_time)
    return runs, queued, before_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--calls", type=int, default=16, help="C: machine-wide LLM calls in flight")
    parser.add_argument("--pool", type=int, default=8, help="llm_api pool limit: response steps in flight")
    parser.add_argument("--parallel-calls", type=int, default=16, help="calls in flight per response step, at most")
    parser.add_argument("--max-runs", type=int, default=4, help="max_concurrent_runs of the run queue")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    concurrency = args.calls
    print(f"machine: {machine()}")
    server = start_server(0.0)
    daemon = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            root = write_synthetic_experiment(tmp / "data", *experiment_for(args.pairs))
            home = fresh_home(tmp / "home")
            configure(home, args.pool, args.max_runs)
            env = {
                "DAGSTER_HOME": str(home),
                "DAYDREAM_DATA_ROOT": str(root),
                "OPENROUTER_API_KEY": "bench-key",
                "OPENROUTER_BASE_URL": server.base_url,
                "DAYDREAM_MAX_CALLS_IN_FLIGHT": str(args.calls),
            }
            setup = run_measured(SETUP, env)
            os.environ.update(env)
            import dagster as dg

            from daydreaming_dagster.definitions import defs
            from daydreaming_dagster.experiment.pairs import valid_pair_keys
            from daydreaming_dagster.orchestration.backfills import submit_pair_backfill
            from daydreaming_dagster.store.layout import table_path
            from daydreaming_dagster.store.tables import read_table

            instance = dg.DagsterInstance.get()
            keys = valid_pair_keys(read_table(table_path(root, "evaluation_tasks")))
            server.latency_s = args.latency
            generation_requests = len(server.requests)
            daemon_env = {**os.environ, **env}
            daemon = subprocess.Popen(
                [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "daydreaming_dagster.definitions"],
                env=daemon_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(5)  # the daemon and its code server start before the clock does
            cpu0, t0 = busy_cpu_seconds(), time.time()
            # Every run of the backfill gets the response step's parallel_calls from its run config.
            run_config = {"ops": {"evaluation_response": {"config": {"parallel_calls": args.parallel_calls}}}}
            backfill_id = submit_pair_backfill(instance, defs(), keys, run_config=run_config)
            status = wait_for_backfill(instance, backfill_id, args.timeout)
            last = instance.get_latest_materialization_event(dg.AssetKey("evaluation_response"))
            wall = (last.timestamp if last else time.time()) - t0
            cpu = busy_cpu_seconds() - cpu0
            runs, queued, before_call = run_figures(instance, backfill_id)
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            calls = len(server.requests) - generation_requests
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        server.stop()
    ideal = concurrency / args.latency
    rate = len(keys) / wall
    print(f"setup: {setup['pairs']} pairs; generations materialized in {setup['process_wall_s']:.1f} s")
    print(f"backfill {status}: {len(keys)} pairs, {calls} calls, {wall:.1f} s from submission to the last materialization")
    print(f"  {rate:.2f} pairs/s; ideal C/L = {concurrency}/{args.latency:g} = {ideal:.2f}/s; ratio {rate / ideal:.2f}")
    print(f"  {len(runs)} runs, {len(failed)} failed; machine CPU {cpu:.0f} s")
    if before_call:
        print(
            f"  per run: queued {statistics.median(queued):.1f} s (median); from its start to its first call "
            f"median {statistics.median(before_call):.1f} s, max {max(before_call):.1f} s"
        )


if __name__ == "__main__":
    main()
