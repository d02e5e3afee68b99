"""Claims on paid calls: at most one process at a time asks a model for one response.

Before a call for a response, its asker takes a claim on it: a small JSON file next to the
response (`.NAME.claim.json`) created only if absent, naming the owner (host, pid, run id), the
request and a lease expiry. The owner renews the lease while the call is in flight and deletes the
claim once the answer is stored or the call failed. Anyone else who wants that response finds the
claim and waits for the answer instead of paying for it again. A claim whose lease ran out (its
owner was killed, or its machine lost) is taken over, and the takeover names the dead owner.

Every claim operation is one of four conditional operations on a `ClaimBackend`: create if
absent, read (with a version), replace if the version still matches, delete if the version still
matches. Object stores offer exactly these as conditional writes (`If-None-Match: *`, `If-Match:
<etag>`), so a backend for one slots in here; `LocalClaimFiles` implements them on a local or
shared POSIX folder. Leases use wall-clock time: machines that share a folder need clocks that
agree to well within a lease."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .files import claimed
from .roots import space_for

DEFAULT_LEASE_S = 60.0
DEFAULT_RENEW_S = 15.0
DEFAULT_WAIT_S = 600.0
DEFAULT_POLL_S = 1.0
# Environment variables that override the defaults (tests shorten them; see ClaimTimes.from_env).
TIME_VARIABLES = {
    "lease_s": "DAYDREAM_CLAIM_LEASE_S",
    "renew_s": "DAYDREAM_CLAIM_RENEW_S",
    "wait_s": "DAYDREAM_CLAIM_WAIT_S",
    "poll_s": "DAYDREAM_CLAIM_POLL_S",
}


class ClaimBackend(Protocol):
    """The four conditional operations claims need. A version is an opaque token that changes
    with every write (a content digest here; an ETag or generation number on object storage)."""

    def create(self, path: Path, data: bytes) -> str | None:
        """Write `data` at `path` only if nothing is there; its version, or None when something is."""

    def read(self, path: Path) -> tuple[bytes, str] | None:
        """What is at `path` and its version; None when nothing is."""

    def replace(self, path: Path, data: bytes, version: str) -> str | None:
        """Overwrite `path` only if it still holds `version`; the new version, or None."""

    def delete(self, path: Path, version: str) -> bool:
        """Remove `path` only if it still holds `version`; whether it did."""


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Errors of file systems that cannot make hard links; claims there are created with O_EXCL instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


class LocalClaimFiles:
    """Claims as files in a local (or NFS) folder.

    A claim is created whole or not at all: written to a private temp file, then hard-linked to its
    name, which fails if the name exists (the exclusive create, and no reader ever sees half a
    claim). Replace and delete hold the folder's write lock of that file (see files.claimed) while
    they compare versions, so two of them never interleave; create needs no lock, since it only
    acts where nothing is. Claims are not fsynced: after a power cut their owners are gone too."""

    def create(self, path: Path, data: bytes) -> str | None:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        with space_for(path, len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return self._create_exclusive(path, data)
        finally:
            tmp.unlink(missing_ok=True)
        return _version(data)

    @staticmethod
    def _create_exclusive(path: Path, data: bytes) -> str | None:
        # Readers may see this file empty for a moment; Claims treats an unreadable claim as one
        # being written and looks again before judging it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return None
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return _version(data)

    def read(self, path: Path) -> tuple[bytes, str] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data, _version(data)

    def replace(self, path: Path, data: bytes, version: str) -> str | None:
        with claimed(path) as fd:
            current = self.read(path)
            if current is None or current[1] != version:
                return None
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(path.parent / f".{path.name}.writing.tmp", path)
        return _version(data)

    def delete(self, path: Path, version: str) -> bool:
        with claimed(path):
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            path.unlink()
        return True


@dataclass(frozen=True)
class ClaimTimes:
    """How long a claim lasts unrenewed, how often its owner renews it, how long another asker
    waits for a live owner's answer before giving up on that partition, and how often it looks."""

    lease_s: float = DEFAULT_LEASE_S
    renew_s: float = DEFAULT_RENEW_S
    wait_s: float = DEFAULT_WAIT_S
    poll_s: float = DEFAULT_POLL_S

    def __post_init__(self) -> None:
        if not 0 < self.renew_s < self.lease_s:
            raise ValueError(
                f"a claim's renewal interval ({self.renew_s:g} s) must be positive and shorter than its "
                f"lease ({self.lease_s:g} s), or a live owner would lose its claim."
            )

    @classmethod
    def from_env(cls, environ: dict | None = None) -> ClaimTimes:
        """The defaults, each overridden by its DAYDREAM_CLAIM_* variable when that is set."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable in TIME_VARIABLES.items():
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"{variable} is {raw!r}; give a number of seconds.") from None
        return cls(**values)


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a process on a host, working for a Dagster run."""

    host: str
    pid: int
    run_id: str

    @classmethod
    def here(cls, run_id: str) -> Owner:
        return cls(socket.gethostname(), os.getpid(), run_id)

    @staticmethod
    def describe(record: dict) -> str:
        """How a message names the owner recorded in a claim."""
        return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (run {record.get('run_id', '?')})"


