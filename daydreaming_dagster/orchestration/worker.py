"""What `daydream run`'s worker processes (see pool.py), and the runner itself, do: load the code
location and its instance once, then execute runs (one partition, a partition range, or an
unpartitioned job) in process, several at once in threads."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import dagster as dg

from ..compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from ..llm.slots import counting_calls, share_call_slots
from ..settings import Settings
from .batches import Batch
from .worker_instance import worker_instance

_WORKER: dict = {}
_WORKER_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchOutcome:
    keys: tuple[str, ...]
    success: bool
    error: str | None = None
    calls: int = 0  # LLM calls the run started (the other partitions reused a stored answer or failed first)


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


def load_worker(instance: bool = True) -> None:
    """This process's code location and (with `instance`) instance, loaded once for the settings in
    the environment (again when they change, as between two in-process `daydream` calls); no
    partition keys are read here."""
    from ..definitions import build_definitions

    settings = Settings.from_env()
    key = (settings, settings.output_root, os.environ.get("DAGSTER_HOME"), bool(os.environ.get("OPENROUTER_API_KEY")))
    with _WORKER_LOCK:
        if _WORKER.get("key") != key:
            _WORKER.clear()
            _WORKER.update(key=key, defs=build_definitions(settings))
        if instance and "instance" not in _WORKER:
            _WORKER["instance"] = worker_instance()


def init_worker(call_slots) -> None:
    """A worker process's start: share the runner's call slots, load the code location. The
    instance opens with the first run: by then the runner has created its storage (processes that
    create a fresh instance's storage at the same moment break it)."""
    share_call_slots(call_slots)
    load_worker(instance=False)


def warm_worker() -> None:
    """Open the instance and resolve the partition jobs before the first batch arrives."""
    load_worker()
    for job_name in ("generation", "evaluation"):
        _WORKER["defs"].resolve_job_def(job_name)


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
    with counting_calls() as calls:
        result = job.execute_in_process(
            instance=_WORKER["instance"], partition_key=partition_key, tags=tags, run_config=run_config, raise_on_error=False
        )
    return BatchOutcome(keys, result.success, None if result.success else failure_text(result), calls.started)


# The runner prints its own progress; Dagster's per-event console lines would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def partition_run_config(job_name: str, replace_changed: bool, parallel_calls: int) -> dict:
    asset = "generation_response" if job_name == "generation" else "evaluation_response"
    config = {"parallel_calls": parallel_calls, **({"replace_changed": True} if replace_changed else {})}
    return {**QUIET, "ops": {asset: {"config": config}}}
