"""Call slots: how many LLM calls may be in flight at once across processes.

Two kinds. `daydream run` gives its worker processes one multiprocessing semaphore
(`share_call_slots`), so the calls across all of its runs stay within --concurrency. Runs the
Dagster daemon launches (UI backfills, the sensor) are separate processes with nothing shared but
the machine: `FileCallSlots` is a set of slot files in a folder, a call holding an exclusive
`flock` on one of them while it is in flight. A slot is free again the moment its holder ends,
even after a SIGKILL (the kernel drops the lock), and a waiting call takes it within `poll_s`.
Within one process only one waiting call polls the files at a time; the others wait on a lock."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; FileCallSlots then does not limit
    fcntl = None

_shared_call_slots = None
# One lock per slot folder and process: the thread holding it is the only one polling that folder.
_pollers: dict[Path, threading.Lock] = {}
_pollers_guard = threading.Lock()


def share_call_slots(semaphore) -> None:
    """Make every API call of this process hold one slot of `semaphore` (a multiprocessing
    semaphore shared with sibling processes) while it is in flight, retries included."""
    global _shared_call_slots
    _shared_call_slots = semaphore


def call_slot():
    """A context that holds one shared slot while a call is in flight (a no-op when none are shared)."""
    return _shared_call_slots or contextlib.nullcontext()


class FileCallSlots:
    """`count` call slots shared by every process on this machine that names the same `folder`."""

    def __init__(self, folder: Path | str, count: int, poll_s: float = 0.02) -> None:
        self.folder = Path(folder)
        self.count = max(1, int(count))
        self.poll_s = poll_s

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
