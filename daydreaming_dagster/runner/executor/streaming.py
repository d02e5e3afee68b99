"""The generation and evaluation stages of `daydream run` as one stream of batches.

A batch (one Dagster partition-range run) starts whenever a run may start and work is ready: the
generations first, then each generation's pairs as soon as its batch is materialized, so judges are
called while other generations are still being asked. Against an API the stream keeps a few calls
more than the call slots queued (`queued`), so a slot that frees up is taken at once, and never
holds more than that: a batch waiting on one slow call keeps only its own slot, while other runs
(up to `runs`) keep the rest busy, and the batches get smaller as the ready work runs out. A batch
that fails is run again one partition per run, so each failure is recorded on its own partition
and the answers the batch already stored are reused. Partitions a batch found another run
materializing are left to it (counted, not run again); once the spending cap refused a call no
batch starts, and those in flight finish within the cap."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from .head_start import ASKED
from .ranges import Batch, batch_size
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
    cap_reached: bool = False  # the spending cap stopped the stage; what it did not run is left undone
    left: int = 0  # partitions left to another run that was materializing them
    # Why no call of the command can succeed any more (the API refuses every call, or the disk is
    # full): the sentence that stopped it.
    stopped: str | None = None
    invalid: str | None = None  # the sentence of an invalid experiment a run of the stage failed on

    def summary(self) -> str:
        left = f", {self.left} left to another run" if self.left else ""
        return (
            f"{self.name}: {self.succeeded} ran, {self.skipped} skipped{left}, {len(self.failures)} failed "
            f"in {self.seconds:.1f} s"
        )


def left_text(left: dict[str, str]) -> str:
    """", N left to another run (run <id> and M more)" for a progress line; "" when none."""
    if not left:
        return ""
    others = sorted(set(left.values()))
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return f", {len(left)} left to another run ({others[0]}{more})"


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
        on_generations_done: Callable[[], None] | None = None,
        deferred: dict[str, Future] | None = None,
        stops_run: Callable[[], str | None] | None = None,
        asked: dict[str, dict] | None = None,
    ) -> None:
        self.schedule = schedule
        self.stages = {job: _Stage(report, todo) for job, (report, todo) in reports.items()}
        self.submit = submit
        self.limits = limits
        self.progress = progress
        self.call_slots = call_slots if limits.queued is not None else None
        # Called once, at the first outcome that leaves no generation to run.
        self.on_generations_done = on_generations_done
        # Generations whose call the head start is still making: each runs once its future is done.
        self.deferred = dict(deferred or {})
        self._in_flight: dict[Future, tuple[str, Batch]] = {}
        self.capped = False  # the spending cap refused a call: no batch starts any more
        # Why no call can succeed any more, once a batch (or `stops_run()`: the head start) found it:
        # no batch starts then.
        self.stops_run: Callable[[], str | None] = stops_run or (lambda: None)
        self.refusal: str | None = None
        # Partitions asked without an answer in this command (worker.BatchOutcome.asked), shared with
        # whoever builds the runs' config: their runs fail them without asking again.
        self.asked = asked if asked is not None else {}

    def run(self) -> None:
        while True:
            self._release_deferred()
            self._start_ready()
            if not self._in_flight and not self.deferred:
                return
            timeout = POLL_S if self.call_slots is not None else None
            done, _ = wait([*self._in_flight, *self.deferred.values()], timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                if future in self._in_flight:
                    self._settle(future, *self._in_flight.pop(future))

    def _release_deferred(self) -> None:
        for key, future in list(self.deferred.items()):
            if future.done():
                del self.deferred[key]
                # A run told its request was asked without an answer fails (see head_start.py): alone,
                # so no other partition fails with it.
                self.schedule.add_generation(key, alone=future.result() == ASKED)

    def _refused(self) -> bool:
        """Whether no call can succeed any more (a batch or the head start found it)."""
        if self.refusal is None and (found := self.stops_run()):
            self._refuse(found)
        return self.refusal is not None

    def _refuse(self, sentence: str) -> None:
        if self.refusal is None:
            self.refusal = sentence
            self.progress(f"stopping: {sentence}")
        for stage in self.stages.values():
            stage.report.stopped = stage.report.stopped or sentence

    def _start_ready(self) -> None:
        while len(self._in_flight) < self.limits.runs and not self.capped and not self._refused():
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
            ran, success, error = tuple(outcome.keys), outcome.success, outcome.error
            left, capped, calls = dict(outcome.left), outcome.cap_reached, outcome.calls
            refused = outcome.stops_run
            self.asked.update(outcome.asked)
            invalid = outcome.invalid
        except Exception as exc:  # noqa: BLE001 - a worker that died: the batch failed
            ran, success, error, left, capped, calls = batch.keys, False, f"{type(exc).__name__}: {exc}", {}, False, 0
            refused, invalid = False, False
        if self.call_slots is not None:
            self.call_slots.add_unstarted(calls - len(batch.keys))  # the partitions that made no call
        if self.on_generations_done is not None and self._generations_done(job):
            self.on_generations_done()
            self.on_generations_done = None
        stage = self.stages[job]
        name = stage.report.name
        if left:
            stage.report.left += len(left)
            self.progress(f"{name}: a batch found{left_text(left)}")
        if capped:
            stage.report.cap_reached, self.capped = True, True
            self.progress(f"{name}: stopped: {error}")
            return
        if refused:
            self._refuse(error or "a run stopped the command")
            return
        if success:
            stage.report.succeeded += len(ran)
            if job == GENERATION:
                self.schedule.generation_done(ran)
        elif len(ran) > 1:
            self.progress(f"{name}: a batch of {len(ran)} failed ({error}); running its partitions one by one")
            self.schedule.retry_singly(job, Batch(ran))
            self._count(stage, job, len(left))
            return
        elif ran:
            stage.report.failures[ran[0]] = error or ""
            if invalid:
                stage.report.invalid = stage.report.invalid or error
            self.progress(f"{name}: FAILED {ran[0]}: {error}")
        self._count(stage, job, len(ran) + len(left))

    def _generations_done(self, job: str) -> bool:
        """Whether this outcome leaves no generation to run: what the runs need from this process
        until then (handing out batches, the head start's calls) must not wait for other work."""
        stage = self.stages.get(GENERATION)
        return job != GENERATION and not self.deferred and (stage is None or stage.finished >= stage.todo)

    def _count(self, stage: _Stage, job: str, partitions: int) -> None:
        before, stage.finished = stage.finished, stage.finished + partitions
        stage.last = time.monotonic()
        stage.report.seconds = stage.last - (stage.started or stage.last)
        step = max(1, stage.todo // 20)
        if stage.finished == stage.todo or stage.finished // step > before // step:
            rate = stage.finished / max(stage.report.seconds, 1e-9)
            failed = len(stage.report.failures)
            self.progress(f"{stage.report.name}: {stage.finished}/{stage.todo} done ({failed} failed, {rate:.1f}/s)")
        if job == GENERATION and stage.finished == stage.todo:
            self.generations_finished()

    def generations_finished(self) -> None:
        """Every generation has its outcome: the pairs still waiting will not run in this stream."""
        waiting = self.schedule.waiting_pairs()
        if waiting and EVALUATION in self.stages:
            self.stages[EVALUATION].todo -= waiting
            self.stages[EVALUATION].report.total -= waiting
            self.progress(f"evaluation: {waiting} pair(s) wait for a generation that is not materialized")
