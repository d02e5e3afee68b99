"""SQLite instance storage that keeps its connections: Dagster's SQLite classes with a pooled engine.

Dagster's SQLite run and event-log storages build a new SQLAlchemy engine, and open a new SQLite
connection, for every statement batch: about 2 ms each, four per stored event, and a partition
run stores ~30 events plus two per partition. Measured on 2 cores, that was half the wall time
of a run. These subclasses keep one pooled engine per process and database file instead; the
files, schema and behaviour are Dagster's own, so `dagster dev` and the `dagster` CLI read the
same instance. `dagster_home/dagster.yaml` selects them.

Commits use `synchronous=NORMAL` (the databases are in WAL mode): a power cut may lose the last
few events, never corrupt the file. Losing the record of a materialization loses no paid answer
(responses are fsynced files that a re-run reuses), so the instance does not pay an fsync per
event. For more than one machine, use PostgreSQL storage (dagster-postgres) instead."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from sqlalchemy.pool import QueuePool

from ..compat import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConsolidatedSqliteEventLogStorage,
    SqliteRunStorage,
    SqliteScheduleStorage,
    create_engine,
)
from .opening import creating

_ENGINES: dict[tuple[int, str], db.engine.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def pooled_engine(conn_string: str) -> db.engine.Engine:
    """This process's engine for one SQLite file (a forked child builds its own)."""
    key = (os.getpid(), conn_string)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = create_engine(
                conn_string,
                poolclass=QueuePool,
                pool_size=2,
                max_overflow=8,
                # A pooled connection may serve another thread later (LLM calls run in threads and
                # may log); the pool never hands one connection to two threads at once.
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            db.event.listen(engine, "connect", _on_connect)
            _ENGINES[key] = engine
    return engine


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


@contextmanager
def _transaction(conn_string: str) -> Iterator[db.engine.Connection]:
    with pooled_engine(conn_string).connect() as conn:
        with conn.begin():
            yield conn


class PooledSqliteEventLogStorage(ConsolidatedSqliteEventLogStorage):
    """Dagster's consolidated SQLite event log (`<base_dir>/event_log.db`), with pooled connections."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        self._tables_seen: set[str] = set()
        with creating(os.path.join(base_dir, "event_log.db")):
            super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self) -> Iterator[db.engine.Connection]:
        with _transaction(self._conn_string) as conn:
            yield conn

    def has_table(self, table_name: str) -> bool:
        # Dagster's own builds a new engine and connection for each call, and asks before every
        # dynamic-partition lookup: in a backfill run of 66 pairs, 850 calls and a third of its CPU.
        # Migrations only ever add tables, so a table seen once is there for the life of this process.
        if table_name not in self._tables_seen:
            with self._connect() as conn:
                if conn.dialect.has_table(conn, table_name):
                    self._tables_seen.add(table_name)
        return table_name in self._tables_seen


class PooledSqliteRunStorage(SqliteRunStorage):
    """Dagster's SQLite run storage, with pooled connections. `base_dir` is the instance folder: the
    runs live in `<base_dir>/history/runs.db`, where Dagster's default storage keeps them."""

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledSqliteRunStorage:
        return cls.from_local(inst_data=inst_data, base_dir=os.path.join(config_value["base_dir"], "history"))

    @classmethod
    def from_local(cls, base_dir: str, inst_data=None) -> PooledSqliteRunStorage:
        with creating(os.path.join(base_dir, "runs.db")):
            return super().from_local(base_dir, inst_data)

    @contextmanager
    def connect(self) -> Iterator[db.engine.Connection]:
        with _transaction(self._conn_string) as conn:
            yield conn


class LockedSqliteScheduleStorage(SqliteScheduleStorage):
    """Dagster's SQLite schedule storage, created under a lock. `base_dir` is the instance folder:
    the schedules live in `<base_dir>/schedules/schedules.db`, where Dagster's default storage keeps them."""

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> LockedSqliteScheduleStorage:
        return cls.from_local(inst_data=inst_data, base_dir=os.path.join(config_value["base_dir"], "schedules"))

    @classmethod
    def from_local(cls, base_dir: str, inst_data=None) -> LockedSqliteScheduleStorage:
        with creating(os.path.join(base_dir, "schedules.db")):
            return super().from_local(base_dir, inst_data)
