"""The pooled SQLite storages under the module path that dagster.yaml files written before the
layered layout name (`daydreaming_dagster.instance_storage`): a DAGSTER_HOME set up then keeps
working. New configurations name `daydreaming_dagster.instance.sqlite`."""

from .instance.sqlite import PooledSqliteEventLogStorage, PooledSqliteRunStorage

__all__ = ["PooledSqliteEventLogStorage", "PooledSqliteRunStorage"]
