"""The data root on S3 (or an S3-compatible server): `S3Store`, one bucket's conditional reads and
writes through boto3 (its objects are named by `S3Path`, store/object_paths.py).

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

import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

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

    def get(self, key: str, unless: str | None = None) -> tuple[bytes | None, str] | None:
        """The object's bytes and ETag; None when there is none; (None, etag) when its ETag is
        still `unless` (a conditional GET: nothing is downloaded)."""
        try:
            extra = {"IfNoneMatch": unless} if unless else {}
            got = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            if unless and _code(exc) in {"304", "NotModified"}:
                return None, unless
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
        self.check_conditions(key)
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite only if the object still has `etag`; the new ETag, or None."""
        self.check_conditions(key)
        return self._conditional_put(key, data, IfMatch=etag)

    def delete(self, key: str, etag: str | None = None) -> bool:
        """Remove the object (only if it still has `etag`, when given); False when it did not."""
        try:
            if etag is None:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            else:
                self.check_conditions(key)
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

    def check_conditions(self, near: str) -> None:
        """Refuse, once per process, a server that does not honour If-None-Match and If-Match
        (checked with a scratch object beside `near`, inside the prefix the data root may use)."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            folder = near.rsplit("/", 1)[0] + "/" if "/" in near else ""
            key = f"{folder}.daydream-conditional-check-{uuid.uuid4().hex}"
            try:
                first = self._conditional_put(key, b"1", IfNoneMatch="*")
                again = self._conditional_put(key, b"2", IfNoneMatch="*")
                stale = self._conditional_put(key, b"3", IfMatch='"0000"')
            except ClientError as exc:
                if _code(exc) not in {"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"}:
                    raise  # not about the conditions (access denied, no such bucket): say so as it is
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
