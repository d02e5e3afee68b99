"""The data root on S3 (or an S3-compatible server): `S3Store`, one bucket's conditional reads and
writes through boto3, and `S3Path`, the pathlib-like name of one object or prefix in it.

Writes that must not overwrite are conditional: create is `PutObject If-None-Match: *`, replace
and delete are `If-Match: <ETag>`; the ETag is the version that claims compare. A PUT is atomic
on S3 (readers see the old object or the new one), so plain writes need no temp object. Before
the first conditional write of a process the store checks that the server honours both
conditions, and refuses to run with one sentence where it does not: a server that ignored them
would silently lose the write-once guarantee.

Credentials, region and endpoint come only from boto3's usual chain (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL, instance roles, ...); nothing here reads,
stores or prints them."""

from __future__ import annotations

import fnmatch
import io
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from .roots import StorageRefused

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:  # the optional `s3` extra
    boto3 = None

_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Head:
    """What S3 says about one object without reading it."""

    size: int
    etag: str
    modified: datetime

    @property
    def st_size(self) -> int:  # as os.stat_result names it
        return self.size


class S3Store:
    """One bucket, through one boto3 client per process (boto3 clients are thread-safe)."""

    def __init__(self, bucket: str) -> None:
        if boto3 is None:
            raise StorageRefused("an s3:// data root needs boto3: install the `s3` extra (uv sync --extra s3).")
        self.bucket = bucket
        # Every run may have DAYDREAM_MAX_CALLS_IN_FLIGHT calls storing answers at once.
        config = Config(max_pool_connections=64, retries={"max_attempts": 5, "mode": "standard"})
        self.client = boto3.session.Session().client("s3", config=config)
        self._checked = False
        self._check_lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag; None when there is none."""
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return got["Body"].read(), got["ETag"]

    def get_range(self, key: str, start: int) -> bytes | None:
        """The object's bytes from `start` on (b"" past its end); None when there is none."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-")["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            if _code(exc) == "InvalidRange":
                return b""
            raise

    def head(self, key: str) -> Head | None:
        try:
            got = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return Head(got["ContentLength"], got["ETag"], got["LastModified"])

    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally (atomic: readers see the old object or this one); the new ETag."""
        return self.client.put_object(Bucket=self.bucket, Key=key, Body=data)["ETag"]

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if no object is at `key`; the ETag, or None when one is."""
        self.check_conditions()
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite only if the object still has `etag`; the new ETag, or None."""
        self.check_conditions()
        return self._conditional_put(key, data, IfMatch=etag)

    def delete(self, key: str, etag: str | None = None) -> bool:
        """Remove the object (only if it still has `etag`, when given); False when it did not."""
        try:
            if etag is None:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            else:
                self.check_conditions()
                self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            if _code(exc) in _PRECONDITION or _code(exc) in _MISSING:
                return False
            raise
        return True

    def _conditional_put(self, key: str, data: bytes, **condition) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)["ETag"]
        except ClientError as exc:
            if _code(exc) in _PRECONDITION or (condition.get("IfMatch") and _code(exc) in _MISSING):
                return None
            raise

    def list(self, prefix: str, recursive: bool = True) -> tuple[list[tuple[str, Head]], list[str]]:
        """(objects as (key, Head), sub-prefixes) under `prefix` (sub-prefixes only when not recursive)."""
        objects, prefixes = [], []
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for item in page.get("Contents", ()):
                objects.append((item["Key"], Head(item["Size"], item["ETag"], item["LastModified"])))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        return objects, prefixes

    def check_conditions(self) -> None:
        """Refuse, once per process, a server that does not honour If-None-Match and If-Match."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            key = f".daydream-conditional-check/{uuid.uuid4().hex}"
            try:
                first = self._conditional_put(key, b"1", IfNoneMatch="*")
                again = self._conditional_put(key, b"2", IfNoneMatch="*")
                stale = self._conditional_put(key, b"3", IfMatch='"0000"')
            except ClientError as exc:
                raise StorageRefused(
                    f"the object store of s3://{self.bucket} rejected a conditional write ({_code(exc)}), so it "
                    "cannot keep paid answers write-once; use a store that supports If-None-Match and If-Match."
                ) from None
            finally:
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                except ClientError:
                    pass
            if first is None or again is not None or stale is not None:
                raise StorageRefused(
                    f"the object store of s3://{self.bucket} ignores conditional writes (If-None-Match: * / "
                    "If-Match), so it cannot keep paid answers write-once; use a store that honours them."
                )
            self._checked = True


_STORES: dict[tuple[int, str], S3Store] = {}
_STORES_LOCK = threading.Lock()


