"""Benchmark (daemon path): an evaluation backfill run by `dagster-daemon`, as from the UI.

Against the test suite's OpenAI-protocol server with a fixed latency L, an experiment of ~2,000
evaluation pairs whose generations are already materialized; one backfill of every valid pair
(what `daydream backfill` and the UI's "Materialize all" submit) is run by `dagster-daemon`, which
launches each run (a batch of the assets' BackfillPolicy) as a new process through a code server
kept warm for the whole backfill, as `dagster dev` and deploy/ run one (`--code-server daemon`:
the one a daemon given `-m` manages, which it replaces every 60 s). Calls in flight are
bounded by the machine's call slots (DAYDREAM_MAX_CALLS_IN_FLIGHT = C, shared by every run); each
response step may start `parallel_calls` of them. The instance is the shipped
dagster_home/dagster.yaml (run queue, pools) with its storage as chosen: SQLite as shipped, or
PostgreSQL as deploy/dagster.postgres.yaml configures it, on a local server the benchmark starts
(tests/postgres.py).

Prints, from submission to the last materialization: pairs/s and the ratio to the ideal C / L;
runs, and runs failed; and per run the seconds from its creation to its first call (the start of
its evaluation_response step), median and p90, broken down into queued (created to dequeued),
launch (dequeued to the run process's RUN_START: spawning the process, imports, loading the code
location) and prompts (RUN_START to the response step: the evaluation_prompt step).

    uv run python bench/daemon.py [--storage sqlite|postgres] [--pairs 2000] [--latency 2] [--calls 16]
                                  [--parallel-calls 16] [--pool N] [--max-runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import yaml
from common import REPO, busy_cpu_seconds, fresh_home, machine, run_measured, write_synthetic_experiment
from llm_runs import start_server

sys.path.insert(0, str(REPO))
from tests.postgres import LocalPostgres  # noqa: E402
from tests.process_groups import stop_group  # noqa: E402

SETUP = """
import os
import dagster as dg
from daydreaming_dagster.runner.executor.ranges import Batch, key_batches
from daydreaming_dagster.runner.executor.worker import QUIET, execute
from daydreaming_dagster.experiment.stages import EVALUATION
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.layout import table_path
from daydreaming_dagster.store.csv_tables import read_table

assert execute("task_tables", None, QUIET).success
instance = dg.DagsterInstance.get()
order = instance.get_dynamic_partitions("generation_tasks")
for batch in key_batches(order, order, 32):
    assert execute("generation", batch, QUIET).success, batch
