"""Following and collecting open provider batches (the `daydream run --batch` loop, the
`batches_collect` sensor and `daydream batches` share it).

When a batch has finished, every answer is stored write-once at once, with its usual provenance
plus the batch id, the submission and the batch price factor; an empty or cut-off answer is kept
in `_rejected/` like a live one. Then every claim of the batch is released and its worst case
stops counting against the cap. The partitions that got no usable answer (per-request errors,
an expired or cancelled batch) are simply not stored: the next submission round asks exactly
them again (in a new batch, or live with --retry-live); the others are kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..llm.batch_backend import BatchBackend, BatchState
from ..llm.requests import LLMError
from ..store.archive import Archive
from ..store.batch_ledger import BatchLedger
from ..store.claims import Owner
from ..store.reservations import release_batch
from .batch_submit import reconcile, request_of
from .claiming import Call
from .engine import Engine, Kind


@dataclass
class Collected:
    """What one look at the open batches found: answers stored and partitions to ask again, per
    asset; and the batches still open with their provider state."""

    stored: dict[str, list[str]] = field(default_factory=dict)
    again: dict[str, dict[str, str]] = field(default_factory=dict)  # asset -> key -> why
    open: list[tuple[dict, BatchState | None]] = field(default_factory=list)
    finished: list[dict] = field(default_factory=list)  # ledger records collected in this look

    @property
    def requests_open(self) -> tuple[int, int]:
        """(requests done, requests in total) of the open batches, as their providers report them."""
        done = sum(s.completed + s.failed for _, s in self.open if s is not None)
        total = sum(len(r.get("items", {})) for r, _ in self.open)
        return done, total


def look(backend: BatchBackend, store: Archive, log: Callable[[str], None] = lambda line: None) -> Collected:
    """Poll every open batch of the output root once; collect those that finished."""
    reconcile(backend, store, log=log)
    ledger = BatchLedger(store.base_path)
    out = Collected()
    for record in ledger.open_records():
        if record.get("state") != "submitted":
            out.open.append((record, None))
            continue
        try:
            state = backend.status(record["batch_id"])
        except LLMError as exc:
            log(f"batch {record['batch_id']}: could not be polled ({exc}); trying again later")
            out.open.append((record, None))
            continue
        if not state.finished:
            out.open.append((record, state))
            continue
        try:
            collect(backend, store, record, state, out, log)
        except LLMError as exc:  # its files could not be read now; the answers stay at the provider
            log(f"batch {record['batch_id']}: finished, but could not be collected ({exc}); trying again later")
            out.open.append((record, state))
    return out


def collect(
    backend: BatchBackend, store: Archive, record: dict, state: BatchState, out: Collected, log: Callable[[str], None]
) -> None:
    """Store a finished batch's answers, note its failures, release its claims and reservation."""
    asset, batch_id = record["asset"], record["batch_id"]
    requests = {key: request_of(item) for key, item in record["items"].items()}
    results = backend.collect(batch_id, requests)
    again = dict(results.errors)
    # The answers reach the store the way every paid answer does: through the engine's storing step.
    engine = Engine(store, asset, None, Owner.here(f"batch {batch_id}"), _Lines(log))
    batch = {"batch_id": batch_id, "batch_price_factor": record["price_factor"]}

    def call(key: str) -> Call:
        return Call(key, record["items"][key]["parts"], requests[key])

    for key, answer in results.answers.items():
        answer.provenance.update(batch, batch_submission=record["submission"])
        outcome = engine.keep(call(key), answer)
        if outcome.kind == Kind.PAID:
            out.stored.setdefault(asset, []).append(key)
        else:
            again[key] = outcome.reason
    for key, (answer, reason) in results.rejected.items():
        answer.provenance.update(batch)
        engine.reject(call(key), answer, reason)
        again[key] = reason
    release_claims(store, record)
    if again:
        out.again.setdefault(asset, {}).update(again)
    finished = {**record, "state": "collected", "provider_state": state.status, "collected": time.time(),
                "answered": len(results.answers), "errors": again}
    BatchLedger(store.base_path).write(finished)
    release_batch(Path(store.base_path), record["submission"])
    out.finished.append(finished)
    tail = f", {len(again)} to ask again (first: {next(iter(again.values()))})" if again else ""
    log(f"batch {batch_id} ({record['model_id']}, {state.status}): {len(results.answers)} answer(s) stored{tail}")


def release_claims(store: Archive, record: dict) -> None:
    """Delete the claims this batch holds (not one another asker took over after it ran out)."""
    claims = store.claims()
    for item in record["items"].values():
        path = store.claim_path(record["asset"], item["parts"])
        found = claims.backend.read(path)
        if found is None:
            continue
        held = claims.holder(path)
        batch = (held.record.get("batch") or {}) if held else {}
        if held is None or batch.get("submission") == record["submission"] or batch.get("id") == record.get("batch_id"):
            claims.backend.delete(path, found[1])


def cancel(backend: BatchBackend, store: Archive, batch_id: str) -> str:
    """Cancel an open batch (what it already answered is still collected); one line saying what happened."""
    ledger = BatchLedger(store.base_path)
    record = next((r for r in ledger.open_records() if batch_id in (r.get("batch_id"), r["submission"])), None)
    if record is None or not record.get("batch_id"):
        return f"no open batch {batch_id} under {store.base_path}; `daydream batches` lists them."
    state = backend.cancel(record["batch_id"])
    out = Collected()
    if state.finished:
        collect(backend, store, record, state, out, lambda line: None)
    return f"batch {record['batch_id']}: {state.status}; its unanswered partitions are free to ask again."


class _Lines:
    """A log of lines for the engine (what collection says goes where the caller's lines go)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.info = self.warning = log
