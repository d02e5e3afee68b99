"""The archive of paid answers under one output root, by asset and partition: where each answer
lives, whether a stored one answers a request (and the sentence when it answers another, or no
longer matches its sidecar), storing a new one write-once, moving one aside when it is replaced on
purpose, keeping rejected ones, the claims on calls in flight, and every paid answer's provenance for
accounting. The engine (calls/engine.py) stores through it; the response assets reach it through
the ResponseStore resource. The file-level work is write_once.py's."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from ..llm.requests import LLMRequest, LLMResponse
from .claims import Claims, ClaimTimes
from .layout import claim_path, text_path
from .roots import claim_backend, data_path
from .write_once import (
    StoredResponseConflict,
    archived_provenance,
    keep_rejected,
    mismatched_fields,
    move_aside,
    read_provenance,
    read_stored,
    write_response_once,
)

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


class Archive:
    """The paid answers under `base_path`, with claims on calls in flight lasting `times`.

    Finds the stored answer that answers a request, refuses one that answers another, stores a new
    answer the moment it arrives (so a step that fails later, or a killed process, loses nothing
    paid for), moves a stored answer aside when asked to replace it, keeps rejected answers, and
    reads the provenance sidecars (stored, superseded and rejected) for accounting. Shares the
    layout of `text_path` with the text IO manager, whose write of a step's output then finds the
    answer already stored."""

    def __init__(self, base_path, times: ClaimTimes | None = None) -> None:
        self.base_path = str(base_path)
        self.times = times or ClaimTimes()

    def path(self, asset_name: str, parts: dict[str, str] | str) -> Path:
        return text_path(data_path(self.base_path), asset_name, parts)

    def claim_path(self, asset_name: str, parts: dict[str, str] | str) -> Path:
        return claim_path(self.path(asset_name, parts))

    @classmethod
    def at(cls, base_path) -> Archive:
        """The archive under `base_path`, with claim times from DAYDREAM_CLAIM_* when they are set."""
        return cls(base_path, ClaimTimes.from_env())

    @property
    def claim_wait_s(self) -> float:
        return self.times.wait_s

    def claims(self) -> Claims:
        """The claims on this archive's calls, with this archive's lease and wait times."""
        return Claims(backend=claim_backend(self.base_path), times=self.times)

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
