"""`S3Path`: the name of one object (or prefix) of an S3 data root, with the part of pathlib's
interface the project reads, lists and writes with, each call one request to its bucket's S3Store
(store/objects.py)."""

from __future__ import annotations

import fnmatch
import io
from urllib.parse import urlsplit

from .objects import Head, S3Store, store_for
from .roots import StorageRefused


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
