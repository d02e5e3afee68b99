"""`daydream run`: the whole experiment on the Dagster instance in DAGSTER_HOME, resumably.

Order: task tables (registers keys) -> every generation partition not yet materialized -> every
valid evaluation pair not yet materialized whose generation exists -> results. Each partition is
its own Dagster run, recorded in the instance (so `dagster dev` shows it) and re-runnable alone.
Partitions run in a pool of worker processes, each loading the code location once."""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from . import storage
from .pairs import valid_pair_keys
from .resources.io_managers import read_table

_WORKER: dict = {}


@dataclass
class StageReport:
    name: str
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class PartitionOutcome:
    key: str
    success: bool
    error: str | None = None


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


class DynamicKeyCache:
    """Serves a worker's many runs the dynamic partition keys from memory.

    Dagster asks the instance whether a key exists ~30 times per partition run and lists every key
    of each dimension to resolve a multi-partition key; on SQLite that is about 40% of a run's CPU.
    Keys only change through registration: this process's own (which clears the cache) or another
    process's (seen after `ttl_s`, or at once for a key asked about that is not cached)."""

    def __init__(self, instance: dg.DagsterInstance, ttl_s: float = 30.0):
        self._instance = instance
        self._list = instance.get_dynamic_partitions
        self._add = instance.add_dynamic_partitions
        self._delete = instance.delete_dynamic_partition
        self._ttl_s = ttl_s
        self._keys: dict[str, tuple[float, list[str], set[str]]] = {}

    def install(self) -> None:
        self._instance.get_dynamic_partitions = self.get_dynamic_partitions
        self._instance.has_dynamic_partition = self.has_dynamic_partition
        self._instance.add_dynamic_partitions = self.add_dynamic_partitions
        self._instance.delete_dynamic_partition = self.delete_dynamic_partition

    def _entry(self, name: str, refresh: bool = False) -> tuple[float, list[str], set[str]]:
        entry = self._keys.get(name)
        if refresh or entry is None or time.monotonic() - entry[0] > self._ttl_s:
            keys = list(self._list(name))
            entry = self._keys[name] = (time.monotonic(), keys, set(keys))
        return entry

    def get_dynamic_partitions(self, partitions_def_name: str) -> list[str]:
        return self._entry(partitions_def_name)[1]

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        if partition_key in self._entry(partitions_def_name)[2]:
            return True
        return partition_key in self._entry(partitions_def_name, refresh=True)[2]

    def add_dynamic_partitions(self, partitions_def_name: str, partition_keys) -> None:
        self._keys.pop(partitions_def_name, None)
        self._add(partitions_def_name, partition_keys)

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._keys.pop(partitions_def_name, None)
        self._delete(partitions_def_name, partition_key)


def _execute(job_name: str, partition_key: str | None, run_config: dict) -> PartitionOutcome:
    """Run one job (optionally for one partition) in this process on the DAGSTER_HOME instance."""
    if "defs" not in _WORKER:
        from .definitions import defs

        _WORKER["defs"] = defs
        _WORKER["instance"] = dg.DagsterInstance.get()
        DynamicKeyCache(_WORKER["instance"]).install()
    job = _WORKER["defs"].resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=_WORKER["instance"], partition_key=partition_key, run_config=run_config, raise_on_error=False
    )
    return PartitionOutcome(partition_key or job_name, result.success, None if result.success else failure_text(result))


# The runner prints its own progress; Dagster's per-event console lines would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _partition_run_config(job_name: str, replace_changed: bool) -> dict:
    if not replace_changed:
        return QUIET
    asset = "generation_response" if job_name == "generation" else "evaluation_response"
    return {**QUIET, "ops": {asset: {"config": {"replace_changed": True}}}}


class Runner:
    """Executes the stages; `progress` receives one line per update."""

    def __init__(self, output_root: Path, concurrency: int, replace_changed: bool, progress: Callable[[str], None]):
        self.output_root = Path(output_root)
        self.concurrency = max(1, concurrency)
        self.replace_changed = replace_changed
        self.progress = progress
        self.instance = dg.DagsterInstance.get()
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _table(self, name: str):
        return read_table(storage.table_path(self.output_root, name))

    def materialized(self, asset_name: str) -> set[str]:
        return self.instance.get_materialized_partitions(dg.AssetKey(asset_name))

    def run_single(self, job_name: str) -> StageReport:
        report = StageReport(job_name, total=1)
        started = time.monotonic()
        outcome = _execute(job_name, None, QUIET)
        report.seconds = time.monotonic() - started
        if outcome.success:
            report.succeeded = 1
        else:
            report.failures[job_name] = outcome.error or ""
        return report

    def run_partitions(self, job_name: str, keys: list[str], done: set[str]) -> StageReport:
        if self.replace_changed:
            # Materialized partitions may hold responses to a changed prompt; running them all is
            # cheap because an unchanged stored response is reused without an LLM call.
            done = set()
        todo = [k for k in keys if k not in done]
        report = StageReport(job_name, total=len(keys), skipped=len(keys) - len(todo))
        self.progress(f"{job_name}: {len(todo)} to run, {report.skipped} already materialized")
        if not todo:
            return report
        run_config = _partition_run_config(job_name, self.replace_changed)
        started = time.monotonic()
        for i, outcome in enumerate(self._outcomes(job_name, todo, run_config), start=1):
            if outcome.success:
                report.succeeded += 1
            else:
                report.failures[outcome.key] = outcome.error or ""
                self.progress(f"{job_name}: FAILED {outcome.key}: {outcome.error}")
            if i == len(todo) or i % max(1, len(todo) // 20) == 0:
                rate = i / max(time.monotonic() - started, 1e-9)
                self.progress(f"{job_name}: {i}/{len(todo)} done ({len(report.failures)} failed, {rate:.1f}/s)")
        report.seconds = time.monotonic() - started
        return report

    def _outcomes(self, job_name: str, keys: list[str], run_config: dict) -> Iterable[PartitionOutcome]:
        if self.concurrency == 1 or len(keys) == 1:
            for key in keys:
                yield _execute(job_name, key, run_config)
            return
        if self._pool is None:
            # forkserver, not fork: this process holds open SQLite connections and threads. The
            # server imports the code location once and forks every worker from that clean state,
            # so N workers do not pay N imports (~3 s of CPU each).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["daydreaming_dagster.definitions"])
            self._pool = ProcessPoolExecutor(self.concurrency, mp_context=context)
        futures = [self._pool.submit(_execute, job_name, key, run_config) for key in keys]
        for future in as_completed(futures):
            yield future.result()

    def run(self) -> list[StageReport]:
        reports = [self.run_single("task_tables")]
        if reports[-1].failures:
            return reports
        generation_keys = self._table("generation_tasks")["generation_task_id"].tolist()
        reports.append(self.run_partitions("generation", generation_keys, self.materialized("generation_response")))

        generated = self.materialized("generation_response")
        pairs = self._table("evaluation_tasks")
        pair_keys = valid_pair_keys(pairs, generation_task=generated)
        waiting = len(pairs) - len(pair_keys)
        if waiting:
            self.progress(f"evaluation: {waiting} pair(s) wait for a generation that is not materialized")
        reports.append(self.run_partitions("evaluation", pair_keys, self.materialized("evaluation_response")))
        reports.append(self.run_single("results"))
        return reports


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
