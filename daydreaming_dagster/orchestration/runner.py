"""`daydream run`: the whole experiment on the Dagster instance in DAGSTER_HOME, resumably.

Order: task tables (registers keys) -> every generation partition not yet materialized and every
valid evaluation pair not yet materialized, as one stream: a pair starts as soon as its generation
is materialized (see streaming.py) -> results. Partitions run in batches: each batch is one Dagster
partition-range run over consecutive keys, which records a materialization for every partition in
it (so `dagster dev` shows each one, and each stays re-runnable alone). Batches run on the worker
pool (see pool.py), started before anything else; what a rerun may skip is decided in freshness.py."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from ..assets.common import MAX_PARTITIONS_PER_RUN
from ..assets.responding import LLM_POOL
from ..experiment.pairs import valid_pair_keys
from ..llm.slots import SharedCallSlots, share_call_slots
from ..store.layout import table_path
from ..store.tables import read_table
from .batches import Batch
from .freshness import TABLES_FINGERPRINT_TAG, results_current, tables_current, tables_fingerprint
from .pool import WorkerPool, default_workers, runs_in_flight, start_pool
from .schedule import EVALUATION, GENERATION, Schedule
from .streaming import Limits, StageReport, Stream
from .worker import QUIET, execute, load_worker, partition_run_config, warm_worker

__all__ = ["Runner", "StageReport", "default_workers", "print_progress", "start_pool"]


def llm_pool_limit(instance: dg.DagsterInstance) -> int | None:
    """How many steps of the LLM pool may run at once across all runs (None: no limit). A response
    step over this limit would wait for a slot, polling once a second or less often."""
    config = instance.get_concurrency_config().pool_config
    if config.pool_granularity is not None and config.pool_granularity.value == "run":
        return None
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == LLM_POOL:
            return pool.limit
    return config.default_pool_limit


class Runner:
    """Executes the stages; `progress` receives one line per update.

    `concurrency` bounds the LLM calls in flight. Partitions run in batches (partition-range runs of
    at most `max_batch` partitions), several at once on `workers` processes (one: in this process);
    every run may start `concurrency` calls, and call slots the workers share keep the total within
    it. `pool` is the worker pool when the caller started it early (see `start_pool`)."""

    def __init__(
        self,
        output_root: Path,
        concurrency: int,
        replace_changed: bool,
        progress: Callable[[str], None],
        workers: int | None = None,
        max_batch: int | None = None,
        data_root: Path | None = None,
        offline: bool = False,
        pool: WorkerPool | None = None,
    ):
        self.output_root = Path(output_root)
        # Given, a rerun skips the task tables when the experiment and code are unchanged.
        self.data_root = Path(data_root) if data_root else None
        self.concurrency = max(1, concurrency)
        self.workers = max(1, workers or default_workers(self.concurrency, offline))
        self.parallel_calls = self.concurrency
        self.max_batch = max(1, max_batch or MAX_PARTITIONS_PER_RUN)
        self.replace_changed = replace_changed
        self.progress = progress
        self.offline = offline
        self.instance = dg.DagsterInstance.get()
        self._pool = pool if pool is not None or self.workers == 1 else start_pool(self.workers, self.concurrency, offline)
        self._threads: ThreadPoolExecutor | None = None
        self._warm = threading.Thread(target=_warm_up, name="warm-up", daemon=True)

    def close(self) -> None:
        """Wait for the runs in flight (their answers are paid for: they store them), then stop."""
        if self._pool is not None:
            if running := self._pool.in_flight():
                self.progress(f"waiting for the {running} run(s) in flight to store their answers (Ctrl-C again stops them)")
            try:
                self._pool.close()
            except KeyboardInterrupt:
                self._pool.close(wait=False)
        if self._threads is not None:
            self._threads.shutdown()
        share_call_slots(None)

    def _table(self, name: str):
        return read_table(table_path(self.output_root, name))

    def materialized(self, asset_name: str) -> set[str]:
        return self.instance.get_materialized_partitions(dg.AssetKey(asset_name))

    def run_single(self, job_name: str, tags: dict | None = None) -> StageReport:
        report = StageReport(job_name, total=1)
        started = time.monotonic()
        outcome = execute(job_name, None, QUIET, tags)
        report.seconds = time.monotonic() - started
        if outcome.success:
            report.succeeded = 1
        else:
            report.failures[job_name] = outcome.error or ""
        return report

    def _todo(self, job_name: str, keys: list[str], done: set[str]) -> tuple[list[str], StageReport]:
        """The keys of a stage to run: every key not in `done`, and the stage's report so far."""
        if self.replace_changed:
            # Materialized partitions may hold responses to a changed prompt; running them all is
            # cheap because an unchanged stored response is reused without an LLM call.
            done = set()
        todo = [k for k in keys if k not in done]
        report = StageReport(job_name, total=len(keys), skipped=len(keys) - len(todo))
        self.progress(f"{job_name}: {len(todo)} to run, {report.skipped} already materialized")
        return todo, report

    def _limits(self) -> Limits:
        if self.offline:
            # Offline a run is CPU work only: one per worker at a time, as large as allowed.
            return Limits(runs=self.workers, max_batch=self.max_batch)
        runs = runs_in_flight(self.concurrency)
        if pool_limit := llm_pool_limit(self.instance):
            runs = max(1, min(runs, pool_limit))
        return Limits(runs=runs, max_batch=self.max_batch, queued=self.concurrency if runs > 1 else None)

    def _submitter(self, limits: Limits) -> tuple[Callable[[str, Batch], Future], SharedCallSlots | None]:
        configs = {job: partition_run_config(job, self.replace_changed, self.parallel_calls) for job in (GENERATION, EVALUATION)}
        if self._pool is not None:
            return (lambda job, batch: self._pool.submit(execute, job, batch, configs[job])), self._pool.initargs[0]
        # One worker: the runs execute in threads of this process (one at a time when `runs` is 1).
        self._threads = ThreadPoolExecutor(limits.runs, thread_name_prefix="run")
        slots = None
        if limits.queued is not None:
            slots = SharedCallSlots(multiprocessing.get_context(), self.concurrency)
            share_call_slots(slots)
        return (lambda job, batch: self._threads.submit(execute, job, batch, configs[job])), slots

    def stream(self, generation_order: list[str]) -> list[StageReport]:
        """Every generation and evaluation partition to run, as one stream; their two reports."""
        generations, generation_report = self._todo(
            GENERATION, self._table("generation_tasks")["generation_task_id"].tolist(), self.materialized("generation_response")
        )
        generated = self.materialized("generation_response")
        coming = generated | set(generations)
        pair_keys = [k for k in valid_pair_keys(self._table("evaluation_tasks")) if k.split("|", 1)[1] in coming]
        pairs, evaluation_report = self._todo(EVALUATION, pair_keys, self.materialized("evaluation_response"))
        schedule = Schedule(generation_order, generations, [(k.split("|", 1)[1], k.split("|", 1)[0]) for k in pairs], generated)
        limits = self._limits()
        submit, slots = self._submitter(limits)
        reports = {GENERATION: (generation_report, len(generations)), EVALUATION: (evaluation_report, len(pairs))}
        stream = Stream(schedule, reports, submit, limits, self.progress, slots, on_first_outcome=self._warm.start)
        if not generations:
            stream.generations_finished()
        stream.run()
        return [generation_report, evaluation_report]

    def run(self) -> list[StageReport]:
        if self._pool is not None:
            self._pool.for_each_worker(warm_worker)  # the instance exists now: the workers may open it
        fingerprint = tables_fingerprint(self.data_root) if self.data_root else None
        if fingerprint and tables_current(self.instance, fingerprint):
            self.progress("task_tables: up to date (experiment and code unchanged since they were built)")
            reports = [StageReport("task_tables", total=1, skipped=1)]
        else:
            load_worker()  # loads the code location here: an invalid experiment config fails now
            reports = [self.run_single("task_tables", {TABLES_FINGERPRINT_TAG: fingerprint} if fingerprint else None)]
            if reports[-1].failures:
                return reports
        reports += self.stream(self.instance.get_dynamic_partitions("generation_tasks"))
        if self._pool is not None:
            self._pool.stop()  # the workers exit while the results build
        if results_current(self.instance):
            self.progress("results: up to date (nothing they read has changed since they were built)")
            reports.append(StageReport("results", total=1, skipped=1))
        else:
            if self._warm.ident is not None:
                self._warm.join()
            reports.append(self.run_single("results"))
        return reports


def _warm_up() -> None:
    """Load the code location, matplotlib and the statistics modules in this process while the
    stream runs, so the results build at once when it ends."""
    from ..analysis import agreement, figures

    load_worker()
    figures.warm_up()
    agreement.warm_up()


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