def store_for(bucket: str) -> S3Store:
    """This process's store of `bucket` (creating boto3 clients is not thread-safe, so under a lock)."""
    with _STORES_LOCK:
        key = (os.getpid(), bucket)
        if key not in _STORES:
            _STORES[key] = S3Store(bucket)
        return _STORES[key]


class S3Path:
    """An object (or prefix) in a bucket, with the part of pathlib's interface the project uses.

    Prefixes play folders: `mkdir` does nothing, a folder exists while an object is under it. It has
    no `__fspath__` on purpose: a POSIX call given one fails loudly instead of writing locally."""

    __slots__ = ("bucket", "key", "_head")

    def __init__(self, bucket: str, key: str, head: Head | None = None) -> None:
        self.bucket = bucket
        self.key = key.strip("/")
        self._head = head

    @classmethod
    def from_url(cls, url: str) -> S3Path:
        parts = urlsplit(url)
        if not parts.netloc:
            raise StorageRefused(f"the data root {url} names no bucket; write s3://BUCKET/PREFIX.")
        return cls(parts.netloc, parts.path)

    @property
    def store(self) -> S3Store:
        return store_for(self.bucket)

    # -- names ---------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Path) and (self.bucket, self.key) == (other.bucket, other.key)

    def __lt__(self, other: S3Path) -> bool:
        return (self.bucket, self.key) < (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def __truediv__(self, other) -> S3Path:
        other = str(other).strip("/")
        return S3Path(self.bucket, f"{self.key}/{other}" if self.key else other)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.key else self.bucket

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> S3Path:
        return S3Path(self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"s3://{self.bucket}", *self.key.split("/")) if self.key else (f"s3://{self.bucket}",)

    def with_name(self, name: str) -> S3Path:
        return self.parent / name

    def with_suffix(self, suffix: str) -> S3Path:
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: S3Path) -> str:
        if self.bucket != other.bucket or not (self.key + "/").startswith(other.key + "/" if other.key else ""):
            raise ValueError(f"{self} is not under {other}")
        return self.key[len(other.key) :].lstrip("/")

    def resolve(self) -> S3Path:
        return self

    absolute = resolve

    def as_posix(self) -> str:
        return str(self)

    as_uri = as_posix

    # -- reads ---------------------------------------------------------------------------------
    def stat(self) -> Head:
        head = self.store.head(self.key)
        if head is None:
            raise FileNotFoundError(str(self))
        return head

    def is_file(self) -> bool:
        return self._head is not None or self.store.head(self.key) is not None

    def is_dir(self) -> bool:
        objects, prefixes = self.store.list(self.key + "/", recursive=False)
        return bool(objects or prefixes)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        got = self.store.get(self.key)
        if got is None:
            raise FileNotFoundError(str(self))
        return got[0]

    def read_text(self, encoding: str = "utf-8", errors: str | None = None) -> str:
        return self.read_bytes().decode(encoding, errors or "strict")

    def open(self, mode: str = "r", encoding: str | None = "utf-8", newline: str | None = None, **_):
        """Read-only: the object's bytes (mode 'rb') or text, read whole."""
        if any(c in mode for c in "wax+"):
            raise io.UnsupportedOperation(f"{self} opens for reading only; write through store/files.py")
        data = self.read_bytes()
        if "b" in mode:
            return io.BytesIO(data)
        return io.StringIO(data.decode(encoding or "utf-8"), newline=newline)

    def iterdir(self):
        prefix = self.key + "/" if self.key else ""
        objects, prefixes = self.store.list(prefix, recursive=False)
        for key, head in objects:
            yield S3Path(self.bucket, key, head)
        for sub in prefixes:
            yield S3Path(self.bucket, sub)

    def glob(self, pattern: str):
        """Objects (never prefixes) whose key below this one matches `pattern` (`**/` spans folders)."""
        prefix = self.key + "/" if self.key else ""
        recursive = "**" in pattern or "/" in pattern
        objects, _ = self.store.list(prefix, recursive=recursive)
        flat = pattern.replace("**/", "")
        for key, head in objects:
            rel = key[len(prefix) :]
            name_match = fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], flat) if pattern.startswith("**/") else False
            if name_match or fnmatch.fnmatchcase(rel, pattern):
                yield S3Path(self.bucket, key, head)

    def rglob(self, pattern: str):
        return self.glob(f"**/{pattern}")

    # -- writes --------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Prefixes need no creating."""

    def write_bytes(self, data: bytes) -> int:
        self.store.put(self.key, bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and self.store.head(self.key) is None:
            raise FileNotFoundError(str(self))
        self.store.delete(self.key)
