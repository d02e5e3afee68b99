"""The stream of batches of `daydream run`: generations first, a generation's pairs as soon as it is
materialized (no barrier between the stages), Dagster ranges of exactly the pairs asked for, failed
batches run again one partition per run, and no more calls queued than the stream allows."""

from __future__ import annotations

import multiprocessing
import random
import shutil
import threading
import time
from concurrent.futures import Future

import dagster as dg
import pytest

from daydreaming_dagster.assets.partitions import evaluation_pairs_partitions
from daydreaming_dagster.llm.slots import SharedCallSlots
from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.ranges import Batch
from daydreaming_dagster.runner.executor.schedule import EVALUATION, GENERATION, Schedule
from daydreaming_dagster.runner.executor.streaming import Limits, StageReport, Stream
from daydreaming_dagster.runner.executor.worker import BatchOutcome
from tests.experiment_factory import write_experiment
from tests.openai_server import held_until
from tests.pipeline import KEY

ORDER = [f"g{i}" for i in range(6)]


def take(schedule: Schedule, size: int) -> tuple[str, tuple[str, ...]] | None:
    item = schedule.next_batch(lambda ready: size)
    return None if item is None else (item[0], item[1].keys)


def test_generations_come_first_in_ranges_of_consecutive_keys_in_the_instance_order():
    schedule = Schedule(ORDER, ["g4", "g0", "g1", "g2", "g5"], [("g0", "m")])

    assert take(schedule, 2) == (GENERATION, ("g0", "g1"))
    assert take(schedule, 5) == (GENERATION, ("g2",))  # g3 is not to run: a range cannot reach past it
    assert take(schedule, 5) == (GENERATION, ("g4", "g5"))
    assert take(schedule, 5) is None  # g0's pair waits for g0


def test_a_generations_pairs_are_ready_once_it_is_materialized_lowest_generation_first():
    pairs = [(g, m) for g in ORDER for m in ("m1", "m2")]
    schedule = Schedule(ORDER, ORDER, pairs)
    while take(schedule, 6) is not None:
        pass
    assert schedule.waiting_pairs() == 12

    schedule.generation_done(["g3", "g4"])
    schedule.generation_done(["g1"])

    assert take(schedule, 6) == (EVALUATION, ("m1|g1",))  # g2 is not done: the range stops at g1
    assert take(schedule, 6) == (EVALUATION, ("m2|g1",))
    assert take(schedule, 1) == (EVALUATION, ("m1|g3",))
    assert take(schedule, 6) == (EVALUATION, ("m2|g3", "m2|g4"))
    assert take(schedule, 6) == (EVALUATION, ("m1|g4",))
    assert take(schedule, 6) is None and schedule.waiting_pairs() == 6


def test_pairs_of_materialized_generations_are_ready_at_once_unless_their_generation_runs_again():
    schedule = Schedule(ORDER, ["g1"], [("g0", "m"), ("g1", "m")], materialized={"g0", "g1"})

    assert take(schedule, 5) == (GENERATION, ("g1",))
    assert take(schedule, 5) == (EVALUATION, ("m|g0",))
    assert take(schedule, 5) is None and schedule.waiting_pairs() == 1


def test_a_failed_batch_comes_back_one_partition_at_a_time_before_anything_else():
    schedule = Schedule(ORDER, ORDER, [])
    first = schedule.next_batch(lambda ready: 3)

    schedule.retry_singly(*first)

    assert [take(schedule, 5) for _ in range(4)] == [
        (GENERATION, ("g0",)), (GENERATION, ("g1",)), (GENERATION, ("g2",)), (GENERATION, ("g3", "g4", "g5"))
    ]


def test_a_generation_held_back_by_the_head_start_joins_the_ranges_or_with_alone_runs_by_itself_first():
    schedule = Schedule(ORDER, ["g0", "g3"], [])

    schedule.add_generation("g1")
    schedule.add_generation("g2", alone=True)  # its head-start answer was cut off: its run fails

    assert [take(schedule, 5) for _ in range(3)] == [(GENERATION, ("g2",)), (GENERATION, ("g0", "g1")), (GENERATION, ("g3",))]


def test_a_key_the_instance_does_not_know_runs_alone():
    schedule = Schedule(ORDER, ["g0", "ghost"], [("ghost", "m")])

    assert [take(schedule, 5) for _ in range(2)] == [(GENERATION, ("g0",)), (GENERATION, ("ghost",))]
    schedule.generation_done(["ghost"])
    assert take(schedule, 5) == (EVALUATION, ("m|ghost",))


