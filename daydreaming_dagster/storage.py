"""Where outputs live on disk and how they are written (atomic, and write-once for paid responses)
and read back (tables, cached).

Layout under the output root (the data root, or `<data_root>/offline` for offline runs):
  2_tasks/<table>.csv                        experiment tables and task tables
  3_generation/<asset>/<generation_task_id>.txt
  4_evaluation/<asset>/<generation_task_id>/<evaluation_task_id>.txt
  5_results/<table>.csv (and figures)
A response has a `.json` provenance sidecar next to it. Superseded responses move to
`_superseded/` and answers that were paid for but not stored as the response (empty, truncated,
or beaten to the file by another run) go to `_rejected/` in the same folder, so nothing that was
paid for is ever deleted.

Every file is written through a temp file `.NAME.writing.tmp` beside it and a rename, so a reader
sees the old file or the new one, never half of one. The writer holds an exclusive lock on that
temp file (POSIX `flock`) while it checks and writes, so two runs writing the same response
cannot both store one; a killed writer's lock dies with it, and the next write of the same file
reuses its leftover temp file instead of leaving it behind. Temp names end in `.tmp` and start
with a dot: nothing that looks for `*.txt` responses can mistake them for one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename still keeps writes atomic
    fcntl = None

FOLDERS = {
    "generation_prompt": "3_generation",
    "generation_response": "3_generation",
    "evaluation_prompt": "4_evaluation",
    "evaluation_response": "4_evaluation",
}
TABLE_FOLDERS = {"results": "5_results"}
DEFAULT_TABLE_FOLDER = "2_tasks"
SIDECAR_SUFFIX = ".json"
TEMP_SUFFIX = ".writing.tmp"
SUPERSEDED = "_superseded"
REJECTED = "_rejected"
# The fields that must match for a stored response to count as the answer to the current request.
FINGERPRINT_FIELDS = ("model_id", "model", "temperature", "max_tokens", "prompt_sha256")
# Lock errors of file systems without flock support; writing goes on without the lock there.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class StoredResponseConflict(RuntimeError):
    """A stored response exists that does not belong to the request about to be made."""


def asset_folder(root: Path, asset_name: str) -> Path:
    """The folder holding every partition file of a text asset."""
    return Path(root) / FOLDERS.get(asset_name, "other") / asset_name


def text_path(root: Path, asset_name: str, keys_by_dimension: dict[str, str] | str | None) -> Path:
    """The file of one partition of a text asset; multi-partition keys nest generation first."""
    folder = asset_folder(root, asset_name)
    if keys_by_dimension is None:
        return folder.with_suffix(".txt")
    if isinstance(keys_by_dimension, str):
        return folder / f"{keys_by_dimension}.txt"
    return folder / keys_by_dimension["generation_tasks"] / f"{keys_by_dimension['evaluation_tasks']}.txt"


def table_path(root: Path, asset_name: str, group: str | None = None) -> Path:
    return Path(root) / TABLE_FOLDERS.get(group or "", DEFAULT_TABLE_FOLDER) / f"{asset_name}.csv"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(SIDECAR_SUFFIX)


def temp_path(path: Path) -> Path:
    """The temp file a write of `path` goes through: `.NAME.writing.tmp` in the same folder."""
    return path.parent / f".{path.name}{TEMP_SUFFIX}"


# --------------------------------------------------------------------------- atomic writes


def _lock(fd: int) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_LOCKING:
            raise


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file now at `path` (not one renamed away or unlinked)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[int]:
    """Hold the exclusive right to write `path`: an open, locked, empty `.NAME.writing.tmp`.

    Whoever locks the temp file while it is still in place owns it; a temp file that was renamed
    onto its target (or removed) while we waited for the lock is not ours, so we start over.
    The temp file is removed on the way out unless it was renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd)
            if _is_file_at(fd, tmp):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)  # a killed writer may have left part of a file here
        yield fd
    finally:
        try:
            if _is_file_at(fd, tmp):
                tmp.unlink()
        finally:
            os.close(fd)  # releases the lock


