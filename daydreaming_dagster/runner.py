"""`daydream run`: the whole experiment on the Dagster instance in DAGSTER_HOME, resumably.

Order: task tables (registers keys) -> every generation partition not yet materialized -> every
valid evaluation pair not yet materialized whose generation exists -> results. Partitions run in
batches: each batch is one Dagster partition-range run over consecutive keys, which records a
materialization for every partition in it (so `dagster dev` shows each one, and each stays
re-runnable alone). Batches run in a pool of worker processes forked from one that loaded the
code location once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from . import storage
from .batches import MAX_PARTITIONS_PER_RUN, Batch, batch_size, key_batches, pair_batches
from .pairs import valid_pair_keys
from .storage import read_table

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
class BatchOutcome:
    keys: tuple[str, ...]
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


def _load_worker() -> None:
    """This process's code location and instance, loaded once (no partition keys are read here)."""
    if "defs" not in _WORKER:
        from .definitions import defs

        _WORKER["defs"] = defs
        _WORKER["instance"] = dg.DagsterInstance.get()
        DynamicKeyCache(_WORKER["instance"]).install()


def _execute(job_name: str, batch: Batch | None, run_config: dict, tags: dict | None = None) -> BatchOutcome:
    """Run one job in this process on the DAGSTER_HOME instance: unpartitioned (no batch), for one
    partition, or for a range of partitions."""
    _load_worker()
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
    return BatchOutcome(keys, result.success, None if result.success else failure_text(result))


# The runner prints its own progress; Dagster's per-event console lines would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _partition_run_config(job_name: str, replace_changed: bool, parallel_calls: int) -> dict:
    asset = "generation_response" if job_name == "generation" else "evaluation_response"
    config = {"parallel_calls": parallel_calls, **({"replace_changed": True} if replace_changed else {})}
    return {**QUIET, "ops": {asset: {"config": config}}}


def default_workers(concurrency: int, offline: bool = False) -> int:
    """Worker processes. A run's Dagster bookkeeping is CPU work: offline (answers are instant)
    one worker per core is fastest. Against an API, two more keep the call slots busy while other
    workers start or record runs (measured on 2 cores: 0.87 of the ideal rate with 3, 0.90 with 4)."""
    cores = os.cpu_count() or 1
    return max(1, min(concurrency, cores if offline else cores + 2))


def _init_worker(call_slots) -> None:
    from .resources.llm import share_call_slots

    share_call_slots(call_slots)
    _load_worker()


def _ready() -> None:
    """A no-op task: submitting one per worker starts the workers early."""


# The run tag that records what a task_tables run was built from (see tables_fingerprint).
TABLES_FINGERPRINT_TAG = "daydream/tables_fingerprint"


