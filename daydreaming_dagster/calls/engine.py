"""The paid-call engine: the one place a paid LLM call is made, from request to stored answer.

`Engine.run(calls)` returns one `Outcome` per call. For each call, in order:

1. reuse: a stored answer to exactly this request is the outcome (REUSED), no call; one to another
   request is refused (CONFLICT) unless `replace_changed`;
2. claim (calls/claiming.py): a call another live asker holds is waited for and its answer reused
   (or, with `wait_for_others=False`, left to it: HELD);
3. admit under the spending cap (calls/guard.py): the call's worst case is reserved, or the cap
   refuses it (REFUSED) and no new call starts;
4. call the model, up to `parallel` at once;
5. store the answer write-once the moment it arrives (PAID; with `replace_changed` the old answer
   moves to `_superseded/` first), or keep a cut-off or oversized one under `_rejected/` (FAILED,
   `kept`); after an error that the next calls would meet too, no new call starts (NOT_ASKED);
6. settle: the reservation ends with what the answer cost, and the claim is released.

Nothing here knows Dagster: the response assets, `daydream run`'s head start and batch collection
call it, each with its own log and owner."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from ..llm.requests import APIRefusedError, IncompleteResponseError, LLMError, LLMRequest, LLMResponse
from ..store.claims import Owner
from ..store.roots import StorageFull
from ..store.write_once import StoredResponseConflict
from .claiming import Call, CallClaims, Log, held_message
from .guard import SpendingCapReached, SpendingGuard


class Client(Protocol):
    def complete(self, request: LLMRequest) -> LLMResponse: ...


class Kind(str, Enum):
    REUSED = "reused"  # a stored answer to this very request: no call
    PAID = "paid"  # asked and stored now
    HELD = "held"  # another live asker (or a provider batch) holds its claim: not asked here
    REFUSED = "refused"  # the spending cap kept it out
    FAILED = "failed"  # asked (or storing its answer failed) without a usable answer
    CONFLICT = "conflict"  # a stored answer to another request is there, and is not replaced
    NOT_ASKED = "not asked"  # no call was started after an earlier one showed the next would fail too


@dataclass
class Outcome:
    """What became of one call. `reason` is one sentence for every kind but REUSED and PAID."""

    call: Call
    kind: Kind
    response: LLMResponse | None = None
    reason: str = ""
    kept: str | None = None  # where a paid answer that is not the response is kept (_rejected/)
    owner: str | None = None  # HELD: who holds the claim
    superseded: Path | None = None  # PAID with replace_changed: where the answer it replaced went
    error: Exception | None = None
    stops_run: bool = False  # no call of the command can succeed any more (a refused key, a full disk)
    cap_reached: bool = False
    asked: bool = False  # the model was asked, with the call's whole retry budget (paid, or failed)

    def asked_earlier(self) -> dict:
        """What a later run of this partition in the same command is told of a call asked without a
        usable answer (the response step's ResponseConfig.asked_earlier entry), so that it fails it
        in the same words instead of asking the same request again."""
        kept_reason = str(self.error) if self.error is not None and self.kept else None
        return {
            "request": self.call.request.fingerprint_text(),
            "reason": kept_reason or self.reason,
            "kept": self.kept,
            "stops_run": self.stops_run,
        }


class Engine:
    """Paid calls of one asker (`owner`) for one response asset of an archive (resources/response_store.py's
    ResponseStore: paths, reuse, write-once storing, claims), through `client`."""

    def __init__(
        self,
        archive,
        asset: str,
        client: Client | None,
        owner: Owner,
        log: Log,
        guard: SpendingGuard | None = None,
        extra_provenance: dict | None = None,
    ) -> None:
        self.archive = archive
        self.asset = asset
        self.client = client
        self.owner = owner
        self.log = log
        self.guard = guard
        self.extra_provenance = dict(extra_provenance or {})  # e.g. who asked (the head start)
        self.started = 0  # calls started by this engine
        self._count = threading.Lock()

    def run(
        self,
        calls: Sequence[Call],
        replace_changed: bool = False,
        parallel: int = 8,
        wait_for_others: bool = True,
        wait_for_room: bool = True,
        stop: threading.Event | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> dict[str, Outcome]:
        """One outcome per call, by partition key (see the module docstring). `wait_for_room`: a call
        the cap keeps out only while calls are in flight waits for them (else the cap's first
        refusal stops the calls). `stop`, once set, starts no new call; `on_outcome` hears of each
        outcome as it is known."""
        outcomes: dict[str, Outcome] = {}

        def done(outcome: Outcome) -> None:
            outcomes[outcome.call.key] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

        to_call = []
        for call in calls:
            reused = self.reused(call, replace_changed)
            if reused is None:
                to_call.append(call)
            else:
                done(reused)
        if not to_call:
            return outcomes
        with CallClaims(self.archive, self.asset, self.owner, replace_changed, self.log) as claims:
            pending, waiting, stopped = to_call, [], False
            try:
                while (pending or waiting) and not stopped:
                    mine, theirs = claims.take(pending)
                    if wait_for_others:
                        waiting += theirs
                    else:
                        claims.leave(theirs)
                    for call, result in self._complete_all(mine, parallel, stop, wait_for_room):
                        try:
                            outcome = self._settle(call, result, replace_changed)
                            stopped = stopped or _stops_the_rest(outcome)
                            done(outcome)
                        finally:
                            if self.guard is not None:  # only now that its answer is stored does it stop counting as in flight
                                self.guard.settle(call.key, _paid_provenance(result))
                            claims.release(call)
                    if stopped or (stop is not None and stop.is_set()):
                        claims.leave(waiting)  # their owners answer them; this asker asks nothing more
                        break
                    pending, waiting = claims.wait(waiting)
            finally:
                if self.guard is not None:
                    self.guard.settle_all()
        by_key = {call.key: call for call in to_call}
        for key, stored in claims.found.items():
            done(Outcome(by_key[key], Kind.REUSED, response=stored))
        for key, text in claims.conflicts.items():
            done(Outcome(by_key[key], Kind.CONFLICT, reason=text))
        for key, owner in claims.held.items():
            wait_s = claims.claims.times.wait_s
            done(Outcome(by_key[key], Kind.HELD, owner=owner, reason=held_message(self.asset, key, owner, wait_s)))
        for call in to_call:
            if call.key not in outcomes:
                done(Outcome(call, Kind.NOT_ASKED, reason="not asked: an earlier call showed the next would fail too"))
        return outcomes

    def reused(self, call: Call, replace_changed: bool = False) -> Outcome | None:
        """The outcome of a call whose archive already decides it (REUSED or CONFLICT), else None."""
        try:
            stored = self.archive.reusable(self.asset, call.parts, call.request, replace_changed)
        except StoredResponseConflict as exc:
            return Outcome(call, Kind.CONFLICT, reason=str(exc))
        return None if stored is None else Outcome(call, Kind.REUSED, response=stored)

    def keep(self, call: Call, response: LLMResponse, replace_changed: bool = False) -> Outcome:
        """Store an answer that arrived (from this engine's call, or from a provider batch)."""
        response = LLMResponse(response.text, {**response.provenance, **self.extra_provenance})
        try:
            # Only now that the new answer is here does a changed response make way for it.
            superseded = self.archive.supersede(self.asset, call.parts) if replace_changed else None
            if superseded is not None:
                self.log.info(f"{call.key}: moved the previous response to {superseded}")
            self.archive.keep(self.asset, call.parts, response)
        except StoredResponseConflict as exc:  # (this answer is kept under _rejected/)
            return Outcome(call, Kind.CONFLICT, reason=str(exc), asked=True)
        except StorageFull as exc:
            return Outcome(call, Kind.FAILED, reason=str(exc), error=exc, stops_run=True, asked=True)
        return Outcome(call, Kind.PAID, response=response, superseded=superseded, asked=True)

    def reject(self, call: Call, response: LLMResponse, reason: str) -> Outcome:
        """Keep a paid answer that is not a usable response (cut off, empty, oversized) aside."""
        kept = str(self.archive.keep_rejected(self.asset, call.parts, response, reason))
        return Outcome(
            call, Kind.FAILED, response=response, kept=kept, asked=True,
            reason=f"{reason} It is not stored as the response; it is kept for inspection at {kept}, "
            "and re-running the partition asks the model again.",
        )

    def _settle(self, call: Call, result: LLMResponse | Exception, replace_changed: bool) -> Outcome:
        if isinstance(result, LLMResponse):
            return self.keep(call, result, replace_changed)
        if isinstance(result, SpendingCapReached):
            return Outcome(call, Kind.REFUSED, reason=str(result), error=result, cap_reached=True)
        if isinstance(result, IncompleteResponseError):
            outcome = self.reject(call, result.response, str(result))
            outcome.error = result
            return outcome
        if isinstance(result, LLMError):
            stops = isinstance(result, APIRefusedError)
            return Outcome(call, Kind.FAILED, reason=str(result), error=result, stops_run=stops, asked=True)
        reason = f"{call.request.model_id}: the call failed unexpectedly: {type(result).__name__}: {result}"
        return Outcome(call, Kind.FAILED, reason=reason, error=result)

    def _complete_all(
        self, calls: list[Call], parallel: int, stop: threading.Event | None, wait_for_room: bool = True
    ) -> Iterator[tuple[Call, object]]:
        """Yield (call, LLMResponse | LLMError | SpendingCapReached) as answers arrive. After an error
        the next calls would meet too, or a call the cap refused, or once `stop` is set, no new call
        starts. A call the cap keeps out only while other calls are in flight waits for them."""
        stopping = False
        waiting: list[Call] = []  # a call the cap admits once one of this asker's calls is paid for
        refused: list[tuple[Call, SpendingCapReached]] = []
        pending = iter(calls)
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(calls))), thread_name_prefix="llm") as pool:
            in_flight: dict[Future, Call] = {}

            def fill() -> None:
                nonlocal stopping
                while not stopping and len(in_flight) < max(1, parallel):
                    if stop is not None and stop.is_set():
                        stopping = True
                        return
                    call = waiting.pop() if waiting else next(pending, None)
                    if call is None:
                        return
                    refusal = self._admit(call, wait=wait_for_room and not in_flight)
                    if refusal is not None and refusal.temporary and in_flight and wait_for_room:
                        waiting.append(call)
                        return
                    if refusal is not None:
                        refused.append((call, refusal))
                        stopping = True
                        return
                    with self._count:
                        self.started += 1
                    in_flight[pool.submit(self._call, call)] = call

            fill()
            while in_flight or refused:
                while refused:
                    yield refused.pop()
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    call = in_flight.pop(future)
                    result = future.result()
                    stopping = stopping or _stops_new_calls(result)
                    yield call, result  # the caller stores the answer and ends its reservation
                fill()

    def _admit(self, call: Call, wait: bool) -> SpendingCapReached | None:
        """None when the call may start (its worst case is reserved), else the cap's refusal. With
        `wait`, a call kept out only by calls in flight elsewhere waits for them."""
        if self.guard is None:
            return None
        try:
            if wait:
                self.guard.admit_when_room(call.key, call.request)
            else:
                self.guard.admit(call.key, call.request)
        except SpendingCapReached as refusal:
            return refusal
        return None

    def _call(self, call: Call) -> LLMResponse | Exception:
        # Any exception comes back as a value: raising here would abandon answers still in flight.
        try:
            return self.client.complete(call.request)
        except Exception as exc:  # noqa: BLE001
            return exc


def _stops_new_calls(result: object) -> bool:
    """An error (not just one bad answer) means the next calls would most likely fail the same way."""
    return isinstance(result, Exception) and not isinstance(result, IncompleteResponseError)


def _stops_the_rest(outcome: Outcome) -> bool:
    return outcome.stops_run or outcome.cap_reached or (
        outcome.kind == Kind.FAILED and outcome.kept is None and _stops_new_calls(outcome.error)
    )


def _paid_provenance(result: object) -> dict | None:
    """What a call that was answered says it cost (an answer kept aside was paid for too)."""
    if isinstance(result, LLMResponse):
        return result.provenance
    if isinstance(result, IncompleteResponseError):
        return result.response.provenance
    return None
