"""The pooled SQLite storages under the path older dagster.yaml files name: see instance/sqlite.py."""

from ..instance.sqlite import LockedSqliteScheduleStorage, PooledSqliteEventLogStorage, PooledSqliteRunStorage

__all__ = ["LockedSqliteScheduleStorage", "PooledSqliteEventLogStorage", "PooledSqliteRunStorage"]