def _fill(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via `.NAME.writing.tmp` in the same folder and a rename: readers see old or new, never half."""
    path = Path(path)
    with _claimed(path) as fd:
        _fill(fd, data)
        os.replace(temp_path(path), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- responses


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
    path = Path(path)
    data = text.encode("utf-8")
    record = {**provenance, **content_digest(data)}
    side = sidecar_path(path)
    with _claimed(path) as text_fd:
        if path.exists():
            stored = path.read_text(encoding="utf-8")
            if stored == text and not mismatched_fields(read_provenance(path), provenance):
                return False
            reason = f"a different response was already stored at {path} when this one arrived"
            kept = keep_rejected(path, text, provenance, reason)
            raise StoredResponseConflict(
                f"{path} already holds a different response; it is never overwritten. The new answer "
                f"is kept at {kept}. To replace the stored one, re-run deliberately with replace_changed."
            )
        with _claimed(side) as side_fd:
            _fill(side_fd, _sidecar_bytes(record))
            _fill(text_fd, data)
            os.replace(temp_path(side), side)
            try:
                os.replace(temp_path(path), path)
            except BaseException:
                side.unlink(missing_ok=True)  # it describes a response that was not stored
                raise
        _fsync_folder(path.parent)
    return True


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def move_aside(path: Path) -> Path | None:
    """Move a stored response (and its sidecar) to `_superseded/<name>.<n>.txt` (+ `.json`).

    Returns the new path, or None when nothing is stored. Never overwrites an earlier one."""
    path = Path(path)
    folder = path.parent / SUPERSEDED
    with _claimed(path):
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
        _fsync_folder(folder)
        _fsync_folder(path.parent)
    return target


def keep_rejected(path: Path, text: str, provenance: dict, reason: str) -> Path:
    """Keep an answer that is not stored as the response (empty, truncated, ...) for inspection,
    at `_rejected/<name>.<timestamp>.txt` (+ `.json` with `rejected_because`)."""
    path = Path(path)
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
        by_folder.setdefault(Path(path).parent, {})[Path(path).stem] = Path(path)
    for folder, by_stem in by_folder.items():
        for kind, sub in (("superseded", SUPERSEDED), ("rejected", REJECTED)):
            archive = folder / sub
            if not archive.is_dir():
                continue
            for entry in sorted(os.scandir(archive), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.name.endswith(SIDECAR_SUFFIX):
                    continue
                # <stem>.<n or timestamp>.json
                stem = entry.name[: -len(SIDECAR_SUFFIX)].rsplit(".", 1)[0]
                if stem not in by_stem:
                    continue
                try:
                    provenance = json.loads(Path(entry.path).read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                yield by_stem[stem], kind, provenance


# Tables are read by many partitions of one run and of many runs in one process; cache by file state.
_TABLE_CACHE: dict[Path, tuple[tuple[int, int], pd.DataFrame]] = {}
_TABLE_CACHE_LOCK = threading.Lock()


def _string_columns(path: Path) -> dict[str, type]:
    header = pd.read_csv(path, nrows=0).columns
    return {c: str for c in header if c == "id" or c.endswith("_id") or c.endswith("_ids") or c == "model" or c.endswith("_model")}


def read_table(path: Path) -> pd.DataFrame:
    """Read a stored CSV table, keeping id and model columns as strings; cached by (mtime, size)."""
    stat = path.stat()
    state = (stat.st_mtime_ns, stat.st_size)
    with _TABLE_CACHE_LOCK:
        cached = _TABLE_CACHE.get(path)
    if cached and cached[0] == state:
        return cached[1].copy()
    df = pd.read_csv(path, dtype=_string_columns(path), keep_default_na=True)
    with _TABLE_CACHE_LOCK:
        _TABLE_CACHE[path] = (state, df)
    return df.copy()