out = Settings.from_env().output_root
RESULT = {"pairs": len(EVALUATION.select(read_table(table_path(out, "evaluation_tasks"))))}
"""
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


def experiment_for(pairs: int) -> tuple[int, ...]:
    """Concepts for ~pairs / 4 generations (k = 2, one template, one generator), x 2 templates x 2 judges."""
    n = 2
    while comb(n + 1, 2) * 4 <= pairs:
        n += 1
    return (n, 2, 1, 1, 2, 2)


def configure(home: Path, storage: str, pool: int | None, max_runs: int | None) -> None:
    """The shipped instance config, with PostgreSQL storage if asked and the limits overridden if given."""
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    if storage == "postgres":
        for key in STORAGE_KEYS:
            config.pop(key, None)
        config["storage"] = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())["storage"]
    if pool is not None:
        config["concurrency"]["pools"]["default_limit"] = pool
    if max_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_runs
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def start_code_server(tmp: Path, env: dict) -> tuple[subprocess.Popen, list[str]]:
    """A code server the daemon does not manage (as `dagster dev` and deploy/ run one), and the
    daemon's arguments for it. A daemon given `-m` starts its own, and replaces it every 60 s."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(port),
         "-m", "daydreaming_dagster.definitions"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    check = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]
    deadline = time.monotonic() + 180
    while subprocess.run(check, env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the code server did not start")
        time.sleep(1)
    workspace = tmp / "workspace.yaml"
    location = {"host": "127.0.0.1", "port": port, "location_name": "daydreaming_dagster"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
    return server, ["-w", str(workspace)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_backfill(instance, backfill_id: str, timeout_s: float) -> str:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        status = str(instance.get_backfill(backfill_id).status)
        if not status.endswith(("REQUESTED", "CANCELING")):
            return status.rsplit(".", 1)[-1]
        time.sleep(1.0)
    return "TIMED OUT"


def run_figures(instance, backfill_id: str) -> tuple[list, dict[str, list[float]]]:
    """The backfill's runs, and per run the seconds of each phase before its first call."""
    import dagster as dg

    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    phases: dict[str, list[float]] = {"to first call": [], "queued": [], "launch": [], "prompts": []}
    for run in runs:
        created = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
        at = {}
        for record in instance.get_records_for_run(run.run_id).records:
            event = record.event_log_entry
            kind = event.dagster_event_type
            if kind is None:
                continue
            name = kind.value
            if name == "STEP_START" and event.step_key != "evaluation_response":
                continue
            at.setdefault(name, event.timestamp)
        if "STEP_START" not in at or "PIPELINE_START" not in at:
            continue
        dequeued = at.get("PIPELINE_DEQUEUED", at.get("PIPELINE_STARTING", created))
        phases["to first call"].append(at["STEP_START"] - created)
        phases["queued"].append(dequeued - created)
        phases["launch"].append(at["PIPELINE_START"] - dequeued)
        phases["prompts"].append(at["STEP_START"] - at["PIPELINE_START"])
    return runs, phases


def slot_use(starts: list[float], latency: float, calls: int, t0: float, t1: float) -> tuple[float, float]:
    """Over [t0, t1] in 1 s steps: the mean calls in flight, and the share of seconds with fewer than C / 2."""
    seconds = range(int(t0), int(t1) + 1)
    in_flight = [sum(1 for s in starts if s <= t + 0.5 < s + latency) for t in seconds]
    return statistics.mean(in_flight), sum(1 for n in in_flight if n < calls / 2) / len(in_flight)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--calls", type=int, default=16, help="C: machine-wide LLM calls in flight")
    parser.add_argument("--parallel-calls", type=int, default=16, help="calls in flight per response step, at most")
    parser.add_argument("--pool", type=int, default=None, help="llm_api pool limit (default: the shipped config's)")
    parser.add_argument(
        "--max-runs", type=int, default=None, help="max_concurrent_runs (default: the shipped config's)"
    )
    parser.add_argument(
        "--code-server", choices=("warm", "daemon"), default="warm",
        help="warm: one `dagster code-server` for the whole backfill (as dagster dev and deploy/ run it); "
        "daemon: the one `dagster-daemon run -m` starts and replaces every 60 s",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    print(
        f"machine: {machine()}; storage {args.storage}; code server {args.code_server}; load average {os.getloadavg()[0]:.1f} at the start"
    )
    server = start_server(0.0)
    call_starts: list[float] = []
    pg = LocalPostgres.start(fsync=True) if args.storage == "postgres" else None
    daemon = code_server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            root = write_synthetic_experiment(tmp / "data", *experiment_for(args.pairs))
            home = fresh_home(tmp / "home")
            configure(home, args.storage, args.pool, args.max_runs)
            env = {
                "DAGSTER_HOME": str(home),
                "DAYDREAM_DATA_ROOT": str(root),
                "OPENROUTER_API_KEY": "bench-key",
                "OPENROUTER_BASE_URL": server.base_url,
                "DAYDREAM_MAX_CALLS_IN_FLIGHT": str(args.calls),
                **(pg.env(pg.create_database("bench")) if pg else {}),
            }
            setup = run_measured(SETUP, env)
            os.environ.update(env)
            import dagster as dg

            from daydreaming_dagster.definitions import defs
            from daydreaming_dagster.experiment.stages import EVALUATION
            from daydreaming_dagster.runner.backfills import submit_pair_backfill
            from daydreaming_dagster.store.csv_tables import read_table
            from daydreaming_dagster.store.layout import table_path

            instance = dg.DagsterInstance.get()
            keys = EVALUATION.select(read_table(table_path(root, "evaluation_tasks")))
            server.latency_for = lambda body: (call_starts.append(time.time()), args.latency)[1]
            children0 = _cpu(resource.RUSAGE_CHILDREN)
            target = ["-m", "daydreaming_dagster.definitions"]
            if args.code_server == "warm":
                code_server, target = start_code_server(tmp, {**os.environ, **env})
            daemon = subprocess.Popen(
                [str(Path(sys.executable).with_name("dagster-daemon")), "run", *target],
                env={**os.environ, **env}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            time.sleep(5)  # the daemon (and its code server) start before the clock does
            cpu0, t0 = busy_cpu_seconds(), time.time()
            # Every run of the backfill gets the response step's parallel_calls from its run config.
            run_config = {"ops": {"evaluation_response": {"config": {"parallel_calls": args.parallel_calls}}}}
            backfill_id = submit_pair_backfill(instance, defs(), keys, run_config=run_config)
            status = wait_for_backfill(instance, backfill_id, args.timeout)
            last = instance.get_latest_materialization_event(dg.AssetKey("evaluation_response"))
            wall = (last.timestamp if last else time.time()) - t0
            cpu = busy_cpu_seconds() - cpu0
            runs, phases = run_figures(instance, backfill_id)
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            instance.dispose()
    finally:
        for process in (daemon, code_server):
            if process is not None:
                stop_group(process)
        if daemon is not None:
            # The daemon, its code server and the run processes (each reaped by its parent).
            path_cpu = _cpu(resource.RUSAGE_CHILDREN) - children0
        server.stop()
        if pg:
            pg.stop()
    ideal = args.calls / args.latency
    rate = len(keys) / wall
    print(f"setup: {setup['pairs']} pairs; generations materialized in {setup['process_wall_s']:.1f} s")
    print(
        f"backfill {status}: {len(keys)} pairs, {len(call_starts)} calls, {wall:.1f} s from submission to the "
        f"last materialization (first call after {min(call_starts, default=t0) - t0:.1f} s)"
    )
    print(f"  {rate:.2f} pairs/s; ideal C/L = {args.calls}/{args.latency:g} = {ideal:.2f}/s; ratio {rate / ideal:.2f}")
    print(
        f"  {len(runs)} runs, {len(failed)} failed; CPU {path_cpu:.0f} s in the daemon's processes, {cpu:.0f} s on the whole machine; load average {os.getloadavg()[0]:.1f} at the end"
    )
    mean_in_flight, starved = slot_use(call_starts, args.latency, args.calls, t0, t0 + wall)
    print(
        f"  calls in flight: mean {mean_in_flight:.1f} of C = {args.calls}; fewer than C/2 in {starved:.0%} of the seconds"
    )
    if phases["to first call"]:
        print("  per run, seconds (median / p90): " + "; ".join(
            f"{name} {statistics.median(v):.1f} / {p90(v):.1f}" for name, v in phases.items()
        ))  # fmt: skip


if __name__ == "__main__":
    main()