def test_every_batch_of_the_stream_is_a_dagster_range_of_exactly_its_pairs(instance):
    generations = [f"g{i:02d}" for i in range(20)]
    instance.add_dynamic_partitions("generation_tasks", generations)
    instance.add_dynamic_partitions("evaluation_tasks", ["m0", "m1", "m2"])
    rng = random.Random(11)
    pairs = [(g, m) for g in generations for m in ("m0", "m1", "m2") if rng.random() < 0.7]
    schedule = Schedule(generations, generations, pairs)
    covered = []
    while (item := schedule.next_batch(lambda ready: rng.randint(1, 6))) is not None:
        job, batch = item
        if job == GENERATION:
            schedule.generation_done(rng.sample(batch.keys, len(batch.keys)))
            continue
        keys = evaluation_pairs_partitions.get_partition_keys_in_range(
            dg.PartitionKeyRange(batch.start, batch.end), dynamic_partitions_store=instance
        )
        assert [str(k) for k in keys] == list(batch.keys)
        covered += batch.keys
    assert sorted(covered) == sorted(f"{m}|{g}" for g, m in pairs)


class Runs:
    """Runs the stream's batches as they are asked for; `fail` says which batches fail. Each run
    'starts' all its calls at once (through the call slots), so the queued count follows it."""

    def __init__(self, fail=lambda job, batch: False, slots: SharedCallSlots | None = None, outcome=None) -> None:
        self.fail = fail
        self.slots = slots
        self.outcome = outcome  # (job, batch) -> the BatchOutcome to report, or None for the usual one
        self.submitted: list[tuple[str, tuple[str, ...]]] = []
        self.pending: list[tuple[Future, str, Batch]] = []
        self.judged_while_generating = False

    def submit(self, job: str, batch: Batch) -> Future:
        self.submitted.append((job, batch.keys))
        if job == EVALUATION and any(j == GENERATION for _, j, _ in self.pending):
            self.judged_while_generating = True
        future: Future = Future()
        self.pending.append((future, job, batch))
        return future

    def finish_oldest(self) -> None:
        future, job, batch = self.pending.pop(0)
        failed = self.fail(job, batch)
        outcome = self.outcome(job, batch) if self.outcome else None
        future.set_result(outcome or BatchOutcome(batch.keys, not failed, "refused" if failed else None, calls=len(batch.keys)))
        if self.slots is not None:
            self.slots.add_unstarted(-len(batch.keys))


def stream_of(schedule: Schedule, runs: Runs, limits: Limits, todo: dict[str, int], lines: list[str]) -> Stream:
    reports = {job: (StageReport(job, total=n), n) for job, n in todo.items()}
    return Stream(schedule, reports, runs.submit, limits, lines.append, runs.slots)


def run_stream(stream: Stream, runs: Runs) -> None:
    """The stream's loop, with each wait ending when the oldest run ends."""
    while True:
        stream._start_ready()
        if not stream._in_flight:
            return
        runs.finish_oldest()
        for future in [f for f in stream._in_flight if f.done()]:
            stream._settle(future, *stream._in_flight.pop(future))


def test_judging_starts_before_the_last_generation_batch_ends():
    pairs = [(g, "m") for g in ORDER]
    runs, lines = Runs(), []
    stream = stream_of(Schedule(ORDER, ORDER, pairs), runs, Limits(runs=2, max_batch=32), {GENERATION: 6, EVALUATION: 6}, lines)

    run_stream(stream, runs)

    assert runs.judged_while_generating  # no barrier
    assert sorted(k for job, keys in runs.submitted if job == EVALUATION for k in keys) == sorted(f"m|{g}" for g in ORDER)
    assert stream.stages[GENERATION].report.succeeded == 6 and stream.stages[EVALUATION].report.succeeded == 6


def test_a_failed_batch_runs_again_one_partition_per_run_and_its_pairs_follow_the_generations_that_succeed():
    runs, lines = Runs(fail=lambda job, batch: "g4" in batch.keys), []
    schedule = Schedule(ORDER, ORDER, [(g, "m") for g in ORDER])
    stream = stream_of(schedule, runs, Limits(runs=1, max_batch=3), {GENERATION: 6, EVALUATION: 6}, lines)

    run_stream(stream, runs)

    assert "generation: a batch of 3 failed (refused); running its partitions one by one" in lines
    assert "generation: FAILED g4: refused" in lines
    assert "evaluation: 1 pair(s) wait for a generation that is not materialized" in lines
    generation, evaluation = stream.stages[GENERATION].report, stream.stages[EVALUATION].report
    assert (generation.succeeded, list(generation.failures)) == (5, ["g4"])
    assert (evaluation.succeeded, evaluation.total, evaluation.failures) == (5, 5, {})
    assert ("generation", ("g3",)) in runs.submitted and ("generation", ("g5",)) in runs.submitted


