"""`daydream run`'s worker processes: each loads the code location once, then executes several runs at
once in threads (a run mostly waits on its LLM calls; its Dagster bookkeeping is what needs a core).

The processes fork from a forkserver that imported the code location once, so N workers do not pay
N imports (~3 s of CPU each). They start in the background: importing this module imports no
Dagster, so `daydream run` starts its workers before it loads anything itself. The runner hands each
task to the worker with the fewest tasks in flight; a worker that dies fails only its own tasks, and
a new one takes its place. Each worker reports on a pipe of its own: a shared multiprocessing.Queue
has a lock across processes, which a worker killed while sending kept for ever, and every other
worker's results then never arrived."""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...llm.slots import SharedCallSlots
from . import forkserver

if TYPE_CHECKING:
    import dagster as dg

# The SDK too: the code location imports it only where a call is made (see llm/openai_backend.py).
PRELOAD = ("daydreaming_dagster.definitions", "openai")
INITIALIZER = "daydreaming_dagster.runner.executor.worker:init_worker"


def default_workers(concurrency: int, offline: bool = False) -> int:
    """Worker processes: one per core. A run's Dagster bookkeeping is CPU work; against an API each
    worker runs several runs at once in threads, so the ones waiting on calls leave no core idle."""
    return max(1, min(concurrency, os.cpu_count() or 1))


