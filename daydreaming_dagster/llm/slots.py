"""Call slots shared by the processes of one `daydream run`: the calls in flight across all of its
worker processes stay within --concurrency while each run may start that many."""

from __future__ import annotations

import contextlib

_shared_call_slots = None


def share_call_slots(semaphore) -> None:
    """Make every API call of this process hold one slot of `semaphore` (a multiprocessing
    semaphore shared with sibling processes) while it is in flight, retries included."""
    global _shared_call_slots
    _shared_call_slots = semaphore


def call_slot():
    """A context that holds one shared slot while a call is in flight (a no-op when none are shared)."""
    return _shared_call_slots or contextlib.nullcontext()