def test_partitions_another_run_holds_are_left_to_it_and_the_pairs_of_a_left_generation_wait():
    def held_elsewhere(job, batch):
        if job == GENERATION and "g2" in batch.keys:
            ran = tuple(k for k in batch.keys if k != "g2")
            return BatchOutcome(ran, True, left={"g2": "run other"}, calls=len(ran))
        return None

    runs, lines = Runs(outcome=held_elsewhere), []
    stream = stream_of(Schedule(ORDER, ORDER, [(g, "m") for g in ORDER]), runs, Limits(runs=2, max_batch=3), {GENERATION: 6, EVALUATION: 6}, lines)

    run_stream(stream, runs)

    generation, evaluation = stream.stages[GENERATION].report, stream.stages[EVALUATION].report
    assert (generation.succeeded, generation.left, generation.failures) == (5, 1, {})
    assert "generation: a batch found, 1 left to another run (run other)" in lines
    assert "evaluation: 1 pair(s) wait for a generation that is not materialized" in lines
    assert (evaluation.succeeded, evaluation.total) == (5, 5)
    assert not any("g2" in keys for _, keys in runs.submitted[1:])  # not run again


def test_once_the_spending_cap_refused_a_call_no_batch_starts_and_those_in_flight_finish():
    def capped(job, batch):
        if batch.keys[0] == "g0":
            return BatchOutcome(batch.keys, False, "the cap was reached", cap_reached=True, calls=1)
        return None

    runs, lines = Runs(outcome=capped), []
    stream = stream_of(Schedule(ORDER, ORDER, [(g, "m") for g in ORDER]), runs, Limits(runs=2, max_batch=2), {GENERATION: 6, EVALUATION: 6}, lines)

    run_stream(stream, runs)

    assert runs.submitted == [(GENERATION, ("g0", "g1")), (GENERATION, ("g2", "g3"))]  # the second was in flight
    generation = stream.stages[GENERATION].report
    assert generation.cap_reached and generation.succeeded == 2 and generation.failures == {}
    assert "generation: stopped: the cap was reached" in lines
    assert stream.stages[EVALUATION].report.succeeded == 0


def test_runs_start_only_while_fewer_calls_than_allowed_wait_for_a_slot():
    slots = SharedCallSlots(multiprocessing.get_context(), 4)
    runs, lines = Runs(slots=slots), []
    generations = [f"g{i}" for i in range(40)]
    stream = stream_of(Schedule(generations, generations, []), runs, Limits(runs=8, max_batch=32, queued=6), {GENERATION: 40}, lines)

    stream._start_ready()

    # Batches of ceil(40 / 8) = 5 until 6 partitions are queued: two runs, not eight.
    assert [len(keys) for _, keys in runs.submitted] == [5, 5] and slots.unstarted == 10
    runs.finish_oldest()
    stream._settle(*[(f, *stream._in_flight.pop(f)) for f in list(stream._in_flight) if f.done()][0])
    stream._start_ready()
    assert slots.unstarted == 10 and len(runs.submitted) == 3  # one more run once the first was done


# --------------------------------------------------------------------------- daydream run, end to end


@pytest.mark.slow
def test_daydream_run_judges_generations_while_a_slow_one_is_still_answering(tmp_path, openai_server, monkeypatch, capsys):
    experiment = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    for name, value in {"DAGSTER_HOME": home, "OPENROUTER_API_KEY": KEY, "DAYDREAM_DATA_ROOT": experiment,
                        "OPENROUTER_BASE_URL": openai_server.base_url}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("DAYDREAM_BACKEND", raising=False)
    openai_server.latency_s = 0.2
    openai_server.default_answer = lambda body: f"Idea: {body['messages'][-1]['content'][-80:]}\nSCORE: 5"
    slow, judging = [], threading.Event()

    def first_generation_is_slow(body):
        # The first generation is held until a judge call arrives (60 s at most): with a barrier
        # between the stages no judge could come, and it would be held the whole minute.
        if "Rate this idea" in body["messages"][-1]["content"]:
            judging.set()
        elif not slow:
            slow.append(time.time())
            return held_until(judging, timeout=60.0)
        return None

    openai_server.behaviour_for = first_generation_is_slow
    # The stream's own generation runs make the calls here (not the head start, which would ask the
    # slow one seconds before the workers exist: tests/test_head_start.py).
    monkeypatch.setenv("DAYDREAM_HEAD_START", "off")

    # Four calls at once on two workers: two runs in flight, each generation run of three.
    assert daydream(["run", "--concurrency", "4", "--workers", "2"]) == 0, capsys.readouterr().err

    assert "generation: 6 ran" in (out := capsys.readouterr().out) and "evaluation: 12 ran" in out
    judged = sorted(r.received_at for r in openai_server.requests if "Rate this idea" in r.body["messages"][-1]["content"])
    assert judged[0] < slow[0] + 30.0  # judging began while the slow generation was still held
    assert len(openai_server.requests) == 6 + 12  # every answer paid once
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))) == 12
