"""The claims the engine holds on its paid calls (see store/claims.py) for one asker (a response
step, the head start, a batch submission).

The engine claims every call it has to make before making it; one whose claim another live asker
holds is not made but waited for, and its answer reused when it is stored (one a provider batch
holds is not waited for: it is left to the batch, see calls/batches.py). Claims are renewed while
the calls are in flight, released as each answer is stored or its call fails, and all released when
the asker is done, however it ends."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..llm.requests import LLMRequest, LLMResponse
from ..store.claims import Claim, Held, Owner
from ..store.heartbeat import Heartbeat
from ..store.write_once import StoredResponseConflict


class Log(Protocol):
    """Where the engine says what it does (a Dagster step's log, or a line on stderr)."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


@dataclass(frozen=True)
class Call:
    """One partition's paid call: its partition key, where its answer is stored (the archive's
    parts of the partition), and what to ask which model."""

    key: str
    parts: dict[str, str] | str
    request: LLMRequest


def held_message(asset_name: str, key: str, owner: str, waited_s: float) -> str:
    """One sentence: another live run (or a provider batch) is paying for this partition's answer;
    re-run later to reuse it."""
    if "(run batch " in owner:  # see calls/batch_submit.py: a batch's claim names it as its run
        batch = owner.split("(run batch ", 1)[1].rstrip(")")
        return (
            f"{asset_name} partition '{key}' is in provider batch {batch}, which holds its claim; it is not asked "
            "live, and its answer is stored and materialized when the batch finishes (`daydream batches` lists "
            "the open batches)."
        )
    return (
        f"{asset_name} partition '{key}' is being asked of the model by {owner}, which still held its "
        f"claim after {waited_s:g} s of waiting; it is not paid for twice, and re-running this partition "
        "once that run has finished reuses its answer."
    )


class CallClaims:
    """The claims of one asker on one asset. A context manager: leaving it releases every claim left.

    After `take` and `wait`, `found` holds the answers that another run stored meanwhile (reused,
    not paid), `conflicts` the partitions whose stored response belongs to another request, and
    `held` the partitions another live run still held after the wait bound (with its owner)."""

    def __init__(self, archive, asset_name: str, owner: Owner, replace_changed: bool, log: Log) -> None:
        self.log = log
        self.responses = archive
        self.asset_name = asset_name
        self.replace_changed = replace_changed
        self.claims = archive.claims()
        self.owner = owner
        self.heartbeat = Heartbeat(self.claims, on_lost=self._lost)
        self.found: dict[str, LLMResponse] = {}
        self.conflicts: dict[str, str] = {}
        self.held: dict[str, str] = {}
        self._mine: dict[str, Claim] = {}
        self._deadlines: dict[str, float] = {}

    def __enter__(self) -> CallClaims:
        return self

    def __exit__(self, *exc_info) -> None:
        self.heartbeat.close()

    def _stored(self, ask: Call) -> bool:
        """Whether the answer is stored now (then it is in `found`); a conflict goes to `conflicts`."""
        try:
            stored = self.responses.reusable(self.asset_name, ask.parts, ask.request, self.replace_changed)
        except StoredResponseConflict as exc:
            self.conflicts[ask.key] = str(exc)
            return True
        if stored is None:
            return False
        self.found[ask.key] = stored
        return True

    def take(self, asks: Sequence[Call]) -> tuple[list[Call], list[Call]]:
        """Claim each ask: (those to call now, those another live run holds)."""
        mine, theirs = [], []
        for ask in asks:
            subject = {"asset": self.asset_name, "partition": ask.key, "request": ask.request.fingerprint()}
            claim = self.claims.take(self.responses.claim_path(self.asset_name, ask.parts), self.owner, subject)
            if isinstance(claim, Held):
                theirs.append(ask)
                continue
            self._mine[ask.key] = claim
            self.heartbeat.add(claim)
            # The previous owner may have stored its answer just before letting go of the claim (or
            # just before it was killed, leaving an expired claim beside the answer): reused, no call.
            if self._stored(ask):
                self.release(ask)
                continue
            if claim.took_over is not None:
                self._log_takeover(ask, claim)
            mine.append(ask)
        return mine, theirs

    def release(self, ask: Call) -> None:
        """Release the claim on `ask` (its answer is stored, or its call failed)."""
        claim = self._mine.pop(ask.key, None)
        if claim is not None:
            self.heartbeat.release(claim)

    def leave(self, asks: Sequence[Call]) -> None:
        """Leave these asks to the other runs that hold them (this step stopped asking): `held`."""
        for ask in asks:
            holder = self.claims.holder(self.responses.claim_path(self.asset_name, ask.parts))
            if not self._stored(ask):
                self.held[ask.key] = holder.owner if holder else "a run that just let it go"

    def wait(self, asks: Sequence[Call]) -> tuple[list[Call], list[Call]]:
        """Wait while other live runs hold these asks, until one is let go or none is left. Returns
        (the asks whose claim was let go, or ran out, without a stored answer: to be taken again;
        the asks still held, to wait for again). The others end in `found`, `conflicts` or (after
        the wait bound) `held`."""
        waiting = {ask.key: ask for ask in asks}
        for key, ask in list(waiting.items()):
            # A provider batch answers within hours, not within the wait bound: left to it at once.
            holder = self.claims.holder(self.responses.claim_path(self.asset_name, ask.parts))
            if holder is not None and holder.record.get("batch"):
                self.held[key] = holder.owner
                del waiting[key]
        if not waiting:
            return [], []
        times = self.claims.times
        now = time.monotonic()
        new = [ask for key, ask in waiting.items() if key not in self._deadlines]
        for ask in new:
            self._deadlines[ask.key] = now + times.wait_s
        if new:  # said once per partition, not again each time another claim is let go
            first = self.claims.holder(self.responses.claim_path(self.asset_name, new[0].parts))
            self.log.info(
                f"{len(new)} {self.asset_name} partition(s) are being asked of the model by another run "
                f"(first: {new[0].key} by {first.owner if first else 'a run that just finished'}); "
                f"waiting up to {times.wait_s:g} s to reuse the answers instead of paying again"
            )
        free: list[Call] = []
        while waiting:
            for key, ask in list(waiting.items()):
                if self._stored(ask):
                    del waiting[key]
                    continue
                holder = self.claims.holder(self.responses.claim_path(self.asset_name, ask.parts))
                if holder is None:
                    free.append(waiting.pop(key))
                elif time.monotonic() >= self._deadlines[key]:
                    self.held[key] = holder.owner
                    del waiting[key]
            if free or not waiting:
                break
            time.sleep(times.poll_s)
        if free:
            self.log.info(
                f"{len(free)} {self.asset_name} partition(s) were let go by their other run without a stored "
                f"answer (first: {free[0].key}); claiming them"
            )
        return free, list(waiting.values())

    def _log_takeover(self, ask: Call, claim: Claim) -> None:
        earlier = self.responses.provenance(self.asset_name, ask.parts) is not None
        self.log.warning(claim.takeover_sentence(ask.key, earlier_answer_stored=earlier))

    def _lost(self, claim: Claim) -> None:
        now = self.claims.holder(claim.path)
        self.log.warning(
            f"the claim at {claim.path} ran out before it was renewed and "
            f"{now.owner if now else 'another run'} took it over; if this call's answer arrives first it is "
            "stored, otherwise it is kept in _rejected/"
        )
