"""The heartbeat of a process's claims (claims.py): one thread renews every lease it holds while
the calls are in flight, and releases each claim through the same lock, so a release never races
a renewal."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .claims import Claim, Claims


@dataclass
class Heartbeat:
    """A thread that renews every claim it holds, every `claims.times.renew_s`, until closed.

    Claims are released through it too, so a release never races the renewal of the same claim
    (which changes its version). `on_lost(claim)` is called for a claim that could not be renewed
    because someone took it over; it is dropped then."""

    claims: Claims
    on_lost: Callable[[Claim], None] = lambda claim: None
    _held: dict[int, Claim] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._held[id(claim)] = claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="claim-heartbeat", daemon=True)
                self._thread.start()

    def release(self, claim: Claim) -> bool:
        """Stop renewing `claim` and delete it if it is still ours."""
        with self._lock:
            self._held.pop(id(claim), None)
            return self.claims.release(claim)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
            for claim in held:
                try:
                    self.claims.release(claim)
                except OSError:
                    pass  # its lease runs out, and the claim is taken over then

    def _run(self) -> None:
        while not self._stop.wait(self.claims.times.renew_s):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                with self._lock:
                    if id(claim) not in self._held:
                        continue
                    try:
                        lost = not self.claims.renew(claim)
                    except OSError:
                        continue  # a passing file-system fault; the next beat tries again
                    if lost:
                        del self._held[id(claim)]
                if lost:
                    self.on_lost(claim)

    def close(self) -> None:
        """Release every claim still held and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.release_all()
