"""PostgreSQL instance storage that keeps its connections: dagster-postgres's storages, pooled.

Stock dagster-postgres builds its engines with NullPool: every statement opens a new TCP
connection and authenticates (scram-sha-256 is a few round trips and a key derivation). A
partition run stores dozens of events, so `daydream run --offline` of 420 partitions opened ~5,700
sessions and took 2.7-4.8x as long per partition as on SQLite. `PooledPostgresStorage` is what
dagster-postgres's `DagsterPostgresStorage` is (its run, event-log and schedule storages: same tables, same
`postgres_db` / `postgres_url` config, same migrations), with each storage holding its
connections open through dagster-postgres's public hook for that, `optimize_for_webserver`
(which `dagster dev`'s webserver calls on its own instance). Every process that builds the
instance from `dagster.yaml` (daydream's workers, the daemon, the run workers it launches, the code
server) gets the pool; figures in the README ("PostgreSQL").

Also, all optional:
- `schema`: keep the instance's tables in this schema (created if missing) instead of the
  database's default one. The offline instance uses it to live beside the real one in the same
  database without mixing with it (see instance/offline_home.py).
- a URL without a driver (`postgresql://`, dagster-postgres's default `scheme`) uses psycopg2:
  SQLAlchemy 2.1 maps it to psycopg 3, which the `postgres` extra does not install.
- the first use of a concurrency pool by several processes at once does not fail a run (see
  `PooledPostgresEventLogStorage`)."""

from __future__ import annotations

import re
from typing import Any

import dagster as dg
import sqlalchemy as db
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
    retry_pg_creation_fn,
)
from sqlalchemy.pool import NullPool

from ..compat import ConfigurableClass, DagsterStorage

DEFAULT_MAX_OVERFLOW = 10
DEFAULT_POOL_RECYCLE_S = 3600
SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def with_schema_and_driver(url: str, schema: str | None) -> str:
    """`url` with psycopg2 as the driver when it names none, and `schema` first on the search path."""
    parsed = db.engine.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if schema:
        if not SCHEMA_PATTERN.fullmatch(schema):
            raise ValueError(
                f"PostgreSQL schema {schema!r} in dagster.yaml is not a plain lower-case name "
                "(letters, digits and _, not starting with a digit)."
            )
        options = " ".join(filter(None, [parsed.query.get("options"), f"-csearch_path={schema}"]))
        parsed = parsed.update_query_dict({"options": options})
    return parsed.render_as_string(hide_password=False)


def create_schema(url: str, schema: str, token_provider: Any = None) -> None:
    """Create `schema` unless it exists (two processes creating it at once is fine)."""
    engine = create_pg_engine(url, token_provider, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:

        def create() -> None:
            with engine.connect() as conn:
                # Looked up first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
                # database even when the schema exists, and a user may have only the schema's.
                found = conn.execute(db.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
                if not found:
                    conn.execute(db.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

        # A concurrent CREATE SCHEMA IF NOT EXISTS can still fail on pg_namespace's unique index.
        retry_pg_creation_fn(create)
    finally:
        engine.dispose()


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres's event log, minus two things that cost or fail on a pooled engine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tables_seen: set[str] = set()
        super().__init__(*args, **kwargs)

    def has_table(self, table_name: str) -> bool:
        # Dagster asks whether asset_event_tags exists at every materialization, on a second
        # connection while it holds the first: on a pool that keeps one connection per storage,
        # a new authenticated session each time (2 per partition). Migrations only ever add
        # tables, so a table seen once is there for the life of this process.
        if table_name not in self._tables_seen and super().has_table(table_name):
            self._tables_seen.add(table_name)
        return table_name in self._tables_seen

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        # Dagster initializes a pool's limit row on first use: INSERT, and on a unique violation
        # (another process inserted it first) UPDATE in the same transaction. PostgreSQL aborts a
        # transaction at its first failed statement, so the UPDATE fails too and so does the step:
        # the first batches of `daydream run` on a fresh instance failed that way. A row that is
        # there after such a failure means another process initialized the pool: done. (The
        # same path is why a changed `default_limit` never reaches an existing pool's row on
        # PostgreSQL: stock fails the step, this keeps the old limit. `dagster instance
        # concurrency set llm_api N` sets it.)
        try:
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        except db.exc.DBAPIError:
            if any(pool.name == concurrency_key for pool in self.get_pool_limits()):
                return True
            raise


class PooledPostgresStorage(DagsterStorage, ConfigurableClass):
    """dagster-postgres's run, event-log and schedule storages with pooled connections (and an
    optional `schema`).

    `pool.max_overflow` connections beyond the one each storage keeps open serve concurrent
    statements of one process; `pool.pool_recycle_s` replaces a connection older than that (servers
    and proxies drop idle ones); `pool.statement_timeout_ms` (0: none) bounds each statement, as the
    webserver's own `--db-statement-timeout` does."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: Any = None,
        token_provider: Any = None,
        schema: str | None = None,
        max_overflow: int = DEFAULT_MAX_OVERFLOW,
        pool_recycle_s: int = DEFAULT_POOL_RECYCLE_S,
        statement_timeout_ms: int = 0,
    ) -> None:
        self._inst_data = inst_data
        self.schema = schema
        url = with_schema_and_driver(postgres_url, schema)
        if schema and should_autocreate_tables:
            create_schema(url, schema, token_provider)
        self._run_storage = PostgresRunStorage(url, should_autocreate_tables, token_provider=token_provider)
        self._event_log_storage = PooledPostgresEventLogStorage(
            url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PostgresScheduleStorage(url, should_autocreate_tables, token_provider=token_provider)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.optimize_for_webserver(statement_timeout_ms, pool_recycle_s, max_overflow)
        super().__init__()

    @property
    def inst_data(self) -> Any:
        return self._inst_data

    @property
    def run_storage(self) -> PostgresRunStorage:
        return self._run_storage

    @property
    def event_log_storage(self) -> PostgresEventLogStorage:
        return self._event_log_storage

    @property
    def schedule_storage(self) -> PostgresScheduleStorage:
        return self._schedule_storage

    @classmethod
    def config_type(cls) -> dict:
        return {
            **DagsterPostgresStorage.config_type(),
            "schema": dg.Field(dg.StringSource, is_required=False),
            "pool": dg.Field(
                {
                    "max_overflow": dg.Field(dg.IntSource, is_required=False, default_value=DEFAULT_MAX_OVERFLOW),
                    "pool_recycle_s": dg.Field(dg.IntSource, is_required=False, default_value=DEFAULT_POOL_RECYCLE_S),
                    "statement_timeout_ms": dg.Field(dg.IntSource, is_required=False, default_value=0),
                },
                is_required=False,
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledPostgresStorage:
        pool = config_value.get("pool") or {}
        return cls(
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
            schema=config_value.get("schema"),
            max_overflow=pool.get("max_overflow", DEFAULT_MAX_OVERFLOW),
            pool_recycle_s=pool.get("pool_recycle_s", DEFAULT_POOL_RECYCLE_S),
            statement_timeout_ms=pool.get("statement_timeout_ms", 0),
        )
