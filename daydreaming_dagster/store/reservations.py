"""In-flight reservations under a spending cap: one file per paid call under way, holding the call's
worst-case cost, so every process that checks the cap also counts the calls the others have in
flight (`<output root>/.spend/in_flight/`).

A reservation is created (exclusively, `O_EXCL`) while the spending lock is held, before the call
starts, and removed once the answer is stored (or the call ended without one). Because the answer's
sidecar is written before its reservation goes, a checker that lists the reservations first and
the sidecars after (under the lock) counts every call at least once. A reservation whose process
is gone (on this host), or that is older than `STALE_AFTER_S` (another host), no longer counts."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .files import lock_fd
from .roots import data_path, is_remote, space_for

FOLDER = ".spend"
# One line per call admitted under a cap, its worst case: lets a check that just counted everything
# bound what happened since by reading only the lines after it (see admissions_since).
ADMISSIONS = "admitted.log"
# A call retries for at most ~15 minutes (6 attempts of 120 s plus backoff); a reservation of
# another host that is much older than that belongs to a process that died.
STALE_AFTER_S = 6 * 3600.0
_HOST = socket.gethostname()


def spend_folder(root: Path) -> Path:
    return data_path(root) / FOLDER


@contextlib.contextmanager
def spending_lock(root: Path) -> Iterator[None]:
    """Hold the output root's spending lock: checks and new reservations happen one at a time."""
    folder = spend_folder(root)
    if is_remote(folder):
        from .object_spend import object_spending_lock

        with object_spending_lock(folder):
            yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        lock_fd(fd, folder / "lock")  # refuses where the file system cannot lock
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Reservation:
    """One call under way: its worst-case cost (None: unknown) and whose it is."""

    path: Path
    worst_usd: float | None
    model_id: str
    what: str
    pid: int
    host: str
    created: float


def reserve(root: Path, worst_usd: float | None, model_id: str, what: str) -> Reservation:
    """Record a call about to start (hold `spending_lock` while checking and reserving)."""
    folder = spend_folder(root) / "in_flight"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "worst_usd": worst_usd,
        "model_id": model_id,
        "what": what,
        "pid": os.getpid(),
        "host": _HOST,
        "created": time.time(),
    }
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex}.json"
    if is_remote(path):
        path.write_bytes(json.dumps(record).encode("utf-8"))  # a fresh uuid: no one else writes it
        _log_admission(root, worst_usd)
        return Reservation(path=path, **record)
    with space_for(path, 256):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, json.dumps(record).encode("utf-8"))
        finally:
            os.close(fd)
    _log_admission(root, worst_usd)
    return Reservation(path=path, **record)


def record_excess(root: Path, usd: float) -> None:
    """An answer cost `usd` more than the worst case it was admitted at: a line of the admissions log
    as well (hold `spending_lock`), so a bound built from the log stays an upper bound."""
    _log_admission(root, usd)


def _log_admission(root: Path, worst_usd: float | None) -> None:
    line = f"{'nan' if worst_usd is None else repr(float(worst_usd))}\n".encode()
    if is_remote(spend_folder(root)):
        from .object_spend import append_line

        return append_line(spend_folder(root) / ADMISSIONS, line)
    fd = os.open(spend_folder(root) / ADMISSIONS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def admissions_end(root: Path) -> int:
    if is_remote(spend_folder(root)):
        from .object_spend import log_end

        return log_end(spend_folder(root) / ADMISSIONS)
    try:
        return os.stat(spend_folder(root) / ADMISSIONS).st_size
    except FileNotFoundError:
        return 0


def admissions_since(root: Path, offset: int) -> tuple[float, int]:
    """The worst cases of every call admitted after byte `offset` of the admissions log (NaN if one
    is unknown), and the log's end: read under `spending_lock`, it bounds what was paid or put in
    flight since a check that saw the log end at `offset`."""
    path = spend_folder(root) / ADMISSIONS
    if is_remote(path):
        from .object_spend import log_since

        data = log_since(path, offset)
        if data is None:
            return 0.0, 0
        return sum(float(line) for line in data.split()), offset + len(data)
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return 0.0, 0
    return sum(float(line) for line in data.split()), offset + len(data)


def release(reservation: Reservation) -> None:
    """The call is over and its answer (if any) is stored: it no longer counts as in flight."""
    reservation.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0 or -1) would ask about a whole group of processes
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(r: Reservation, now: float) -> bool:
    if r.host == _HOST:
        return not _alive(r.pid)
    return now - r.created > STALE_AFTER_S


def in_flight(root: Path) -> list[Reservation]:
    """The calls under way now, as reservations (submitted batches included); those of dead
    processes are removed."""
    folder = spend_folder(root) / "in_flight"
    if is_remote(folder):
        entries = list(folder.iterdir())
    elif folder.is_dir():
        entries = os.scandir(folder)
    else:
        return batch_reservations(root)
    now, live = time.time(), batch_reservations(root)
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        path = Path(entry.path) if isinstance(entry, os.DirEntry) else entry
        try:
            reservation = Reservation(path=path, **json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue  # released while we listed
        except (OSError, ValueError, TypeError):
            # Reservations are written under the lock, so a damaged one was left by a process that
            # died while writing it (its pid starts the name), or it counts at an unknown cost.
            pid = entry.name.split("-", 1)[0]
            reservation = Reservation(path, None, "unknown", "unreadable reservation", int(pid) if pid.isdigit() else -1, _HOST, now)
        if _stale(reservation, now):
            release(reservation)
        else:
            live.append(reservation)
    return live


# Batch reservations (`.spend/batched/<submission>.json`) count like those of live calls but are
# not tied to a process: a batch stays in flight at its worst case after its submitter
# exits, until its answers are stored.
BATCHED = "batched"


def reserve_batch(root: Path | str, submission: str, worst_usd: float | None, model_id: str) -> None:
    """Count a submitted batch at its worst case against the cap until it is collected."""
    made = reserve(Path(root), worst_usd, model_id, f"batch {submission}")
    folder = spend_folder(Path(root)) / BATCHED
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(made.path, folder / f"{submission}.json")


def release_batch(root: Path | str, submission: str) -> None:
    (spend_folder(Path(root)) / BATCHED / f"{submission}.json").unlink(missing_ok=True)


def batch_reservations(root: Path | str) -> list[Reservation]:
    """The submitted batches not yet collected, each at its worst case (none on object storage,
    where batch mode is refused: see batch_ledger.BatchLedger.refuse_remote)."""
    if is_remote(data_path(root)):
        return []
    folder = spend_folder(Path(root)) / BATCHED
    if not folder.is_dir():
        return []
    out = []
    for entry in os.scandir(folder):
        try:
            record = json.loads(Path(entry.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append(Reservation(path=Path(entry.path), **record))
    return out
