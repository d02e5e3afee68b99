"""Where outputs live on disk and how they are written: atomic, and write-once for paid responses.

Layout under the output root (the data root, or `<data_root>/offline` for offline runs):
  2_tasks/<table>.csv                        experiment tables and task tables
  3_generation/<asset>/<generation_task_id>.txt
  4_evaluation/<asset>/<generation_task_id>/<evaluation_task_id>.txt
  5_results/<table>.csv (and figures)
A response has a `.json` provenance sidecar next to it. Superseded responses move to
`_superseded/` and rejected (empty or truncated) answers to `_rejected/` in the same folder,
so nothing that was paid for is ever deleted."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

FOLDERS = {
    "generation_prompt": "3_generation",
    "generation_response": "3_generation",
    "evaluation_prompt": "4_evaluation",
    "evaluation_response": "4_evaluation",
}
TABLE_FOLDERS = {"results": "5_results"}
DEFAULT_TABLE_FOLDER = "2_tasks"
SIDECAR_SUFFIX = ".json"
# The fields that must match for a stored response to count as the answer to the current request.
FINGERPRINT_FIELDS = ("model_id", "model", "temperature", "max_tokens", "prompt_sha256")


class StoredResponseConflict(RuntimeError):
    """A stored response exists that does not belong to the request about to be made."""


def text_path(root: Path, asset_name: str, keys_by_dimension: dict[str, str] | str | None) -> Path:
    """The file of one partition of a text asset; multi-partition keys nest generation first."""
    folder = Path(root) / FOLDERS.get(asset_name, "other") / asset_name
    if keys_by_dimension is None:
        return folder.with_suffix(".txt")
    if isinstance(keys_by_dimension, str):
        return folder / f"{keys_by_dimension}.txt"
    return folder / keys_by_dimension["generation_tasks"] / f"{keys_by_dimension['evaluation_tasks']}.txt"


def table_path(root: Path, asset_name: str, group: str | None = None) -> Path:
    return Path(root) / TABLE_FOLDERS.get(group or "", DEFAULT_TABLE_FOLDER) / f"{asset_name}.csv"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(SIDECAR_SUFFIX)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and a rename, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_provenance(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def mismatched_fields(provenance: dict | None, fingerprint: dict) -> list[str]:
    """Which fingerprint fields of a stored response differ from the request (all, if unknown)."""
    if provenance is None:
        return ["provenance (no sidecar)"]
    return [f for f in FINGERPRINT_FIELDS if provenance.get(f) != fingerprint.get(f)]


def write_response_once(path: Path, text: str, provenance: dict) -> bool:
    """Store a paid response and its sidecar; never overwrite a different stored response.

    Returns False when the identical response is already stored (nothing written). The sidecar is
    renamed into place before the text: a response counts as stored only once its text exists."""
    if path.exists():
        stored = path.read_text(encoding="utf-8")
        if stored == text and not mismatched_fields(read_provenance(path), provenance):
            return False
        raise StoredResponseConflict(
            f"{path} already holds a different response; it is never overwritten "
            "(re-run deliberately with replace_changed to move it aside first)."
        )
    atomic_write_text(sidecar_path(path), json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path, text)
    return True


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def move_aside(path: Path) -> Path:
    """Move a stored response (and its sidecar) to `_superseded/<name>.<n>.txt`; returns the new path."""
    folder = path.parent / "_superseded"
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while (folder / f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    target = folder / f"{path.stem}.{n}{path.suffix}"
    side = sidecar_path(path)
    if side.exists():
        os.replace(side, sidecar_path(target))
    os.replace(path, target)
    return target


def keep_rejected(path: Path, text: str, provenance: dict, reason: str) -> Path:
    """Keep an answer that is not a good response (empty, truncated) for inspection, out of the way."""
    folder = path.parent / "_rejected"
    target = folder / f"{path.stem}.{_timestamp()}{path.suffix}"
    atomic_write_text(sidecar_path(target), json.dumps({**provenance, "rejected_because": reason}, indent=2, sort_keys=True) + "\n")
    atomic_write_text(target, text)
    return target