def runs_in_flight(concurrency: int) -> int:
    """Runs at once against an API: enough that batches waiting on a slow call leave the call slots
    to the others (measured with the heavy-tailed benchmark; see README)."""
    return max(1, concurrency // 2)


def llm_pool_limit(instance: dg.DagsterInstance) -> int | None:
    """How many steps of the LLM pool may run at once across all runs (None: no limit). A response
    step over this limit would wait for a slot, polling once a second or less often."""
    from ...assets.responding import LLM_POOL

    config = instance.get_concurrency_config().pool_config
    if config.pool_granularity is not None and config.pool_granularity.value == "run":
        return None
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == LLM_POOL:
            return pool.limit
    return config.default_pool_limit


def start_pool(workers: int, concurrency: int, offline: bool) -> WorkerPool:
    """The worker pool of one `daydream run`, with its call slots, started: the workers load the code
    location while the caller goes on."""
    runs_per_worker = 1 if offline else -(-runs_in_flight(concurrency) // max(1, workers))
    pool = WorkerPool(workers, runs_per_worker)
    pool.initargs = (SharedCallSlots(pool.context, concurrency),)
    return pool.start()


def _serve(index: int, inbox, results, threads: int, initializer: str, initargs: tuple, env: dict) -> None:
    """A worker process: run each task of `inbox` in one of `threads` threads; report on `results`
    (the write end of this worker's own pipe; its threads take turns on it)."""
    # Ctrl-C is the runner's to handle: it stops handing out work and lets the runs in flight finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(env)  # the runner's settings, not the forkserver's environment
    failure = None
    try:
        module, name = initializer.split(":")
        getattr(importlib.import_module(module), name)(*initargs)
    except Exception as exc:  # noqa: BLE001 - every task then fails with it
        failure = _picklable(exc)
    sending = threading.Lock()  # this process's own: it dies with the process, unlike a queue's

    def send(message: tuple) -> None:
        with sending:
            results.send(message)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="run") as pool:
        while (item := inbox.get()) is not None:
            task_id, fn, args = item
            if failure is not None:
                send((task_id, False, failure))
                continue

            def report(future: Future, task_id: int = task_id) -> None:
                exc = future.exception()
                send((task_id, True, future.result()) if exc is None else (task_id, False, _picklable(exc)))

            pool.submit(fn, *args).add_done_callback(report)


def _picklable(exc: BaseException) -> BaseException:
    """`exc`, or its text in a RuntimeError when it would not arrive: an exception the runner's side
    could not unpickle (Dagster's config errors need constructor arguments pickle does not pass)
    would stop the thread that reads every result, and the runner would wait for ever."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@dataclass
class _Worker:
    index: int
    inbox: object
    results: multiprocessing.connection.Connection  # the read end of the worker's own pipe
    sender: multiprocessing.connection.Connection | None  # its write end, until the worker has it
    process: multiprocessing.Process | None = None
    tasks: set[int] = field(default_factory=set)


class WorkerPool:
    """`workers` processes, each running up to `runs_per_worker` tasks at once, each set up by
    `initializer(*initargs)` (e.g. sharing the call slots); started in the background by `start`."""

    def __init__(
        self,
        workers: int,
        runs_per_worker: int = 1,
        initargs: tuple = (),
        initializer: str = INITIALIZER,
        preload: tuple[str, ...] = PRELOAD,
    ) -> None:
        self.workers = max(1, workers)
        self.runs_per_worker = max(1, runs_per_worker)
        self.initargs = initargs
        self.initializer = initializer  # "module:function", called with `initargs` in each worker
        self.preload = preload
        self._context = multiprocessing.get_context("forkserver")
        self._lock = threading.Lock()
        self._wake: tuple | None = None  # a pipe of this process's own that stops the reader; set once started
        self._pool: list[_Worker] = []
        self._futures: dict[int, Future] = {}
        self._next_id = 0
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._forkserver: int | None = None  # the pid of the forkserver this pool started, if it did

    @property
    def context(self):
        return self._context

    def start(self) -> WorkerPool:
        """Start the workers without waiting for them (they load the code location meanwhile)."""
        if self._wake is None:
            # forkserver, not fork: the runner's process holds open SQLite connections and threads.
            self._context.set_forkserver_preload(list(self.preload))
            self._forkserver = forkserver.start_deaf_to_ctrl_c()
            self._wake = self._context.Pipe(duplex=False)
            self._pool = [self._new_worker(i) for i in range(self.workers)]
            starter = threading.Thread(target=self._start_all, name="pool-start", daemon=True)
            reader = threading.Thread(target=self._read, name="pool-results", daemon=True)
            self._threads = [starter, reader]
            starter.start()
            reader.start()
        return self

    def _new_worker(self, index: int) -> _Worker:
        results, sender = self._context.Pipe(duplex=False)
        return _Worker(index, self._context.Queue(), results, sender)

    def _spawn(self, worker: _Worker) -> None:
        # Process.start waits for the forkserver to finish importing: callers run it off the main thread.
        args = (worker.index, worker.inbox, worker.sender, self.runs_per_worker, self.initializer, self.initargs, dict(os.environ))
        process = self._context.Process(target=_serve, args=args, name=f"daydream-worker-{worker.index}", daemon=True)
        process.start()
        worker.process = process
        worker.sender.close()  # the worker has its own copy: once it exits, its pipe ends
        worker.sender = None

    def _start_all(self) -> None:
        for worker in list(self._pool):
            with self._lock:
                if self._closing:
                    return
            try:
                self._spawn(worker)
            except Exception:
                if self._closing:
                    return  # close() stopped the forkserver before any worker had started
                raise

    def submit(self, fn: Callable, *args) -> Future:
        """Run `fn(*args)` in the worker with the fewest tasks in flight."""
        self.start()
        with self._lock:
            return self._post(min(self._pool, key=lambda w: (len(w.tasks), w.index)), fn, args)

    def for_each_worker(self, fn: Callable, *args) -> list[Future]:
        """Run `fn(*args)` once in every worker."""
        self.start()
        with self._lock:
            return [self._post(worker, fn, args) for worker in self._pool]

    def _post(self, worker: _Worker, fn: Callable, args: tuple) -> Future:
        task_id, self._next_id = self._next_id, self._next_id + 1
        future = self._futures[task_id] = Future()
        worker.tasks.add(task_id)
        worker.inbox.put((task_id, fn, args))
        return future

    def _read(self) -> None:
        checked = time.monotonic()
        while True:
            with self._lock:
                channels = {w.results: w for w in self._pool if w.results is not None}
            ready = multiprocessing.connection.wait([*channels, self._wake[0]], timeout=0.5)
            if self._wake[0] in ready:  # close(): every worker has exited
                return
            for channel in ready:
                self._receive(channels[channel])
            if not ready or time.monotonic() - checked > 0.5:  # also while results keep coming
                checked = time.monotonic()
                self._replace_dead()
                with self._lock:
                    if self._closing and not self._futures:
                        return

    def _receive(self, worker: _Worker) -> None:
        """Settle the task whose outcome `worker` sent; a pipe that ended (the worker exited, or was
        killed mid-message) is dropped, and the worker's tasks fail when its exit is seen."""
        try:
            task_id, ok, value = worker.results.recv()
        except Exception:  # noqa: BLE001 - EOFError, OSError, or a message cut short
            with self._lock:
                worker.results.close()
                worker.results = None
            return
        with self._lock:
            future = self._futures.pop(task_id, None)
            worker.tasks.discard(task_id)
        if future is not None:
            future.set_result(value) if ok else future.set_exception(value)

    def _replace_dead(self) -> None:
        """Fail the tasks of a worker that died, and start another in its place."""
        with self._lock:
            dead = [w for w in self._pool if w.process is not None and w.process.exitcode is not None]
            failed = []
            for worker in dead:
                code = worker.process.exitcode
                for task_id in worker.tasks:
                    if (future := self._futures.pop(task_id, None)) is not None:
                        failed.append((future, RuntimeError(f"worker process {worker.index} exited (code {code}) during the run")))
                self._pool.remove(worker)
            replacements = [] if self._closing else [self._new_worker(w.index) for w in dead]
            self._pool.extend(replacements)
        for future, error in failed:
            future.set_exception(error)
        for worker in replacements:
            threading.Thread(target=self._spawn, args=(worker,), daemon=True).start()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._futures)

    def stop(self) -> None:
        """Tell the workers to exit once the tasks in flight are done; returns at once."""
        with self._lock:
            if self._closing or self._wake is None:
                return
            self._closing = True
            workers = list(self._pool)
        for worker in workers:
            worker.inbox.put(None)

    def close(self, wait: bool = True) -> None:
        """Stop the workers and wait for them (those in flight are stopped at once with `wait=False`)."""
        if self._wake is None:
            return
        self.stop()
        with self._lock:
            workers = list(self._pool)
            idle = all(w.process is None for w in workers)
        if idle and self._forkserver is not None:
            # No worker has started, so none has run anything: the forkserver is still importing the
            # code location, and waiting for that and for the workers to start and exit again costs
            # seconds (a rerun with nothing to do). Stopped, its pending start fails, and no worker runs.
            forkserver.stop(self._forkserver)
        self._threads[0].join()
        for worker in workers:
            if worker.process is None:
                continue
            if not wait:
                worker.process.terminate()
            worker.process.join()
        # The reader holds the pool (and its queues' semaphores) until it returns: stop it now, so
        # they are released before the command exits (without Python's teardown, see cli.py) and the
        # resource tracker finds no semaphore left behind.
        self._wake[1].send(None)
        self._threads[1].join()
        for worker in workers:
            worker.inbox.close()  # and its feeder thread, which holds one of its semaphores, exits
            worker.inbox.join_thread()
            for end in (worker.results, worker.sender):
                if end is not None:
                    end.close()
        for end in self._wake:
            end.close()
        self._wake = None
        with self._lock:  # tasks of workers that never started: nothing of them ran
            left, self._futures = list(self._futures.values()), {}
        for future in left:
            future.set_exception(RuntimeError("the worker pool was closed before a worker could run this task"))
