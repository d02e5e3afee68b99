"""What an S3 data root has paid for and has in flight: the object-store halves of spend.py and
reservations.py.

- The ledger lists each paid asset's prefix (one LIST per thousand objects) and reads only the
  sidecars whose ETag it has not seen, so a check before every call reads each sidecar once.
- The spending lock is a claim object (`.spend/lock.json`, claims.Claims over ObjectClaims): held
  by one process at a time, taken over when its holder died and its lease ran out.
- The admissions log is one object, appended to under that lock by a conditional replace, and read
  from an offset with a ranged GET."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

from .claims import Claim, Claims, ClaimTimes, Owner
from .heartbeat import Heartbeat
from .layout import SIDECAR_SUFFIX, asset_folder
from .object_archive import ObjectClaims
from .object_paths import S3Path
from .spend import PAID_ASSETS, Key, Tally, answer_tally

# The spending lock is held for one check and one reservation: seconds, but a first full count of a
# large root reads every sidecar, so the lease is renewed while it is held (see object_spending_lock).
_LOCK_TIMES = ClaimTimes(lease_s=60.0, renew_s=15.0)


class ObjectLedger:
    """The paid answers under one S3 output root, re-read as their sidecars change."""

    def __init__(self, root: S3Path) -> None:
        self.root = root
        self._seen: dict[str, tuple[str, tuple[tuple[str, str], Tally]]] = {}
        self._lock = threading.Lock()

    def tallies(self) -> dict[Key, Tally]:
        with self._lock:
            totals: dict[Key, Tally] = {}
            current = {}
            for asset in PAID_ASSETS:
                folder = asset_folder(self.root, asset)
                objects, _ = folder.store.list(folder.key + "/")
                for key, head in objects:
                    relative = key[len(folder.key) + 1 :]
                    if not key.endswith(SIDECAR_SUFFIX) or any(p.startswith(".") for p in relative.split("/")):
                        continue
                    seen = self._seen.get(key)
                    if seen is None or seen[0] != head.etag:
                        got = folder.store.get(key)
                        if got is None:
                            continue  # moved aside while we listed: its copy is listed or counted next time
                        seen = (got[1], answer_tally(_json(got[0])))
                    current[key] = seen
                    (model_id, backend), tally = seen[1]
                    totals.setdefault((asset, model_id, backend), Tally()).add(tally)
            self._seen = current
            return {k: t for k, t in totals.items() if t.calls}


def _json(data: bytes) -> dict | None:
    try:
        return json.loads(data)
    except ValueError:
        return None


@contextlib.contextmanager
def object_spending_lock(folder: S3Path) -> Iterator[None]:
    """reservations.spending_lock on S3: a claim object on `<folder>/lock.json`, waited for, its lease
    renewed while held (a lock that expired under a slow count would let a second process admit
    calls against the same total)."""
    claims = Claims(ObjectClaims(), _LOCK_TIMES)
    owner = Owner.here("spending-lock")
    pause = 0.02
    while not isinstance(held := claims.take(folder / "lock.json", owner, {"what": "spending lock"}), Claim):
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    heartbeat = Heartbeat(claims)
    heartbeat.add(held)
    try:
        yield
    finally:
        heartbeat.release(held)
        heartbeat.close()


def append_line(log: S3Path, line: bytes) -> None:
    """Append to the log object (under the spending lock; conditional all the same)."""
    store = log.store
    while True:
        got = store.get(log.key)
        if got is None:
            if store.create(log.key, line) is not None:
                return
        elif store.replace(log.key, got[0] + line, got[1]) is not None:
            return


def log_end(log: S3Path) -> int:
    head = log.store.head(log.key)
    return 0 if head is None else head.size


def log_since(log: S3Path, offset: int) -> bytes | None:
    return log.store.get_range(log.key, offset)
