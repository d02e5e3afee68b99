"""The generation and evaluation stages of `daydream run` as one stream of batches.

A batch (one Dagster partition-range run) starts whenever a run may start and work is ready: the
generations first, then each generation's pairs as soon as its batch is materialized, so judges are
called while other generations are still being asked. Against an API the stream keeps a few calls
more than the call slots queued (`queued`), so a slot that frees up is taken at once, and never
holds more than that: a batch waiting on one slow call keeps only its own slot, while other runs
(up to `runs`) keep the rest busy, and the batches get smaller as the ready work runs out. A batch
that fails is run again one partition per run, so each failure is recorded on its own partition
and the answers the batch already stored are reused."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from .batches import Batch, batch_size
from .schedule import EVALUATION, GENERATION, Schedule

# How often the stream looks at the queued calls while no run ends (seconds).
POLL_S = 0.05


@dataclass
class StageReport:
    name: str
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Limits:
    """`runs` in flight at most, of at most `max_batch` partitions; with `queued` set, a run starts
    only while fewer than `queued` of the partitions handed out wait for their call (see llm/slots.py)."""

    runs: int
    max_batch: int
    queued: int | None = None


@dataclass
class _Stage:
    report: StageReport
    todo: int
    finished: int = 0
    started: float | None = None
    last: float | None = None


class Stream:
    """Runs the schedule's batches through `submit(job, batch) -> Future[BatchOutcome]`."""

    def __init__(
        self,
        schedule: Schedule,
        reports: dict[str, tuple[StageReport, int]],
        submit: Callable[[str, Batch], Future],
        limits: Limits,
        progress: Callable[[str], None],
        call_slots=None,
        on_first_outcome: Callable[[], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self.stages = {job: _Stage(report, todo) for job, (report, todo) in reports.items()}
        self.submit = submit
        self.limits = limits
        self.progress = progress
        self.call_slots = call_slots if limits.queued is not None else None
        self.on_first_outcome = on_first_outcome
        self._in_flight: dict[Future, tuple[str, Batch]] = {}

    def run(self) -> None:
        while True:
            self._start_ready()
            if not self._in_flight:
                return
            timeout = POLL_S if self.call_slots is not None else None
            done, _ = wait(self._in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                self._settle(future, *self._in_flight.pop(future))

    def _start_ready(self) -> None:
        while len(self._in_flight) < self.limits.runs:
            if self.call_slots is not None and self.call_slots.unstarted >= self.limits.queued:
                return
            free = self.limits.runs - len(self._in_flight)
            item = self.schedule.next_batch(lambda ready: batch_size(ready, free, self.limits.max_batch))
            if item is None:
                return
            job, batch = item
            stage = self.stages[job]
            stage.started = stage.started or time.monotonic()
            if self.call_slots is not None:
                self.call_slots.add_unstarted(len(batch.keys))
            self._in_flight[self.submit(job, batch)] = (job, batch)

    def _settle(self, future: Future, job: str, batch: Batch) -> None:
        try:
            outcome = future.result()
            success, error, calls = outcome.success, outcome.error, outcome.calls
        except Exception as exc:  # noqa: BLE001 - a worker that died: the batch failed
            success, error, calls = False, f"{type(exc).__name__}: {exc}", 0
        if self.call_slots is not None:
            self.call_slots.add_unstarted(calls - len(batch.keys))  # the partitions that made no call
        if self.on_first_outcome is not None:
            self.on_first_outcome()
            self.on_first_outcome = None
        stage = self.stages[job]
        if success:
            stage.report.succeeded += len(batch.keys)
            if job == GENERATION:
                self.schedule.generation_done(batch.keys)
        elif len(batch.keys) > 1:
            self.progress(f"{job}: a batch of {len(batch.keys)} failed ({error}); running its partitions one by one")
            self.schedule.retry_singly(job, batch)
            return
        else:
            stage.report.failures[batch.keys[0]] = error or ""
            self.progress(f"{job}: FAILED {batch.keys[0]}: {error}")
        self._count(stage, job, len(batch.keys))

    def _count(self, stage: _Stage, job: str, partitions: int) -> None:
        before, stage.finished = stage.finished, stage.finished + partitions
        stage.last = time.monotonic()
        stage.report.seconds = stage.last - stage.started
        step = max(1, stage.todo // 20)
        if stage.finished == stage.todo or stage.finished // step > before // step:
            rate = stage.finished / max(stage.report.seconds, 1e-9)
            failed = len(stage.report.failures)
            self.progress(f"{job}: {stage.finished}/{stage.todo} done ({failed} failed, {rate:.1f}/s)")
        if job == GENERATION and stage.finished == stage.todo:
            self.generations_finished()

    def generations_finished(self) -> None:
        """Every generation has its outcome: the pairs still waiting will not run in this stream."""
        waiting = self.schedule.waiting_pairs()
        if waiting and EVALUATION in self.stages:
            self.stages[EVALUATION].todo -= waiting
            self.stages[EVALUATION].report.total -= waiting
            self.progress(f"evaluation: {waiting} pair(s) wait for a generation that is not materialized")
