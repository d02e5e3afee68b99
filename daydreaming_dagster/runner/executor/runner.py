"""`daydream run`: the whole experiment on the Dagster instance in DAGSTER_HOME, resumably.

Order: task tables (registers keys) -> every generation partition not yet materialized and every
valid evaluation pair not yet materialized, as one stream: a pair starts as soon as its generation
is materialized (see streaming.py) -> results. Partitions run in batches: each batch is one Dagster
partition-range run over consecutive keys, which records a materialization for every partition in
it (so `dagster dev` shows each one, and each stays re-runnable alone). Batches run on the worker
pool (see pool.py), started before anything else; what a rerun may skip is decided in freshness.py
and changes.py. Partitions another run is materializing are left to it (overlap.py). Generations
the head start is asking (head_start.py) run once their answers are stored."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from ...assets.common import MAX_PARTITIONS_PER_RUN
from ...assets.partitions import evaluation_pairs_partitions, generation_tasks_partitions
from ...compat import BulkActionStatus
from ...experiment.stages import EVALUATION as EVALUATION_STAGE
from ...experiment.stages import STAGES
from ...instance.opening import open_instance
from ...llm.slots import SharedCallSlots, share_call_slots
from ...resources.config import ExperimentConfig
from ...settings import Settings
from ...store.batch_ledger import BatchLedger
from ...store.csv_tables import read_table
from ...store.layout import table_path
from ...store.roots import data_path
from ..reruns.changes import ChangeCheck, StageCheck, change_report
from ..reruns.freshness import (
    TABLES_FINGERPRINT_TAG,
    UNVERIFIED_TAG,
    results_current,
    tables_current,
    tables_fingerprint,
)
from ..reruns.integrity import Unverified
from ..reruns.overlap import IN_PROGRESS, InProgress
from .head_start import HeadStart
from .pool import WorkerPool, default_workers, llm_pool_limit, runs_in_flight, start_pool
from .ranges import Batch
from .schedule import EVALUATION, GENERATION, Schedule
from .streaming import Limits, StageReport, Stream, left_text
from .worker import QUIET, execute, load_worker, partition_run_config, warm_worker

__all__ = ["Runner", "StageReport", "default_workers", "left_text", "print_progress", "start_pool"]

# The assets and partitions of each partitioned stage, to ask which of them other runs are doing.
OVERLAP_ASSETS = {
    "generation": ({"generation_prompt", "generation_response"}, generation_tasks_partitions),
    "evaluation": ({"evaluation_prompt", "evaluation_response"}, evaluation_pairs_partitions),
    # The prompts re-rendered for out-of-date answers that are kept (see changes.py).
    "generation_prompts": ({"generation_prompt"}, generation_tasks_partitions),
    "evaluation_prompts": ({"evaluation_prompt"}, evaluation_pairs_partitions),
}
# How often, and how long, a runner waits for another run that is building an unpartitioned stage.
WAIT_POLL_S = 1.0
STAGE_WAIT_S = 600.0


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
        max_cost_usd: float | None = None,
        offline: bool = False,
        pool: WorkerPool | None = None,
        head_start: HeadStart | None = None,
        instance: dg.DagsterInstance | None = None,
    ):
        self.output_root = data_path(output_root)
        # Given, a rerun skips the task tables when the experiment and code are unchanged.
        self.data_root = data_path(data_root) if data_root else None
        self.concurrency = max(1, concurrency)
        self.workers = max(1, workers or default_workers(self.concurrency, offline))
        self.parallel_calls = self.concurrency
        self.max_batch = max(1, max_batch or MAX_PARTITIONS_PER_RUN)
        self.replace_changed = replace_changed
        # Overrides the experiment's max_cost_usd in every response step this runner starts.
        self.max_cost_usd = max_cost_usd
        self.progress = progress
        self.offline = offline
        self.instance = instance or open_instance()
        self._pool = pool if pool is not None or self.workers == 1 else start_pool(self.workers, self.concurrency, offline)
        self._threads: ThreadPoolExecutor | None = None
        self._warm = threading.Thread(target=_warm_up, name="warm-up", daemon=True)
        self._warming: list = []  # the workers' warm_worker tasks
        self.head_start = head_start  # the generation calls made before this runner started (head_start.py)
        # Partitions asked without an answer in this command (by the head start or by a failed batch),
        # keyed by partition: ResponseConfig.asked_earlier's entries, so no request is asked twice.
        self.asked_earlier: dict[str, dict] = head_start.asked_earlier if head_start else {}

    def close(self) -> None:
        """Wait for the runs in flight (their answers are paid for: they store them), then stop."""
        if self._pool is not None:
            # Workers still opening the instance (a run that found nothing to do) store nothing.
            if running := self._pool.in_flight() - sum(not f.done() for f in self._warming):
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

    def _config(self) -> ExperimentConfig:
        data_root = self.data_root or Settings.from_env().data_root
        return ExperimentConfig.for_experiment(str(data_root), str(self.output_root))

    def materialized(self, asset_name: str) -> set[str]:
        return self.instance.get_materialized_partitions(dg.AssetKey(asset_name))

    def run_single(self, job_name: str, tags: dict | None = None, current: Callable[[], bool] | None = None) -> StageReport:
        """Run an unpartitioned job; while another run of it is in progress, wait for that one and
        then run only if `current()` says its outcome is not already what this run would build."""
        report = StageReport(job_name, total=1)
        started = time.monotonic()
        outcome = execute(job_name, None, QUIET, tags)
        while outcome.left:
            other = outcome.left[job_name]
            self.progress(f"{job_name}: waiting for {other}, which is building it")
            # Judge freshness only once the other run has finished: a run that finishes between
            # a stale "not current" and our next try would be built twice.
            waited = time.monotonic()
            while self._in_progress(other):
                if time.monotonic() - waited > STAGE_WAIT_S:
                    report.failures[job_name] = (
                        f"{other} has been building {job_name} for over {STAGE_WAIT_S / 60:.0f} min; if it is "
                        "no longer running (its process was killed), terminate it on the Dagster UI's Runs page "
                        "and run again."
                    )
                    report.seconds = time.monotonic() - started
                    return report
                time.sleep(WAIT_POLL_S)
            if current is not None and current():
                self.progress(f"{job_name}: up to date (built by {other})")
                report.skipped, report.seconds = 1, time.monotonic() - started
                return report
            outcome = execute(job_name, None, QUIET, tags)
        report.seconds = time.monotonic() - started
        if outcome.success:
            report.succeeded = 1
        else:
            report.failures[job_name] = outcome.error or ""
            report.invalid = outcome.error if outcome.invalid else None
        return report

    def _in_progress(self, other: str) -> bool:
        """Whether the run or backfill named "run <id>" / "backfill <id>" is still in progress."""
        kind, _, ident = other.partition(" ")
        if kind == "backfill":
            backfill = self.instance.get_backfill(ident)
            return backfill is not None and backfill.status == BulkActionStatus.REQUESTED
        run = self.instance.get_run_by_id(ident)
        return run is not None and run.status in IN_PROGRESS

    def _todo(self, job_name: str, keys: list[str], done: set[str], changed: set[str] = frozenset()) -> tuple[list[str], StageReport]:
        """The keys of a stage to run, and the stage's report so far: every key not in `done` and
        not left to another run that is materializing it. Keys in `changed` hold an answer to
        another request (see changes.py): skipped, or with --replace-changed run again, whether
        materialized or not; no other materialized key is run."""
        done = (set(done) - changed) if self.replace_changed else set(done) | changed
        todo = [k for k in keys if k not in done]
        report = StageReport(job_name, total=len(keys), skipped=len(keys) - len(todo))
        kept = 0 if self.replace_changed else sum(1 for k in keys if k in changed)
        aside = f", {kept} out of date (kept as they are)" if kept else ""
        busy = InProgress(self.instance).busy(*OVERLAP_ASSETS[job_name]) if todo else {}
        held = BatchLedger(self.output_root).held_keys(STAGES[job_name].response) if job_name in STAGES else {}
        busy = {**held, **busy} if todo else busy  # open provider batches hold theirs
        left = {k: str(busy[k]) for k in todo if k in busy}
        todo = [k for k in todo if k not in left]
        report.left = len(left)
        self.progress(
            f"{job_name}: {len(todo)} to run, {report.skipped - kept} already materialized{aside}{left_text(left)}"
        )
        return todo, report

    def _limits(self, calls: bool = True) -> Limits:
        if self.offline or not calls:
            # Offline a run is CPU work only: one per worker at a time, as large as allowed.
            return Limits(runs=self.workers, max_batch=self.max_batch)
        runs = runs_in_flight(self.concurrency)
        if pool_limit := llm_pool_limit(self.instance):
            runs = max(1, min(runs, pool_limit))
        return Limits(runs=runs, max_batch=self.max_batch, queued=self.concurrency if runs > 1 else None)

    def _submitter(self, limits: Limits, run_of: Callable[[str, Batch], tuple]) -> tuple[Callable[[str, Batch], Future], SharedCallSlots | None]:
        """How the stream starts a batch (`run_of`: `execute`'s arguments for the stream's job and
        batch), and the call slots it watches."""
        if self._pool is not None:
            return (lambda job, batch: self._pool.submit(execute, *run_of(job, batch))), self._pool.initargs[0]
        # One worker: the runs execute in threads of this process (one at a time when `runs` is 1).
        if self._threads is None:
            self._threads = ThreadPoolExecutor(limits.runs, thread_name_prefix="run")
        slots = None
        if limits.queued is not None:
            slots = SharedCallSlots(multiprocessing.get_context(), self.concurrency)
            share_call_slots(slots)
        return (lambda job, batch: self._threads.submit(execute, *run_of(job, batch))), slots

    def stream(self, order: list[str], generations: tuple[list[str], StageReport] | None,
               pairs: tuple[list[str], StageReport] | None, deferred: dict[str, Future] | None = None) -> None:
        """Run `generations` and `pairs` (keys to run, and their stage's report) as one stream; a
        pair waits for its generation when that runs in this stream, or is not materialized. A
        generation in `deferred` (key -> future) runs once its future is done."""
        gen_keys, gen_report = generations or ([], None)
        pair_keys, pair_report = pairs or ([], None)
        wanted = set(gen_keys)
        deferred = {k: f for k, f in (deferred or {}).items() if k in wanted}
        schedule = Schedule(order, [k for k in gen_keys if k not in deferred], [_pair(k) for k in pair_keys], self.materialized("generation_response"))
        limits = self._limits()
        asked = self.asked_earlier

        def run_of(job: str, batch: Batch) -> tuple[str, Batch, dict]:
            # A partition asked without an answer earlier in this command (by the head start, or in a
            # batch that failed and is run again one by one) fails in its run without a second call.
            earlier = {k: asked[k] for k in batch.keys if k in asked}
            return job, batch, partition_run_config(job, self.replace_changed, self.parallel_calls, self.max_cost_usd, earlier)

        submit, slots = self._submitter(limits, run_of)
        reports = {job: (r, len(k)) for job, k, r in ((GENERATION, gen_keys, gen_report), (EVALUATION, pair_keys, pair_report)) if r}
        refused = (lambda: self.head_start.stopped) if self.head_start else None
        stream = Stream(schedule, reports, submit, limits, self.progress, slots, self._warm_once, deferred, refused, asked)
        if not gen_keys:
            stream.generations_finished()
        stream.run()

    def run_partitions(self, job_name: str, keys: list[str], done: set[str]) -> StageReport:
        """Run one stage over every key not in `done` (and not held by another run), as a stream of
        its own: batch mode's rounds, whose answers are stored already, so the runs reuse them."""
        todo, report = self._todo(job_name, keys, done)
        if todo:
            order = self.instance.get_dynamic_partitions("generation_tasks")
            if job_name == GENERATION:
                self.stream(order, (todo, report), None)
            else:
                self.stream(order, None, (todo, report))
        return report

    def refresh_prompts(self, job_name: str, asset_name: str, check: StageCheck, runnable: list[str], order: list[str]) -> list[StageReport]:
        """Render again the prompts of out-of-date partitions that are left as they are, so that
        Dagster shows their answers stale (the prompt's data version is its digest): no LLM call."""
        stale = set(check.prompts_to_refresh(self.output_root, asset_name))
        todo, report = self._todo(job_name, [k for k in runnable if k in stale], set())
        if not todo and not report.left:
            return []
        stage = GENERATION if job_name == "generation_prompts" else EVALUATION
        generations, pairs = (todo, []) if stage == GENERATION else ([], [_pair(k) for k in todo])
        schedule = Schedule(order, generations, pairs, order)
        limits = self._limits(calls=False)
        submit, _ = self._submitter(limits, lambda job, batch: (job_name, batch, QUIET))
        Stream(schedule, {stage: (report, len(todo))}, submit, limits, self.progress).run()
        return [report]

    def _warm_once(self) -> None:
        if self._warm.ident is None:
            self._warm.start()

    def run(self) -> list[StageReport]:
        if self._pool is not None:
            self._warming = self._pool.for_each_worker(warm_worker)  # the instance exists now: the workers may open it
        fingerprint = tables_fingerprint(self.data_root) if self.data_root else None
        rebuilt = not (fingerprint and tables_current(self.instance, fingerprint))
        if not rebuilt:
            self.progress("task_tables: up to date (experiment and code unchanged since they were built)")
            reports = [StageReport("task_tables", total=1, skipped=1)]
        else:
            load_worker()  # loads the code location here: an invalid experiment config fails now
            reports = [
                self.run_single(
                    "task_tables",
                    {TABLES_FINGERPRINT_TAG: fingerprint} if fingerprint else None,
                    (lambda: tables_current(self.instance, fingerprint)) if fingerprint else None,
                )
            ]
            if reports[-1].failures:
                return reports
        table, generation_keys = self._table("evaluation_tasks"), self._table("generation_tasks")["generation_task_id"].tolist()
        pair_keys = EVALUATION_STAGE.select(table)
        unverified = Unverified.scan(self.output_root, generation_keys, pair_keys)  # before anything is decided
        for line in unverified.report(self.replace_changed):
            self.progress(line)
        # Answers can have gone out of date only if the experiment, the code or an answer changed.
        checking = rebuilt or self.replace_changed or bool(unverified) or not results_current(self.instance)
        checker = ChangeCheck(self.output_root, self._config(), self.instance) if checking else None
        generation_changes = checker.generations() if checker else StageCheck("generation")
        evaluation_changes = checker.evaluations() if checker else StageCheck("evaluation")
        for line in change_report(generation_changes, evaluation_changes, table, self.replace_changed):
            self.progress(line)
        order = self.instance.get_dynamic_partitions("generation_tasks")
        # No judge prompt is rendered from a generation answer that does not match its sidecar.
        kept_pairs = set() if self.replace_changed else unverified.pairs_judging(table)
        generations = self._todo(GENERATION, generation_keys, self.materialized("generation_response"), generation_changes.keys())
        generation = generations[1]
        reports.append(generation)
        together = not (self.replace_changed and generation_changes.keys())
        if not together:
            # Which pairs the re-asked generations make out of date is known once their answers are stored.
            self.stream(order, generations, None)
            if generation.succeeded:
                evaluation_changes = checker.evaluations()
        if not self.replace_changed:
            reports += self.refresh_prompts("generation_prompts", "generation_prompt", generation_changes, generation_keys, order)
        pairs = self._todo(EVALUATION, pair_keys, self.materialized("evaluation_response"), evaluation_changes.keys() | kept_pairs)
        if generation.cap_reached or generation.stopped:
            self.progress(f"evaluation: not started: {'the spending cap was reached' if generation.cap_reached else generation.stopped}")
        else:
            # The generations the head start is still answering run once their answers are stored.
            deferred = self.head_start.take_over(generations[0], self.progress) if together and self.head_start else None
            self.stream(order, generations if together else None, pairs, deferred)
            reports.append(pairs[1])
            if not self.replace_changed and not generation.cap_reached and not pairs[1].stopped:
                reports += self.refresh_prompts("evaluation_prompts", "evaluation_prompt", evaluation_changes, pair_keys, order)
        if self._pool is not None:
            self._pool.stop()  # the workers exit while the results build
        if unverified and self.replace_changed:  # re-asked: which answers still do not match?
            unverified = Unverified.scan(self.output_root, generation_keys, pair_keys)
        left_out = unverified.fingerprint()  # the results record which answers they left out
        if any(r.stopped for r in reports):
            self.progress("results: not built: the run was stopped")  # (a full disk, or an API that refuses every call)
        elif results_current(self.instance, left_out):
            self.progress("results: up to date (nothing they read has changed since they were built)")
            reports.append(StageReport("results", total=1, skipped=1))
        else:
            if self._warm.ident is not None:
                self._warm.join()
            reports.append(self.run_single("results", {UNVERIFIED_TAG: left_out}, lambda: results_current(self.instance, left_out)))
        return reports


def _pair(key: str) -> tuple[str, str]:
    """(generation, method) of an evaluation pair's key, as the schedule takes pairs."""
    parts = EVALUATION_STAGE.parts(key)
    return parts["generation_tasks"], parts["evaluation_tasks"]


def _warm_up() -> None:
    """Load the code location, matplotlib and the statistics modules in this process while the
    stream runs, so the results build at once when it ends."""
    from ...analysis import agreement, figures

    load_worker()
    figures.warm_up()
    agreement.warm_up()


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
