"""Where the data lives: a local path (the default, served by today's POSIX code) or an object-store
URL, chosen from the data root's scheme in this one place.

`data_path` turns a setting (`DAYDREAM_DATA_ROOT`, `--data-root`, a resource's root string) into
the object every module joins paths on: a `pathlib.Path` for a local folder or a `file://` URL, an
`S3Path` (store/object_paths.py) for `s3://bucket/prefix`. An `S3Path` offers the part of pathlib the
project reads and lists with, and carries its bucket's `S3Store`, which does the conditional writes
that keep paid answers write-once. The modules that write (files, responses, claims, spend,
reservations, tables) keep their POSIX code for local paths and branch on `is_remote` once, so the
local path costs one isinstance check and nothing else."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePath
from urllib.parse import unquote, urlsplit

# Schemes fsspec would accept but this store does not support yet, with what would be needed.
_NOT_YET = {
    "gs": "GCS needs generation-match preconditions (ifGenerationMatch=0 to create, the read "
    "generation to replace) behind the same S3Store interface",
    "gcs": "GCS needs generation-match preconditions behind the same S3Store interface",
}


class StorageRefused(ValueError):
    """The data root's storage cannot keep the write-once guarantee (or cannot be used at all);
    raised before any LLM call, with one sentence."""


class StorageFull(OSError):
    """The disk (or quota) holding a file to write is full: str() is one sentence naming the file,
    the space it needed and the space left. An OSError, so a caller that retries passing faults
    still sees one."""

    def __str__(self) -> str:
        return f"{self.strerror}."


_FULL = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def space_for(path, needed: int = 0) -> Iterator[None]:
    """Turn "no space left on device" (or "disk quota exceeded") while writing `path` into StorageFull."""
    try:
        yield
    except StorageFull:
        raise
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        try:
            free = f"{shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else '/').free:,} bytes free"
        except OSError:
            free = "free space unknown"
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
        raise StorageFull(
            exc.errno,
            f"{what} where {path} is written ({needed:,} bytes needed, {free}); free some space and run again: "
            "every answer already stored is kept and reused, and only calls whose answers were not stored are asked again",
        ) from None


def is_remote(path) -> bool:
    """Whether `path` lives on object storage (not a local pathlib path)."""
    return not isinstance(path, PurePath)


def data_path(value):
    """The local `Path` or the `S3Path` named by `value` (a path, `file://...` or `s3://...`)."""
    if isinstance(value, PurePath) or (not isinstance(value, (str, bytes)) and hasattr(value, "store")):
        return value
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = text.decode()
    scheme, sep, _ = text.partition("://")
    if not sep or not scheme.isalnum():
        return Path(text)
    scheme = scheme.lower()
    if scheme == "file":
        return Path(unquote(urlsplit(text).path))
    if scheme == "s3":
        parts = urlsplit(text)
        if "@" in parts.netloc:
            raise StorageRefused(
                f"the data root s3://...@{parts.netloc.rsplit('@', 1)[1]}/ carries credentials in its URL; "
                "give them through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the provider's usual configuration."
            )
        from .object_paths import S3Path  # boto3 is the optional `s3` extra: imported only for s3:// roots

        return S3Path.from_url(text)
    if scheme in _NOT_YET:
        raise StorageRefused(f"{scheme}:// data roots are not supported yet ({_NOT_YET[scheme]}); use s3:// or a local path.")
    raise StorageRefused(f"the data root {text} has an unsupported scheme {scheme}://; use a local path, file:// or s3://.")


def claim_backend(root):
    """The claims.ClaimBackend for responses under `root`: claim files on disk, claim objects on S3."""
    if is_remote(data_path(root)):
        from .object_archive import ObjectClaims

        return ObjectClaims()
    from .claims import LocalClaimFiles

    return LocalClaimFiles()
