"""The worker pool of `daydream run`: real processes that each run several tasks at once, a worker
that dies failing only its own tasks (and replaced), and a failed start reported on every task."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from daydreaming_dagster.runner.executor import forkserver
from daydreaming_dagster.runner.executor.pool import WorkerPool

NOTHING = "tests.test_pool:start_nothing"


def start_nothing(*_args) -> None:
    """A worker start that loads nothing (the tests' tasks need no code location)."""


def refuse_to_start(*_args) -> None:
    raise ValueError("the experiment config is invalid")


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def meet(barrier) -> int:
    """Wait until all the barrier's parties are running at once (it breaks after its timeout)."""
    barrier.wait()
    return os.getpid()


def touch(path: str) -> int:
    Path(path).write_text("ran")
    return os.getpid()


def die() -> None:
    os._exit(3)


class NeedsItsArguments(Exception):
    """Pickles, but does not unpickle (as DagsterInvalidConfigError): its constructor wants two arguments."""

    def __init__(self, message: str, errors: list) -> None:
        super().__init__(message)
        self.errors = errors


def raise_what_does_not_unpickle() -> None:
    raise NeedsItsArguments("Error in config for job generation", ["asked_earlier: not a string"])


@pytest.fixture
def pool_of():
    pools = []

    def make(*args, **kwargs) -> WorkerPool:
        pools.append(WorkerPool(*args, preload=(), **kwargs).start())
        return pools[-1]

    yield make
    for pool in pools:
        pool.close(wait=False)


def test_each_worker_runs_several_tasks_at_once(pool_of):
    pool = pool_of(2, runs_per_worker=3, initializer=NOTHING)
    for future in pool.for_each_worker(nap, 0):  # the processes are up before the clock starts
        future.result(timeout=120)

    with multiprocessing.Manager() as manager:
        # Six tasks that each wait until all six are running: with fewer at once the barrier breaks.
        barrier = manager.Barrier(6, timeout=60)
        pids = [f.result(timeout=120) for f in [pool.submit(meet, barrier) for _ in range(6)]]

    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_a_worker_that_dies_fails_only_its_own_tasks_and_another_takes_its_place(pool_of):
    pool = pool_of(2, runs_per_worker=2, initializer=NOTHING)
    first, second = pool.for_each_worker(nap, 0)
    first.result(timeout=120), second.result(timeout=120)
    slow = pool.submit(nap, 1.5)  # one worker: this one survives
    fatal = pool.submit(die)  # the other worker

    with pytest.raises(RuntimeError, match=r"worker process \d exited \(code 3\)"):
        fatal.result(timeout=60)
    assert slow.result(timeout=60) > 0
    assert all(f.result(timeout=120) > 0 for f in [pool.submit(nap, 0.1) for _ in range(4)])


def test_a_worker_that_cannot_start_fails_each_task_with_the_reason(pool_of):
    pool = pool_of(1, initializer="tests.test_pool:refuse_to_start")

    with pytest.raises(ValueError, match="the experiment config is invalid"):
        pool.submit(nap, 0).result(timeout=120)


def test_a_task_whose_exception_cannot_be_unpickled_fails_with_its_text_and_the_pool_goes_on(pool_of):
    pool = pool_of(1, initializer=NOTHING)

    with pytest.raises(RuntimeError, match="NeedsItsArguments: Error in config for job generation"):
        pool.submit(raise_what_does_not_unpickle).result(timeout=120)
    assert pool.submit(nap, 0).result(timeout=60) > 0  # the results are still read


def test_workers_killed_again_and_again_never_hold_up_the_others_results(pool_of):
    """Each worker reports on a pipe of its own. With one shared queue, a worker killed just after its
    result had arrived could still hold the queue's lock across processes, and no other result came
    (seen once in a CI-like run; too rare to provoke on cue, so this repeats the deaths)."""
    pool = pool_of(2, runs_per_worker=2, initializer=NOTHING)
    for future in pool.for_each_worker(nap, 0):
        future.result(timeout=120)
    for _ in range(10):
        answered = [pool.submit(nap, 0) for _ in range(4)]
        assert all(f.result(timeout=60) > 0 for f in answered)
        fatal = pool.submit(die)  # at once, while the workers may still be finishing their sends
        with pytest.raises(RuntimeError, match="exited"):
            fatal.result(timeout=60)
    assert all(f.result(timeout=120) > 0 for f in [pool.submit(nap, 0.1) for _ in range(4)])
    pool.close(wait=False)  # returns: nothing is left holding a lock the close would wait for


def test_a_pool_closed_before_any_worker_started_stops_its_forkserver_and_runs_nothing(tmp_path, monkeypatch):
    """A `daydream run` with nothing to do closes its pool while the forkserver still imports the
    code location: the close does not wait for that import, nor for workers to start and exit."""
    if (earlier := forkserver.running_pid()) is not None:
        forkserver.stop(earlier)  # a forkserver of an earlier test here would be reused, its import done
    monkeypatch.setenv("DAYDREAM_TEST_IMPORT_S", "60")
    pool = WorkerPool(1, preload=("tests.slow_to_import",), initializer=NOTHING).start()
    started = forkserver.running_pid()  # the standard library's private attribute it reads is there
    assert isinstance(started, int)
    marker = tmp_path / "ran"
    task = pool.submit(touch, str(marker))  # queued for the worker, which waits for the import

    pool.close()

    with pytest.raises(RuntimeError, match="closed before a worker could run this task"):
        task.result(timeout=0)
    assert not marker.exists()
    assert os.waitid(os.P_PID, started, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None  # it is dead
    monkeypatch.setenv("DAYDREAM_TEST_IMPORT_S", "0")
    again = WorkerPool(1, preload=(), initializer=NOTHING).start()  # and the next pool starts another
    try:
        assert again.submit(nap, 0).result(timeout=120) not in (os.getpid(), None)
    finally:
        again.close()
