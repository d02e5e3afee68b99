"""The archive of paid responses, as the response assets see it before deciding to call an LLM."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import dagster as dg

from ..llm.requests import LLMRequest, LLMResponse
from ..store.claims import DEFAULT_LEASE_S, DEFAULT_POLL_S, DEFAULT_RENEW_S, DEFAULT_WAIT_S, Claims, ClaimTimes
from ..store.layout import claim_path, text_path
from ..store.responses import (
    StoredResponseConflict,
    archived_provenance,
    keep_rejected,
    mismatched_fields,
    move_aside,
    read_provenance,
    read_stored,
    write_response_once,
)
from ..store.roots import claim_backend, data_path

# How a fingerprint field reads in a sentence.
_FIELD_WORDS = {
    "prompt_sha256": "prompt",
    "model_id": "model id",
    "model": "provider model",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "replicate": "replicate",
}


def conflict_message(asset_name: str, partition: str, path: Path, differing: list[str]) -> str:
    """One sentence: the stored response belongs to another request, it is kept, and how to replace it."""
    if differing == ["provenance (no sidecar)"]:
        what = "a response whose provenance sidecar is missing, so it cannot be matched to this request"
    elif differing == ["content"]:
        what = "a response whose text no longer matches the digest in its sidecar or the length it records (edited or cut short)"
    else:
        fields = [_FIELD_WORDS.get(f, f) for f in differing if f != "content"]
        what = f"a response to another {', '.join(fields)}"
    return (
        f"{asset_name} partition '{partition}' already has {what} ({path}); it is kept and not paid for "
        f"again. To replace it deliberately, re-run with replace_changed: `daydream run --replace-changed`, "
        f'or run config {{"ops": {{"{asset_name}": {{"config": {{"replace_changed": true}}}}}}}}; '
        "the old response then moves to _superseded/ once the new one has arrived."
    )


def mismatch_message(asset_name: str, partition: str, path: Path, reason: str) -> str:
    """One sentence: a stored answer does not match its sidecar, is not used, and how to go on."""
    return (
        f"{asset_name} partition '{partition}': the stored answer {path} does not match its sidecar ({reason}), "
        "so it is not used; re-ask it with `daydream run --replace-changed` (the old file then moves to "
        "_superseded/), or restore the file."
    )


class ResponseStore(dg.ConfigurableResource):
    """The paid-response archive, as the response assets see it around an LLM call.

    Finds the stored response that answers a request, refuses one that answers another, stores a
    new answer the moment it arrives (so a step that fails later, or a killed process, loses
    nothing paid for), moves a stored response aside when asked to replace it, keeps rejected
    answers, and reads the provenance sidecars (stored, superseded and rejected) for accounting.
    Shares `base_path` and the layout of `text_path` with TextIOManager, whose write of the
    step's output then finds the answer already stored.

    Calls are claimed through it (see store/claims.py), so two runs never pay for one response."""

    base_path: str
    claim_lease_s: float = DEFAULT_LEASE_S
    """A claim on a call lasts this long unless its owner renews it; a dead owner's claim is taken
    over after it."""
    claim_renew_s: float = DEFAULT_RENEW_S
    """How often the owner of a claim renews it while its call is in flight."""
    claim_wait_s: float = DEFAULT_WAIT_S
    """How long a run waits for the answer of a call another live run has claimed, before it fails
    that partition (a later re-run reuses the answer)."""
    claim_poll_s: float = DEFAULT_POLL_S
    """How often a waiting run looks for that answer."""

    def path(self, asset_name: str, parts: dict[str, str] | str) -> Path:
        return text_path(data_path(self.base_path), asset_name, parts)

    def claim_path(self, asset_name: str, parts: dict[str, str] | str) -> Path:
        return claim_path(self.path(asset_name, parts))

    @classmethod
    def at(cls, base_path: str) -> ResponseStore:
        """The archive under `base_path`, with claim times from DAYDREAM_CLAIM_* when they are set."""
        times = ClaimTimes.from_env()
        return cls(
            base_path=base_path,
            claim_lease_s=times.lease_s,
            claim_renew_s=times.renew_s,
            claim_wait_s=times.wait_s,
            claim_poll_s=times.poll_s,
        )

    def claims(self) -> Claims:
        """The claims on this archive's calls, with this resource's lease and wait times."""
        times = ClaimTimes(self.claim_lease_s, self.claim_renew_s, self.claim_wait_s, self.claim_poll_s)
        return Claims(backend=claim_backend(self.base_path), times=times)

    def reusable(
        self, asset_name: str, parts: dict[str, str] | str, request: LLMRequest, replace_changed: bool
    ) -> LLMResponse | None:
        """The stored response when it answers exactly this request; None when there is none to reuse.

        A stored response for another prompt, model or parameters, or one whose text no longer
        matches its sidecar (length or digest: see read_stored), is never reused or overwritten: without
        `replace_changed` this raises StoredResponseConflict; with it this returns None, and the
        caller moves the old response aside (`supersede`) once the new answer has arrived."""
        path = self.path(asset_name, parts)
        stored = read_stored(path)
        if stored is None:
            return None
        differing = mismatched_fields(stored.provenance, request.fingerprint())
        if stored.mismatch is not None:
            differing.append("content")
        if not differing:
            return LLMResponse(text=stored.data.decode("utf-8"), provenance=stored.provenance)
        if replace_changed:
            return None
        partition = parts if isinstance(parts, str) else "|".join(parts[d] for d in sorted(parts))
        raise StoredResponseConflict(conflict_message(asset_name, partition, path, differing))

    def keep(self, asset_name: str, parts: dict[str, str] | str, response: LLMResponse) -> bool:
        """Store a new answer now (write-once; see write_response_once); False if already stored."""
        return write_response_once(self.path(asset_name, parts), response.text, response.provenance)

    def supersede(self, asset_name: str, parts: dict[str, str] | str) -> Path | None:
        """Move the stored response of this partition to `_superseded/`; its new path, or None."""
        return move_aside(self.path(asset_name, parts))

    def keep_rejected(self, asset_name: str, parts, response: LLMResponse, reason: str) -> Path:
        return keep_rejected(self.path(asset_name, parts), response.text, response.provenance, reason)

    def provenance(self, asset_name: str, parts: dict[str, str] | str) -> dict | None:
        """The sidecar of the stored response of this partition; None when no response is stored."""
        path = self.path(asset_name, parts)
        if not path.is_file():
            return None
        return read_provenance(path) or {}

    def paid_calls(self, asset_name: str, partitions: Iterable[dict[str, str] | str]) -> Iterator[tuple[str, dict]]:
        """Every paid answer kept for these partitions: ("stored" | "superseded" | "rejected", provenance)."""
        paths = []
        for parts in partitions:
            path = self.path(asset_name, parts)
            paths.append(path)
            provenance = self.provenance(asset_name, parts)
            if provenance is not None:
                yield "stored", provenance
        for _, kind, provenance in archived_provenance(paths):
            yield kind, provenance
