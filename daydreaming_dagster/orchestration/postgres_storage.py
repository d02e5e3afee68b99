"""The pooled PostgreSQL storage under the path older dagster.yaml files name: see instance/postgres.py."""

from ..instance.postgres import PooledPostgresStorage

__all__ = ["PooledPostgresStorage"]