def tables_fingerprint(data_root: Path) -> str:
    """A digest of everything the task tables are built from: each file under `1_raw`, and this
    package's code (a code change rebuilds them, which costs a few seconds and no LLM call)."""
    digest = hashlib.sha256()
    for base, pattern in ((Path(data_root) / "1_raw", "**/*"), (Path(__file__).parent, "**/*.py")):
        for path in sorted(p for p in base.glob(pattern) if p.is_file()):
            digest.update(f"{base.name}/{path.relative_to(base)}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class Runner:
    """Executes the stages; `progress` receives one line per update.

    `concurrency` bounds the LLM calls in flight. Partitions run in batches (partition-range runs of
    at most `max_batch` partitions) on `workers` processes; every run may start `concurrency` calls,
    and a semaphore the workers share keeps the total within it, so a worker busy starting or
    recording a run leaves its slots to the others."""

    def __init__(
        self,
        output_root: Path,
        concurrency: int,
        replace_changed: bool,
        progress: Callable[[str], None],
        workers: int | None = None,
        max_batch: int | None = None,
        data_root: Path | None = None,
    ):
        self.output_root = Path(output_root)
        # Given, a rerun skips the task tables when the experiment and code are unchanged.
        self.data_root = Path(data_root) if data_root else None
        self.concurrency = max(1, concurrency)
        self.workers = max(1, workers or default_workers(self.concurrency))
        self.parallel_calls = self.concurrency
        self.max_batch = max(1, max_batch or MAX_PARTITIONS_PER_RUN)
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

    def run_single(self, job_name: str, tags: dict | None = None) -> StageReport:
        report = StageReport(job_name, total=1)
        started = time.monotonic()
        outcome = _execute(job_name, None, QUIET, tags)
        report.seconds = time.monotonic() - started
        if outcome.success:
            report.succeeded = 1
        else:
            report.failures[job_name] = outcome.error or ""
        return report

    def run_partitions(
        self, job_name: str, keys: list[str], done: set[str], batcher: Callable[[list[str], int], list[Batch]]
    ) -> StageReport:
        """Run every key not in `done`, in the batches `batcher(todo, size)` forms."""
        if self.replace_changed:
            # Materialized partitions may hold responses to a changed prompt; running them all is
            # cheap because an unchanged stored response is reused without an LLM call.
            done = set()
        todo = [k for k in keys if k not in done]
        report = StageReport(job_name, total=len(keys), skipped=len(keys) - len(todo))
        self.progress(f"{job_name}: {len(todo)} to run, {report.skipped} already materialized")
        if not todo:
            return report
        batches = batcher(todo, batch_size(len(todo), self.workers, self.max_batch))
        run_config = _partition_run_config(job_name, self.replace_changed, self.parallel_calls)
        started, finished, step = time.monotonic(), 0, max(1, len(todo) // 20)
        for outcome in self._outcomes(job_name, batches, run_config):
            if outcome.success:
                report.succeeded += len(outcome.keys)
            else:
                report.failures[outcome.keys[0]] = outcome.error or ""
                self.progress(f"{job_name}: FAILED {outcome.keys[0]}: {outcome.error}")
            before, finished = finished, finished + len(outcome.keys)
            if finished == len(todo) or finished // step > before // step:
                rate = finished / max(time.monotonic() - started, 1e-9)
                self.progress(f"{job_name}: {finished}/{len(todo)} done ({len(report.failures)} failed, {rate:.1f}/s)")
        report.seconds = time.monotonic() - started
        return report

    def _outcomes(self, job_name: str, batches: list[Batch], run_config: dict) -> Iterable[BatchOutcome]:
        """Every partition's outcome; a batch that fails is run again one partition per run, so each
        partition that can succeed is materialized and each failure is recorded on its own partition
        (answers the batch already paid for are stored, and those runs reuse them)."""
        for outcome in self._run_batches(job_name, batches, run_config):
            if outcome.success or len(outcome.keys) == 1:
                yield outcome
                continue
            self.progress(
                f"{job_name}: a batch of {len(outcome.keys)} failed ({outcome.error}); running its partitions one by one"
            )
            yield from self._run_batches(job_name, [Batch((k,)) for k in outcome.keys], run_config)

    def _run_batches(self, job_name: str, batches: list[Batch], run_config: dict) -> Iterable[BatchOutcome]:
        if self.workers == 1 or len(batches) == 1:
            for batch in batches:
                yield _execute(job_name, batch, run_config)
            return
        futures = [self._start_pool().submit(_execute, job_name, batch, run_config) for batch in batches]
        for future in as_completed(futures):
            yield future.result()

    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver, not fork: this process holds open SQLite connections and threads. The
            # server imports the code location once and forks every worker from that clean state,
            # so N workers do not pay N imports (~3 s of CPU each).
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

    # -- what a rerun can skip

    def _outputs_exist(self, run_id: str) -> bool:
        """Whether every file the run's materializations point to is still on disk."""
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        for record in records:
            path = record.event_log_entry.asset_materialization.metadata.get("path")
            if path is not None and not Path(path.value).exists():
                return False
        return bool(records)

    def _latest_run(self, job_name: str) -> dg.DagsterRun | None:
        runs = self.instance.get_runs(dg.RunsFilter(job_name=job_name), limit=1)
        return runs[0] if runs else None

    def tables_current(self, fingerprint: str) -> bool:
        """The task tables were built by `daydream run` from exactly this experiment and code, are the
        latest ones, and their files are in place."""
        run = self._latest_run("task_tables")
        if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
            return False
        if run.tags.get(TABLES_FINGERPRINT_TAG) != fingerprint:
            return False
        latest = self.instance.get_latest_materialization_event(dg.AssetKey("evaluation_tasks"))
        return latest is not None and latest.run_id == run.run_id and self._outputs_exist(run.run_id)

    def results_current(self) -> bool:
        """The last results run succeeded after every task table and response it reads, and its files exist."""
        run = self._latest_run("results")
        if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
            return False
        started = self.instance.get_run_record_by_id(run.run_id).start_time or 0
        for upstream in ("evaluation_tasks", "generation_response", "evaluation_response"):
            event = self.instance.get_latest_materialization_event(dg.AssetKey(upstream))
            if event is not None and event.timestamp >= started:
                return False
        return self._outputs_exist(run.run_id)

    def run(self) -> list[StageReport]:
        fingerprint = tables_fingerprint(self.data_root) if self.data_root else None
        if fingerprint and self.tables_current(fingerprint):
            self.progress("task_tables: up to date (experiment and code unchanged since they were built)")
            reports = [StageReport("task_tables", total=1, skipped=1)]
        else:
            _load_worker()  # loads the code location here: an invalid experiment config fails now
            if self.workers > 1:
                self._start_pool()  # the workers load it too, while the task tables build
            reports = [self.run_single("task_tables", {TABLES_FINGERPRINT_TAG: fingerprint} if fingerprint else None)]
            if reports[-1].failures:
                return reports
        generation_keys = self._table("generation_tasks")["generation_task_id"].tolist()
        generation_order = self.instance.get_dynamic_partitions("generation_tasks")
        reports.append(
            self.run_partitions(
                "generation",
                generation_keys,
                self.materialized("generation_response"),
                lambda todo, size: key_batches(generation_order, todo, size),
            )
        )

        generated = self.materialized("generation_response")
        pairs = self._table("evaluation_tasks")
        pair_keys = valid_pair_keys(pairs, generation_task=generated)
        waiting = len(pairs) - len(pair_keys)
        if waiting:
            self.progress(f"evaluation: {waiting} pair(s) wait for a generation that is not materialized")

        def pair_batcher(todo: list[str], size: int) -> list[Batch]:
            as_pairs = [(g, e) for e, g in (k.split("|", 1) for k in todo)]
            return pair_batches(generation_order, as_pairs, size)

        reports.append(
            self.run_partitions("evaluation", pair_keys, self.materialized("evaluation_response"), pair_batcher)
        )
        if self.results_current():
            self.progress("results: up to date (nothing they read has changed since they were built)")
            reports.append(StageReport("results", total=1, skipped=1))
        else:
            reports.append(self.run_single("results"))
        return reports


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
