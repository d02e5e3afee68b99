"""Stored CSV tables read back as DataFrames, cached by file state (the only module of the store
that imports pandas: processes that only write text do not pay for it)."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pandas as pd

from .roots import is_remote

# Tables are read by many partitions of one run and of many runs in one process; cache by file state.
_TABLE_CACHE: dict[Path, tuple[tuple[int, int], pd.DataFrame]] = {}
_TABLE_CACHE_LOCK = threading.Lock()


def _string_columns(path) -> dict[str, type]:
    header = pd.read_csv(path, nrows=0).columns
    return {c: str for c in header if c == "id" or c.endswith("_id") or c.endswith("_ids") or c == "model" or c.endswith("_model")}


def read_table(path: Path) -> pd.DataFrame:
    """Read a stored CSV table, keeping id and model columns as strings; cached by (mtime, size)
    (by ETag on object storage, whose time stamps are too coarse to tell two writes apart)."""
    if is_remote(path):
        return _read_object_table(path)
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


def _read_object_table(path) -> pd.DataFrame:
    with _TABLE_CACHE_LOCK:
        cached = _TABLE_CACHE.get(path)
    got = path.store.get(path.key, unless=cached[0] if cached else None)  # downloads only a changed table
    if got is None:
        raise FileNotFoundError(str(path))
    if cached and cached[0] == got[1]:
        return cached[1].copy()
    data = got[0]
    df = pd.read_csv(io.BytesIO(data), dtype=_string_columns(io.BytesIO(data)), keep_default_na=True)
    with _TABLE_CACHE_LOCK:
        _TABLE_CACHE[path] = (got[1], df)
    return df.copy()


def table_digest(df: pd.DataFrame) -> str:
    """A digest of a table's content (column names, then every value row by row): equal for equal
    tables in any process, so rebuilding an unchanged table changes nothing downstream."""
    digest = hashlib.sha256("\x1f".join(map(str, df.columns)).encode("utf-8"))
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()
