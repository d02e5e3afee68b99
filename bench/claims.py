"""What exactly-once costs: a claim per paid call, and the overlap check per run `daydream run` creates.

1. Claims: take (exclusive create of `.NAME.claim.json`), renew once, release, for N calls in one
   folder on the local disk; and the whole of what a response step adds per call (take, re-check
   the store for an answer that arrived meanwhile, release).
2. The run-creation gate: the lock in DAGSTER_HOME, reading the in-progress runs (R of them, each
   over a range of 32 partitions) and the materializations of a 32-partition batch, on the
   project's SQLite instance with 1,000 registered generation keys.

Both next to the per-pair overhead of a whole offline run (~0.016 s per pair, README).

    uv run python bench/claims.py [--calls 2000] [--runs 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, fresh_home, machine

sys.path.insert(0, str(REPO))

from daydreaming_dagster.llm.requests import LLMRequest  # noqa: E402
from daydreaming_dagster.resources.response_store import ResponseStore  # noqa: E402
from daydreaming_dagster.store.claims import Claims, Owner  # noqa: E402

PER_PAIR_OVERHEAD_S = 0.016


def time_claims(folder: Path, calls: int) -> dict:
    claims = Claims()
    owner = Owner.here("bench-run")
    store = ResponseStore(base_path=str(folder)).archive()
    request = LLMRequest("m", "x/m", "a prompt", 0.5, 100)
    timings = {"take": [], "renew": [], "release": [], "step": []}
    for i in range(calls):
        path = store.claim_path("generation_response", f"task-{i:05d}")
        t0 = time.perf_counter()
        claim = claims.take(path, owner, {"asset": "generation_response", "partition": f"task-{i:05d}"})
        t1 = time.perf_counter()
        claims.renew(claim)
        t2 = time.perf_counter()
        claims.release(claim)
        t3 = time.perf_counter()
        timings["take"].append(t1 - t0)
        timings["renew"].append(t2 - t1)
        timings["release"].append(t3 - t2)
        # What respond adds per call: take, look again for a stored answer, release.
        t0 = time.perf_counter()
        claim = claims.take(path, owner, {"asset": "generation_response", "partition": f"task-{i:05d}"})
        store.reusable("generation_response", f"task-{i:05d}", request, replace_changed=False)
        claims.release(claim)
        timings["step"].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in timings.items()}


def time_gate(tmp: Path, runs: int, repeats: int = 20) -> tuple[float, float]:
    """Median seconds of one gate check (lock, in-progress runs, materializations of a 32-key batch),
    and of the same check with no run in progress."""
    home = fresh_home(tmp / "home")
    os.environ["DAGSTER_HOME"] = str(home)
    import uuid

    import dagster as dg

    from daydreaming_dagster.definitions import build_definitions
    from daydreaming_dagster.runner.executor.worker_instance import worker_instance
    from daydreaming_dagster.runner.reruns.overlap import RunsOverlap, check_no_overlap, run_creation_lock
    from daydreaming_dagster.settings import Settings

    instance = worker_instance()  # the instance a runner's workers create their runs with
    keys = [f"gen-{i:05d}" for i in range(1000)]
    instance.add_dynamic_partitions("generation_tasks", keys)
    job = build_definitions(Settings(tmp / "data", "offline", "")).resolve_job_def("generation")
    batch = {"dagster/asset_partition_range_start": keys[900], "dagster/asset_partition_range_end": keys[931]}

    def check() -> float:
        started = time.perf_counter()
        with run_creation_lock(instance):
            try:
                check_no_overlap(instance, job, batch, rerun_materialized=False)
            except RunsOverlap:
                raise AssertionError("the bench batch overlaps nothing") from None
        return time.perf_counter() - started

    idle = statistics.median(check() for _ in range(repeats))
    for r in range(runs):
        start, end = keys[r * 32], keys[r * 32 + 31]
        instance.add_run(
            dg.DagsterRun(
                job_name="generation",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
                asset_selection=frozenset({dg.AssetKey("generation_response")}),
            )
        )
    busy = statistics.median(check() for _ in range(repeats))
    return idle, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=8, help="other runs in progress during the gate check")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        medians = time_claims(tmp / "data", args.calls)
        idle, busy = time_gate(tmp, args.runs)
    for name, seconds in medians.items():
        print(f"claim {name:8s}: {seconds * 1e6:7.0f} µs median over {args.calls} calls")
    step = medians["step"]
    print(f"per paid call, what a response step adds: {step * 1e3:.2f} ms = "
          f"{step / PER_PAIR_OVERHEAD_S:.1%} of the {PER_PAIR_OVERHEAD_S * 1e3:.0f} ms per-pair overhead")
    print(f"gate per run created: {idle * 1e3:.1f} ms with no other run in progress, {busy * 1e3:.1f} ms with "
          f"{args.runs} others (32 partitions each); per partition of a 32-partition batch: "
          f"{busy / 32 * 1e3:.2f} ms = {busy / 32 / PER_PAIR_OVERHEAD_S:.1%} of the per-pair overhead")


if __name__ == "__main__":
    main()
