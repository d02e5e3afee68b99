"""`daydream run`'s worker processes: each loads the code location and its instance once, then
executes runs (one partition, a partition range, or an unpartitioned job) in process.

Workers fork from a forkserver that imported the code location once, so N workers do not pay N
imports (~3 s of CPU each), and share one semaphore of call slots (see llm.slots)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import dagster as dg

from ..assets.budget import CAP_REACHED
from ..compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from ..settings import Settings
from .batches import Batch
from .worker_instance import worker_instance

_WORKER: dict = {}


@dataclass(frozen=True)
class BatchOutcome:
    keys: tuple[str, ...]
    success: bool
    error: str | None = None
    cap_reached: bool = False  # the spending cap refused a call: nothing more should start


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure of a run as one line (a Failure's own description when it has one)."""
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error:
            cause = data.error.cause or data.error
            return (cause.message or data.error.message).strip().splitlines()[0]
    return "the run failed (see the run's logs in the Dagster UI)"


def cap_reached(result: dg.ExecuteInProcessResult) -> bool:
    """Whether a step failed because the spending cap refused a call (see assets/budget.py)."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data.user_failure_data
            if data is not None and CAP_REACHED in (data.metadata or {}):
                return True
    return False


def load_worker() -> None:
    """This process's code location and instance, loaded once for the settings in the environment
    (again when they change, as between two in-process `daydream` calls); no partition keys are
    read here."""
    from ..definitions import build_definitions

    settings = Settings.from_env()
    key = (settings, settings.output_root, os.environ.get("DAGSTER_HOME"), bool(os.environ.get("OPENROUTER_API_KEY")))
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, defs=build_definitions(settings), instance=worker_instance())


def execute(job_name: str, batch: Batch | None, run_config: dict, tags: dict | None = None) -> BatchOutcome:
    """Run one job in this process on the DAGSTER_HOME instance: unpartitioned (no batch), for one
    partition, or for a range of partitions."""
    load_worker()
    job = _WORKER["defs"].resolve_job_def(job_name)
    keys = batch.keys if batch else (job_name,)
    partition_key, tags = None, dict(tags or {})
    if batch and len(batch.keys) == 1:
        partition_key = batch.start
    elif batch:
        tags.update({ASSET_PARTITION_RANGE_START_TAG: batch.start, ASSET_PARTITION_RANGE_END_TAG: batch.end})
    result = job.execute_in_process(
        instance=_WORKER["instance"], partition_key=partition_key, tags=tags, run_config=run_config, raise_on_error=False
    )
    if result.success:
        return BatchOutcome(keys, True)
    return BatchOutcome(keys, False, failure_text(result), cap_reached(result))


# The runner prints its own progress; Dagster's per-event console lines would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def partition_run_config(job_name: str, replace_changed: bool, parallel_calls: int, max_cost_usd: float | None = None) -> dict:
    asset = "generation_response" if job_name == "generation" else "evaluation_response"
    config = {"parallel_calls": parallel_calls, **({"replace_changed": True} if replace_changed else {})}
    if max_cost_usd is not None:
        config["max_cost_usd"] = float(max_cost_usd)
    return {**QUIET, "ops": {asset: {"config": config}}}


def default_workers(concurrency: int, offline: bool = False) -> int:
    """Worker processes. A run's Dagster bookkeeping is CPU work: offline (answers are instant)
    one worker per core is fastest. Against an API, two more keep the call slots busy while other
    workers start or record runs (measured on 2 cores: 0.87 of the ideal rate with 3, 0.90 with 4)."""
    cores = os.cpu_count() or 1
    return max(1, min(concurrency, cores if offline else cores + 2))


def _init_worker(call_slots) -> None:
    from ..llm.slots import share_call_slots

    share_call_slots(call_slots)
    load_worker()


def _ready() -> None:
    """A no-op task: submitting one per worker starts the workers early."""


class WorkerPool:
    """`workers` processes forked from a forkserver that imported the code location once, sharing
    `concurrency` call slots; started on first use (or early, with `start`)."""

    def __init__(self, workers: int, concurrency: int) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver, not fork: this process holds open SQLite connections and threads.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["daydreaming_dagster.definitions"])
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(context.BoundedSemaphore(self.concurrency),),
            )
            for _ in range(self.workers):
                self._pool.submit(_ready)
        return self._pool

    def submit(self, job_name: str, batch: Batch, run_config: dict) -> Future:
        return self.start().submit(execute, job_name, batch, run_config)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
