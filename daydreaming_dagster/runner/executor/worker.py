"""What `daydream run`'s worker processes (see pool.py), and the runner itself, do: load the code
location and its instance once, then execute runs (one partition, a partition range, or an
unpartitioned job) in process, several at once in threads."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import dagster as dg

from ...assets.common import EXPERIMENT_REFUSED
from ...assets.responding import ASKED_EARLIER, CAP_REACHED, STOPS_RUN
from ...compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from ...llm.slots import counting_calls, share_call_slots
from ...settings import Settings
from ..reruns.overlap import RERUN_TAG, RunsOverlap, owner_tags
from .ranges import Batch
from .worker_instance import worker_instance

_WORKER: dict = {}
_WORKER_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchOutcome:
    """What became of a batch: the keys that ran (all succeeded, or the run failed), and those
    `left` to another run (key -> that run), which neither ran here nor failed."""

    keys: tuple[str, ...]
    success: bool
    error: str | None = None
    cap_reached: bool = False  # the spending cap refused a call: nothing more should start
    stops_run: bool = False  # no call can succeed any more (responding.STOPS_RUN): nothing more should start
    left: dict[str, str] = field(default_factory=dict)
    calls: int = 0  # LLM calls the runs started (the other partitions reused a stored answer, or made none)
    # Partitions whose call was made and failed (key -> ResponseConfig.asked_earlier's entry): a run
    # of them later in the same command is told, and fails them without asking again.
    asked: dict[str, dict] = field(default_factory=dict)
    invalid: bool = False  # the run failed on an invalid experiment (an ExperimentError): `error` is its sentence


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
            line = (cause.message or data.error.message).strip().splitlines()[0]
            named, _, sentence = line.partition(": ")
            # The project's own errors are one sentence already: without Dagster's "Class: " before it.
            if cause.cls_name in SENTENCE_ERRORS and named.rsplit(".", 1)[-1] == cause.cls_name and sentence:
                return sentence
            return line
    return "the run failed (see the run's logs in the Dagster UI)"


# Errors whose text is one sentence meant for the user, as it is.
SENTENCE_ERRORS = frozenset({"StorageFull", "StorageRefused", "ExperimentError"})


def failed_with(result: dg.ExecuteInProcessResult, flag: str) -> bool:
    """Whether a step failed with `flag` in its failure's metadata: CAP_REACHED (the spending cap
    refused a call, calls/guard.py) or STOPS_RUN (assets/responding.py)."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data.user_failure_data
            if data is not None and flag in (data.metadata or {}):
                return True
    return False


def load_worker(instance: bool = True) -> None:
    """This process's code location and (with `instance`) instance, loaded once for the settings in
    the environment (again when they change, as between two in-process `daydream` calls); no
    partition keys are read here."""
    from ...definitions import build_definitions

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


def failed_with_error(result: dg.ExecuteInProcessResult, cls_name: str) -> bool:
    """Whether a step failed with an exception of this class (e.g. StorageFull from a write)."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            if cls_name in (error.cls_name, getattr(error.cause, "cls_name", None)):
                return True
    return False


def failure_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    """A dict-valued metadata entry of a failed run's step failures, merged (see assets/responding.py):
    "held_elsewhere" (partition key -> the live run that holds its claim) or ASKED_EARLIER."""
    merged = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_failure_data.user_failure_data:
            value = event.step_failure_data.user_failure_data.metadata.get(name)
            merged.update(getattr(value, "value", None) or {})
    return merged


# Jobs that render materialized prompts again on purpose, for answers gone out of date (changes.py).
PROMPT_REFRESH_JOBS = frozenset({"generation_prompts", "evaluation_prompts"})


def execute(job_name: str, batch: Batch | None, run_config: dict, tags: dict | None = None) -> BatchOutcome:
    """Run one job in this process on the DAGSTER_HOME instance: unpartitioned (no batch), for one
    partition, or for a range of partitions. Partitions another run is materializing are left to
    it: the rest of the batch runs as the consecutive pieces that remain."""
    load_worker()
    job = _WORKER["defs"].resolve_job_def(job_name)
    tags = {**(tags or {}), **owner_tags()}
    replacing = any(op.get("config", {}).get("replace_changed") for op in run_config.get("ops", {}).values())
    if replacing or job_name in PROMPT_REFRESH_JOBS:
        tags[RERUN_TAG] = "true"  # materialized partitions are re-run on purpose
    pieces = [batch.keys] if batch else [None]
    ran, left, errors, capped, refused, asked, invalid = [], {}, [], False, False, {}, False
    with counting_calls() as calls:
        while pieces and not (capped or refused):
            keys = pieces.pop(0)
            try:
                result = _execute_piece(job, keys, run_config, tags)
            except RunsOverlap as overlap:
                taken = {k: str(other) for k, other in overlap.busy.items()}
                if keys is None:
                    left[job_name] = next(iter(taken.values()))
                else:
                    taken = {k: v for k, v in taken.items() if k in keys} or dict.fromkeys(keys, next(iter(taken.values())))
                    left.update(taken)
                    pieces[:0] = _free_pieces(keys, taken)
                continue
            held = failure_metadata(result, "held_elsewhere")
            left.update(held)
            asked.update(failure_metadata(result, ASKED_EARLIER))
            piece = keys or (job_name,)
            ran += [k for k in piece if k not in held]
            if not result.success and any(k not in held for k in piece):
                errors.append(failure_text(result))
                capped = failed_with(result, CAP_REACHED)
                refused = failed_with(result, STOPS_RUN) or failed_with_error(result, "StorageFull")
                if len(errors) == 1:  # the error the outcome reports
                    invalid = failed_with(result, EXPERIMENT_REFUSED)
    return BatchOutcome(
        tuple(ran), not errors, errors[0] if errors else None, capped, refused, left, calls.started, asked, invalid
    )


def _execute_piece(job, keys: tuple[str, ...] | None, run_config: dict, tags: dict) -> dg.ExecuteInProcessResult:
    partition_key, tags = None, dict(tags)
    if keys is not None and len(keys) == 1:
        partition_key = keys[0]
    elif keys is not None:
        tags.update({ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
    return job.execute_in_process(
        instance=_WORKER["instance"], partition_key=partition_key, tags=tags, run_config=run_config, raise_on_error=False
    )


def _free_pieces(keys: tuple[str, ...], taken: dict) -> list[tuple[str, ...]]:
    """The runs of consecutive keys of a batch that no other run has taken (each still a range)."""
    pieces, current = [], []
    for key in keys:
        if key in taken:
            if current:
                pieces.append(tuple(current))
            current = []
        else:
            current.append(key)
    return pieces + ([tuple(current)] if current else [])


# The runner prints its own progress; Dagster's per-event console lines would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def partition_run_config(
    job_name: str, replace_changed: bool, parallel_calls: int, max_cost_usd: float | None = None, asked_earlier: dict | None = None
) -> dict:
    """The run config of a response job's batch (`asked_earlier`: see `ResponseConfig`)."""
    asset = "generation_response" if job_name == "generation" else "evaluation_response"
    config = {"parallel_calls": parallel_calls, **({"replace_changed": True} if replace_changed else {})}
    if max_cost_usd is not None:
        config["max_cost_usd"] = float(max_cost_usd)
    if asked_earlier:
        config["asked_earlier"] = asked_earlier
    return {**QUIET, "ops": {asset: {"config": config}}}
