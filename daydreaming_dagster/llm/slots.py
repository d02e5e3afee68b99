"""Call slots: how many LLM calls may be in flight at once across processes.

Two kinds. `daydream run` gives its worker processes one set of `SharedCallSlots`
(`share_call_slots`), so the calls across all of its runs stay within --concurrency; the same
object tells the runner how many of the partitions it handed out have not started their call yet,
so it hands out more before a slot would fall idle (see runner/executor/streaming.py). Runs the
Dagster daemon launches (UI backfills, the sensor) are separate processes with nothing shared but
the machine: `FileCallSlots` is a set of slot files in a folder, a call holding an exclusive
`flock` on one of them while it is in flight. A slot is free again the moment its holder ends,
even after a SIGKILL (the kernel drops the lock), and a waiting call takes it within `poll_s`.
Within one process only one waiting call polls the files at a time; the others wait on a lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; FileCallSlots then does not limit
    fcntl = None

_shared_call_slots = None
# One lock per slot folder and process: the thread holding it is the only one polling that folder.
_pollers: dict[Path, threading.Lock] = {}
_pollers_guard = threading.Lock()


class RunCalls:
    """How many calls one Dagster run started (each counted when it takes its slot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0

    def count(self) -> None:
        with self._lock:
            self.started += 1


# The run this thread is executing. A backend is built in the run's own thread (when its resources
# are set up) and keeps the run's RunCalls; the calls themselves run in other threads.
_RUN_CALLS: ContextVar[RunCalls | None] = ContextVar("daydream_run_calls", default=None)


@contextlib.contextmanager
def counting_calls() -> Iterator[RunCalls]:
    """Count the calls of the run executed inside this block (by backends built inside it)."""
    calls = RunCalls()
    token = _RUN_CALLS.set(calls)
    try:
        yield calls
    finally:
        _RUN_CALLS.reset(token)


def current_run_calls() -> RunCalls | None:
    return _RUN_CALLS.get()


class SharedCallSlots:
    """`count` call slots shared by the processes of one `daydream run` (build it with their
    multiprocessing context, pass it to them at start), and the number of partitions handed to runs
    whose call has not started: the runner adds a run's partitions when it starts the run, each call
    takes one off as it takes its slot, and the runner takes off the rest when the run ends (those
    that needed no call).

    Within a process, calls take the slots in the order they asked for them. An OS semaphore wakes
    its waiters in no set order: the calls of every run then finish at about the same time, at the
    end, so no generation is done early enough for its judges to start while the others run. In
    order, the runs started first are done first."""

    def __init__(self, context, count: int) -> None:
        self._semaphore = context.BoundedSemaphore(count)
        self._unstarted = context.Value("i", 0)
        self._line: deque[threading.Event] = deque()  # this process's calls waiting, in order
        self._line_lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"semaphore": self._semaphore, "unstarted": self._unstarted}

    def __setstate__(self, state: dict) -> None:
        self._semaphore, self._unstarted = state["semaphore"], state["unstarted"]
        self._line, self._line_lock = deque(), threading.Lock()

    @property
    def unstarted(self) -> int:
        return self._unstarted.value

    def add_unstarted(self, partitions: int) -> None:
        with self._unstarted.get_lock():
            self._unstarted.value += partitions

    @contextlib.contextmanager
    def hold(self, calls: RunCalls | None = None) -> Iterator[None]:
        turn = threading.Event()
        with self._line_lock:
            self._line.append(turn)
            if self._line[0] is turn:
                turn.set()
        try:
            turn.wait()  # only the first in this process's line waits on the shared semaphore
            self._semaphore.acquire()
        finally:
            with self._line_lock:
                self._line.remove(turn)
                if self._line:
                    self._line[0].set()
        try:
            if calls is not None:  # a call no run counts is settled when its run ends
                calls.count()
                self.add_unstarted(-1)
            yield
        finally:
            self._semaphore.release()


def share_call_slots(slots) -> None:
    """Make every API call of this process hold one slot of `slots` (SharedCallSlots, or any
    semaphore shared with sibling processes) while it is in flight, retries included."""
    global _shared_call_slots
    _shared_call_slots = slots


def call_slot(calls: RunCalls | None = None):
    """A context that holds one shared slot while a call of the run counted by `calls` is in flight
    (a no-op when none are shared)."""
    if isinstance(_shared_call_slots, SharedCallSlots):
        return _shared_call_slots.hold(calls)
    return _shared_call_slots or contextlib.nullcontext()


class FileCallSlots:
    """`count` call slots shared by every process on this machine that names the same `folder`."""

    def __init__(self, folder: Path | str, count: int, poll_s: float = 0.02) -> None:
        self.folder = Path(folder)
        self.count = max(1, int(count))
        self.poll_s = poll_s

    @classmethod
    def for_api(cls, base_url: str, count: int | None) -> FileCallSlots | None:
        """The slots of one API on this machine (None: no machine-wide limit)."""
        return cls(machine_slots_folder(base_url), count) if count else None

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        """Wait for a free slot and hold it for the duration of the block; yields its number."""
        if fcntl is None:
            yield -1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # Why one poller per process: a backfill run waits with up to `parallel_calls` threads, and
        # every one of them scanning the files each `poll_s` cost ~0.4 s of CPU per second
        # (bench/call_slots.py) on a machine whose CPU the runs need.
        with _poller(self.folder):
            fd, number = self._wait_for_slot()
        try:
            yield number
        finally:
            os.close(fd)  # releases the lock

    def _wait_for_slot(self) -> tuple[int, int]:
        while True:
            taken = self._scan()
            if taken is not None:
                return taken
            time.sleep(self.poll_s * (0.5 + random.random()))

    def _scan(self) -> tuple[int, int] | None:
        """One pass over the slot files: (fd, number) of one now locked by this call, or None."""
        # A random starting slot spreads the callers, so they do not all try slot 0 first.
        start = random.randrange(self.count)
        for i in range(self.count):
            number = (start + i) % self.count
            fd = os.open(self.folder / f"slot-{number:04d}", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, number
        return None


def _poller(folder: Path) -> threading.Lock:
    with _pollers_guard:
        return _pollers.setdefault(folder.resolve(), threading.Lock())


def machine_slots_folder(base_url: str) -> Path:
    """The slot files of one API on this machine (a folder every process derives the same way)."""
    digest = hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "daydream-call-slots" / digest
