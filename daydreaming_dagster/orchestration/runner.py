"""`daydream run`: the whole experiment on the Dagster instance in DAGSTER_HOME, resumably.

Order: task tables (registers keys) -> every generation partition not yet materialized -> every
valid evaluation pair not yet materialized whose generation exists -> results. Partitions run in
batches: each batch is one Dagster partition-range run over consecutive keys, which records a
materialization for every partition in it (so `dagster dev` shows each one, and each stays
re-runnable alone). Batches run on the worker pool (see worker.py); what a rerun may skip is
decided in freshness.py. Partitions another run is materializing are left to it (overlap.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ..assets.common import MAX_PARTITIONS_PER_RUN
from ..assets.partitions import evaluation_pairs_partitions, generation_tasks_partitions
from ..compat import BulkActionStatus
from ..experiment.pairs import valid_pair_keys
from ..resources.config import ExperimentConfig
from ..settings import Settings
from ..store.layout import table_path
from ..store.tables import read_table
from .batch_run import held_by_batches
from .batches import Batch, batch_size, key_batches, pair_batches
from .changes import ChangeCheck, StageCheck, change_report
from .freshness import TABLES_FINGERPRINT_TAG, results_current, tables_current, tables_fingerprint
from .instance_setup import open_instance
from .overlap import IN_PROGRESS, InProgress
from .worker import QUIET, BatchOutcome, WorkerPool, default_workers, execute, load_worker, partition_run_config

# The assets and partitions of each partitioned stage, to ask which of them other runs are doing.
STAGES = {
    "generation": ({"generation_prompt", "generation_response"}, generation_tasks_partitions),
    "evaluation": ({"evaluation_prompt", "evaluation_response"}, evaluation_pairs_partitions),
    # The prompts re-rendered for out-of-date answers that are kept (see changes.py).
    "generation_prompts": ({"generation_prompt"}, generation_tasks_partitions),
    "evaluation_prompts": ({"evaluation_prompt"}, evaluation_pairs_partitions),
}
# How often, and how long, a runner waits for another run that is building an unpartitioned stage.
WAIT_POLL_S = 1.0
STAGE_WAIT_S = 600.0


@dataclass
class StageReport:
    name: str
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cap_reached: bool = False  # the spending cap stopped the stage; what it did not run is left undone
    left: int = 0  # partitions left to another run that was materializing them

    def summary(self) -> str:
        left = f", {self.left} left to another run" if self.left else ""
        return (
            f"{self.name}: {self.succeeded} ran, {self.skipped} skipped{left}, {len(self.failures)} failed "
            f"in {self.seconds:.1f} s"
        )


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
        max_cost_usd: float | None = None,
    ):
        self.output_root = Path(output_root)
        # Given, a rerun skips the task tables when the experiment and code are unchanged.
        self.data_root = Path(data_root) if data_root else None
        self.concurrency = max(1, concurrency)
        self.workers = max(1, workers or default_workers(self.concurrency))
        self.parallel_calls = self.concurrency
        self.max_batch = max(1, max_batch or MAX_PARTITIONS_PER_RUN)
        self.replace_changed = replace_changed
        # Overrides the experiment's max_cost_usd in every response step this runner starts.
        self.max_cost_usd = max_cost_usd
        self.progress = progress
        self.instance = open_instance()
        self._pool = WorkerPool(self.workers, self.concurrency)

    def close(self) -> None:
        self._pool.close()

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
        return report

    def _in_progress(self, other: str) -> bool:
        """Whether the run or backfill named "run <id>" / "backfill <id>" is still in progress."""
        kind, _, ident = other.partition(" ")
        if kind == "backfill":
            backfill = self.instance.get_backfill(ident)
            return backfill is not None and backfill.status == BulkActionStatus.REQUESTED
        run = self.instance.get_run_by_id(ident)
        return run is not None and run.status in IN_PROGRESS

    def run_partitions(
        self,
        job_name: str,
        keys: list[str],
        done: set[str],
        batcher: Callable[[list[str], int], list[Batch]],
        changed: set[str] = frozenset(),
        run_config: dict | None = None,
    ) -> StageReport:
        """Run every key not in `done`, in the batches `batcher(todo, size)` forms. Keys in `changed`
        hold an answer to another request (see changes.py): skipped, or with --replace-changed run
        again, whether materialized or not; no other materialized key is run."""
        done = (set(done) - changed) if self.replace_changed else set(done) | changed
        todo = [k for k in keys if k not in done]
        report = StageReport(job_name, total=len(keys), skipped=len(keys) - len(todo))
        kept = 0 if self.replace_changed else sum(1 for k in keys if k in changed)
        aside = f", {kept} out of date (kept as they are)" if kept else ""
        busy = InProgress(self.instance).busy(*STAGES[job_name]) if todo else {}
        busy = {**held_by_batches(self.output_root, job_name), **busy} if todo else busy  # open provider batches
        left = {k: str(busy[k]) for k in todo if k in busy}
        todo = [k for k in todo if k not in left]
        report.left = len(left)
        self.progress(
            f"{job_name}: {len(todo)} to run, {report.skipped - kept} already materialized{aside}{left_text(left)}"
        )
        if not todo:
            return report
        batches = batcher(todo, batch_size(len(todo), self.workers, self.max_batch))
        run_config = run_config or partition_run_config(
            job_name, self.replace_changed, self.parallel_calls, self.max_cost_usd
        )
        started, finished, step = time.monotonic(), 0, max(1, len(todo) // 20)
        for outcome in self._outcomes(job_name, batches, run_config):
            if outcome.left:
                report.left += len(outcome.left)
                self.progress(f"{job_name}: a batch found{left_text(outcome.left)}")
            if outcome.cap_reached:
                report.cap_reached = True
                self.progress(f"{job_name}: stopped: {outcome.error}")
                continue
            if outcome.success:
                report.succeeded += len(outcome.keys)
            else:
                report.failures[outcome.keys[0]] = outcome.error or ""
                self.progress(f"{job_name}: FAILED {outcome.keys[0]}: {outcome.error}")
            before, finished = finished, finished + len(outcome.keys) + len(outcome.left)
            if finished == len(todo) or finished // step > before // step:
                rate = finished / max(time.monotonic() - started, 1e-9)
                self.progress(f"{job_name}: {finished}/{len(todo)} done ({len(report.failures)} failed, {rate:.1f}/s)")
        report.seconds = time.monotonic() - started
        return report

    def _outcomes(self, job_name: str, batches: list[Batch], run_config: dict) -> Iterable[BatchOutcome]:
        """Every partition's outcome; a batch that fails is run again one partition per run, so each
        partition that can succeed is materialized and each failure is recorded on its own partition
        (answers the batch already paid for are stored, and those runs reuse them). A batch the
        spending cap stopped is not: nothing more may start."""
        for outcome in self._run_batches(job_name, batches, run_config):
            if outcome.success or len(outcome.keys) <= 1 or outcome.cap_reached:
                yield outcome
                continue
            self.progress(
                f"{job_name}: a batch of {len(outcome.keys)} failed ({outcome.error}); running its partitions one by one"
            )
            if outcome.left:  # those were not run here, and are not run again
                yield BatchOutcome((), True, left=outcome.left)
            yield from self._run_batches(job_name, [Batch((k,)) for k in outcome.keys], run_config)

    def _run_batches(self, job_name: str, batches: list[Batch], run_config: dict) -> Iterable[BatchOutcome]:
        """Every batch's outcome; once the spending cap refused a call, no batch that has not
        started yet starts (those running finish, within the cap)."""
        if self.workers == 1 or len(batches) == 1:
            for batch in batches:
                outcome = execute(job_name, batch, run_config)
                yield outcome
                if outcome.cap_reached:
                    return
            return
        futures = [self._pool.submit(job_name, batch, run_config) for batch in batches]
        for future in as_completed(futures):
            if future.cancelled():
                continue
            outcome = future.result()
            if outcome.cap_reached:
                for waiting in futures:
                    waiting.cancel()
            yield outcome

    def refresh_prompts(
        self, job_name: str, asset_name: str, check: StageCheck, batcher, runnable: list[str]
    ) -> list[StageReport]:
        """Render again the prompts of out-of-date partitions that are left as they are, so that
        Dagster shows their answers stale (the prompt's data version is its digest): no LLM call."""
        stale = set(check.prompts_to_refresh(self.output_root, asset_name))
        keys = [k for k in runnable if k in stale]
        return [self.run_partitions(job_name, keys, set(), batcher, run_config=QUIET)] if keys else []

    def run(self) -> list[StageReport]:
        fingerprint = tables_fingerprint(self.data_root) if self.data_root else None
        rebuilt = not (fingerprint and tables_current(self.instance, fingerprint))
        # Answers can have gone out of date only if the experiment, the code or an answer changed.
        checking = rebuilt or self.replace_changed or not results_current(self.instance)
        if not rebuilt:
            self.progress("task_tables: up to date (experiment and code unchanged since they were built)")
            reports = [StageReport("task_tables", total=1, skipped=1)]
        else:
            load_worker()  # loads the code location here: an invalid experiment config fails now
            if self.workers > 1:
                self._pool.start()  # the workers load it too, while the task tables build
            reports = [
                self.run_single(
                    "task_tables",
                    {TABLES_FINGERPRINT_TAG: fingerprint} if fingerprint else None,
                    (lambda: tables_current(self.instance, fingerprint)) if fingerprint else None,
                )
            ]
            if reports[-1].failures:
                return reports
        checker = ChangeCheck(self.output_root, self._config(), self.instance) if checking else None
        generation_changes = checker.generations() if checker else StageCheck("generation")
        evaluation_changes = checker.evaluations() if checker else StageCheck("evaluation")
        pairs = self._table("evaluation_tasks")
        for line in change_report(generation_changes, evaluation_changes, pairs, self.replace_changed):
            self.progress(line)
        generation_keys = self._table("generation_tasks")["generation_task_id"].tolist()
        generation_order = self.instance.get_dynamic_partitions("generation_tasks")

        def generation_batcher(todo: list[str], size: int) -> list[Batch]:
            return key_batches(generation_order, todo, size)

        generation = self.run_partitions(
            "generation",
            generation_keys,
            self.materialized("generation_response"),
            generation_batcher,
            generation_changes.keys(),
        )
        reports.append(generation)
        if not self.replace_changed:
            reports += self.refresh_prompts(
                "generation_prompts", "generation_prompt", generation_changes, generation_batcher, generation_keys
            )
        elif checker and generation.succeeded:
            evaluation_changes = checker.evaluations()  # re-asked generations make their pairs out of date

        generated = self.materialized("generation_response")
        pair_keys = valid_pair_keys(pairs, generation_task=generated)
        waiting = len(pairs) - len(pair_keys)
        if waiting:
            self.progress(f"evaluation: {waiting} pair(s) wait for a generation that is not materialized")

        def pair_batcher(todo: list[str], size: int) -> list[Batch]:
            as_pairs = [(g, e) for e, g in (k.split("|", 1) for k in todo)]
            return pair_batches(generation_order, as_pairs, size)

        if generation.cap_reached:
            self.progress("evaluation: not started: the spending cap was reached")
        else:
            reports.append(
                self.run_partitions(
                    "evaluation",
                    pair_keys,
                    self.materialized("evaluation_response"),
                    pair_batcher,
                    evaluation_changes.keys(),
                )
            )
            if not self.replace_changed:
                reports += self.refresh_prompts(
                    "evaluation_prompts", "evaluation_prompt", evaluation_changes, pair_batcher, pair_keys
                )
        if results_current(self.instance):
            self.progress("results: up to date (nothing they read has changed since they were built)")
            reports.append(StageReport("results", total=1, skipped=1))
        else:
            reports.append(self.run_single("results", current=lambda: results_current(self.instance)))
        return reports


def left_text(left: dict[str, str]) -> str:
    """", N left to another run (run <id> and M more)" for a progress line; "" when none."""
    if not left:
        return ""
    others = sorted(set(left.values()))
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return f", {len(left)} left to another run ({others[0]}{more})"


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
