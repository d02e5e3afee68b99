"""The write-once archive of paid responses: store an answer with its provenance sidecar, never
overwrite a different one, move one aside when it is deliberately replaced, keep rejected answers,
and read every sidecar back for accounting. Nothing that was paid for is ever deleted."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from .files import atomic_write_bytes, claimed, fill, fsync_folder
from .layout import REJECTED, SIDECAR_SUFFIX, SUPERSEDED, sidecar_path, temp_path
from .roots import data_path, is_remote, space_for

# The fields that must match for a stored response to count as the answer to the current request.
# `replicate` is absent (None) for replicate 1, in requests and in sidecars written before it existed.
FINGERPRINT_FIELDS = ("model_id", "model", "temperature", "max_tokens", "prompt_sha256", "replicate")


class StoredResponseConflict(RuntimeError):
    """A stored response exists that does not belong to the request about to be made."""


def read_provenance(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not is_remote(side) and not side.is_file():
        return None  # (on object storage the read below answers that in one request)
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, FileNotFoundError):
        return None


class StoredText(NamedTuple):
    """A stored response as read: its bytes, its sidecar, and why they do not match (None: they do)."""

    data: bytes
    provenance: dict | None
    mismatch: str | None


def read_stored(path: Path) -> StoredText | None:
    """The response stored at `path` (a local path or an S3Path), checked against its sidecar: the
    one place a stored answer is verified. None when no response is stored there.

    The text must be as long as the sidecar's `response_bytes` and have its `response_sha256`; a
    sidecar that records neither (written before they existed), or none at all, has nothing to check
    against and counts as matching. Text first, then sidecar (the order a replacement moves them in
    reverse); a mismatch is read once more, so a replacement finishing in between is not taken for one."""
    for _ in range(2):
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        provenance = read_provenance(path)
        mismatch = _mismatch(data, provenance)
        if mismatch is None:
            break
    return StoredText(data, provenance, mismatch)


def verify_stored(path: Path) -> str | None:
    """Why the response stored at `path` does not match its sidecar; None when it does, or when none is stored."""
    stored = read_stored(path)
    return None if stored is None else stored.mismatch


def _mismatch(data: bytes, provenance: dict | None) -> str | None:
    recorded = (provenance or {}).get("response_bytes")
    if isinstance(recorded, int) and recorded != len(data):
        return f"{len(data):,} bytes where its sidecar records {recorded:,}"
    digest = (provenance or {}).get("response_sha256")
    if digest and digest != hashlib.sha256(data).hexdigest():
        return "its sha256 is not the one its sidecar records"
    return None


def unverified(paths: Mapping[str, Path]) -> dict[str, str]:
    """The keys of `paths` whose stored response does not match its sidecar, with the reason."""
    return {key: reason for key, path in paths.items() if (reason := verify_stored(path)) is not None}


def mismatched_fields(provenance: dict | None, fingerprint: dict) -> list[str]:
    """Which fingerprint fields of a stored response differ from the request (all, if unknown)."""
    if provenance is None:
        return ["provenance (no sidecar)"]
    return [f for f in FINGERPRINT_FIELDS if provenance.get(f) != fingerprint.get(f)]


def content_digest(data: bytes) -> dict:
    """What a sidecar records about its response file, so anyone can check the file is whole."""
    return {"response_sha256": hashlib.sha256(data).hexdigest(), "response_bytes": len(data)}


def _sidecar_bytes(provenance: dict) -> bytes:
    return (json.dumps(provenance, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_response_once(path: Path, text: str, provenance: dict) -> bool:
    """Store a paid response and its sidecar; never overwrite a different stored response.

    Returns False when the identical response is already stored (nothing written). When a different
    one is stored, this response is kept under `_rejected/` and StoredResponseConflict is raised.
    Both files are fully written before either is renamed into place; the sidecar goes first, so
    a response counts as stored only once its text exists, and then its sidecar exists too."""
    if is_remote(path):
        from .object_archive import write_object_once

        return write_object_once(path, text, provenance, _sidecar_bytes({**provenance, **content_digest(text.encode())}))
    path = Path(path)
    data = text.encode("utf-8")
    record = {**provenance, **content_digest(data)}
    side = sidecar_path(path)
    with space_for(path, len(data) + len(_sidecar_bytes(record))), claimed(path) as text_fd:
        if path.exists():
            return settle_existing(path, path.read_text(encoding="utf-8"), text, provenance)
        with claimed(side) as side_fd:
            fill(side_fd, _sidecar_bytes(record))
            fill(text_fd, data)
            os.replace(temp_path(side), side)
            try:
                os.replace(temp_path(path), path)
            except BaseException:
                side.unlink(missing_ok=True)  # it describes a response that was not stored
                raise
        fsync_folder(path.parent)
    return True


def settle_existing(path: Path, stored: str, text: str, provenance: dict) -> bool:
    """A response arrived for `path` where `stored` already is: False when it is the same answer
    to the same request; otherwise keep the new one under `_rejected/` and raise the conflict."""
    if stored == text and not mismatched_fields(read_provenance(path), provenance):
        return False
    reason = f"a different response was already stored at {path} when this one arrived"
    kept = keep_rejected(path, text, provenance, reason)
    raise StoredResponseConflict(
        f"{path} already holds a different response; it is never overwritten. The new answer "
        f"is kept at {kept}. To replace the stored one, re-run deliberately with replace_changed."
    )


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def move_aside(path: Path) -> Path | None:
    """Move a stored response (and its sidecar) to `_superseded/<name>.<n>.txt` (+ `.json`).

    Returns the new path, or None when nothing is stored. Never overwrites an earlier one."""
    if is_remote(path):
        from .object_archive import move_object_aside

        return move_object_aside(path)
    path = Path(path)
    folder = path.parent / SUPERSEDED
    with claimed(path):
        if not path.exists():
            return None
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while any((folder / f"{path.stem}.{n}{suffix}").exists() for suffix in (path.suffix, SIDECAR_SUFFIX)):
            n += 1
        target = folder / f"{path.stem}.{n}{path.suffix}"
        side = sidecar_path(path)
        # Sidecar first: a crash in between leaves the text in place without a sidecar, which
        # counts as a response of unknown provenance (never reused, never overwritten).
        if side.exists():
            os.replace(side, sidecar_path(target))
        os.replace(path, target)
        fsync_folder(folder)
        fsync_folder(path.parent)
    return target


def keep_rejected(path: Path, text: str, provenance: dict, reason: str) -> Path:
    """Keep an answer that is not stored as the response (empty, truncated, ...) for inspection,
    at `_rejected/<name>.<timestamp>.txt` (+ `.json` with `rejected_because`)."""
    path = path if is_remote(path) else Path(path)
    target = path.parent / REJECTED / f"{path.stem}.{_timestamp()}{path.suffix}"
    data = text.encode("utf-8")
    record = {**provenance, **content_digest(data), "rejected_because": reason}
    atomic_write_bytes(sidecar_path(target), _sidecar_bytes(record))
    atomic_write_bytes(target, data)
    return target


def archived_provenance(paths: list[Path]) -> Iterator[tuple[Path, str, dict]]:
    """The sidecars kept aside for the responses at `paths`: (response path, "superseded" or
    "rejected", provenance), reading each `_superseded/` and `_rejected/` folder once."""
    by_folder: dict[Path, dict[str, Path]] = {}
    for path in paths:
        path = data_path(path)
        by_folder.setdefault(path.parent, {})[path.stem] = path
    for folder, by_stem in by_folder.items():
        for kind, sub in (("superseded", SUPERSEDED), ("rejected", REJECTED)):
            archive = folder / sub
            if is_remote(archive):
                entries = sorted(archive.iterdir(), key=lambda e: e.name)
            elif archive.is_dir():
                entries = sorted(os.scandir(archive), key=lambda e: e.name)
            else:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(SIDECAR_SUFFIX):
                    continue
                # <stem>.<n or timestamp>.json
                stem = entry.name[: -len(SIDECAR_SUFFIX)].rsplit(".", 1)[0]
                if stem not in by_stem:
                    continue
                try:
                    source = Path(entry.path) if isinstance(entry, os.DirEntry) else entry
                    provenance = json.loads(source.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                yield by_stem[stem], kind, provenance