@dataclass
class Claim:
    """A claim this process holds. `took_over` is the expired claim it replaced, if any."""

    path: Path
    record: dict
    version: str
    took_over: dict | None = None

    def takeover_sentence(self, key: str, earlier_answer_stored: bool = False) -> str:
        """One sentence for the log when this claim replaced an expired one (see `took_over`) and the
        model is asked: no answer to this request is stored. `earlier_answer_stored`: one to an
        earlier version of the request is (a --replace-changed run replaces it)."""
        dead = self.took_over
        if not dead:
            return f"{key}: took over an unreadable claim at {self.path}; asking the model"
        ago = max(0.0, time.time() - float(dead.get("expires_at", time.time())))
        why = (
            "the answer stored is to an earlier version of the request"
            if earlier_answer_stored
            else "no answer to this request was stored"
        )
        return (
            f"{key}: took over the claim of {Owner.describe(dead)}, whose lease ran out {ago:.0f} s ago "
            f"(that process was killed or its machine lost); asking the model again, since {why}"
        )


@dataclass(frozen=True)
class Held:
    """Someone else's live claim, as read."""

    record: dict

    @property
    def owner(self) -> str:
        return Owner.describe(self.record)


class Claims:
    """Take, renew and release claims through a ClaimBackend, with leases of `times.lease_s`."""

    def __init__(
        self, backend: ClaimBackend | None = None, times: ClaimTimes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = backend or LocalClaimFiles()
        self.times = times or ClaimTimes()
        self.clock = clock

    def _record(self, owner: Owner, subject: dict, token: str, taken_at: float) -> dict:
        now = self.clock()
        return {
            **subject,
            "host": owner.host,
            "pid": owner.pid,
            "run_id": owner.run_id,
            "token": token,
            "taken_at": taken_at,
            "renewed_at": now,
            "expires_at": now + self.times.lease_s,
        }

    @staticmethod
    def _encode(record: dict) -> bytes:
        return json.dumps(record, sort_keys=True).encode("utf-8")

    def _current(self, path: Path) -> tuple[dict | None, str] | None:
        """The claim at `path` as (record, version); record None when unreadable. None when absent."""
        for attempt in range(3):
            found = self.backend.read(path)
            if found is None:
                return None
            try:
                record = json.loads(found[0])
                if isinstance(record, dict) and "expires_at" in record:
                    return record, found[1]
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
            time.sleep(0.05 * (attempt + 1))  # an exclusive create may still be writing it
        return None, found[1]

    def expired(self, record: dict | None) -> bool:
        """Whether a claim's lease ran out (an unreadable claim counts as expired: it has no owner
        anyone could wait for)."""
        try:
            return record is None or float(record["expires_at"]) <= self.clock()
        except (TypeError, ValueError, KeyError):
            return True

    def take(self, path: Path, owner: Owner, subject: dict) -> Claim | Held:
        """This process's claim on `path` (taking over an expired one), or the live one that
        someone else holds. `subject` says what the claim is for (asset, partition, request)."""
        token = uuid.uuid4().hex
        while True:
            record = self._record(owner, subject, token, self.clock())
            data = self._encode(record)
            version = self.backend.create(path, data)
            if version is not None:
                return Claim(path, record, version)
            current = self._current(path)
            if current is None:
                continue  # released between our create and our read: try again
            held, held_version = current
            if not self.expired(held):
                return Held(held)
            version = self.backend.replace(path, data, held_version)
            if version is not None:
                return Claim(path, record, version, took_over=held or {})
            # Someone else renewed, released or took it over first: look again.

    def holder(self, path: Path) -> Held | None:
        """The live claim on `path`, or None when there is none (absent or expired)."""
        current = self._current(path)
        if current is None or self.expired(current[0]):
            return None
        return Held(current[0])

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when the claim is no longer ours (taken over after it expired)."""
        record = {**claim.record, "renewed_at": self.clock(), "expires_at": self.clock() + self.times.lease_s}
        version = self.backend.replace(claim.path, self._encode(record), claim.version)
        if version is None:
            return False
        claim.record, claim.version = record, version
        return True

    def release(self, claim: Claim) -> bool:
        """Delete the claim if it is still ours; False when someone took it over meanwhile."""
        return self.backend.delete(claim.path, claim.version)
