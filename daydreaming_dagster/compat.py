"""Every private Dagster symbol the project uses, imported here and nowhere else.

Dagster offers no public API for these; each line says why it is needed. A Dagster upgrade that
moves or removes one fails on import of this module, and `tests/test_compat.py` names each of them,
so the break shows in one place. Pinned with `dagster==1.13.28` in pyproject.toml."""

from __future__ import annotations

# One backfill of exactly the valid pairs: `instance.add_backfill` takes a PartitionBackfill, and a
# sensor that asks for a backfill hands RunRequest.for_asset_graph_subset an AssetGraphSubset.
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset  # noqa: F401

# `daydream run` leaves to other runs the partitions they are materializing: a run's single
# partition is in this tag, and a backfill the daemon works on is found by its status.
from dagster._core.execution.backfill import (
    BulkActionStatus,  # noqa: F401
    PartitionBackfill,  # noqa: F401
)

# `daydream run`'s worker instance is a DagsterInstance subclass (Dagster's supported seam for a
# custom instance, `instance_class` in dagster.yaml); the runner names it in the instance's ref.
from dagster._core.instance.ref import InstanceRef  # noqa: F401

# bench/scale.py times a sensor tick the way the code server evaluates it: through Dagster's
# caching key loader over the instance; the overlap check reads each key list once through it.
from dagster._core.instance.types import CachingDynamicPartitionsLoader  # noqa: F401

# The pooled SQLite instance storage subclasses Dagster's own SQLite storages and builds its
# engine the way they do.
from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import (  # noqa: F401
    ConsolidatedSqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage  # noqa: F401
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage  # noqa: F401

# `daydream repair-instance` keeps the schema version of Dagster's alembic scripts (their head) in an
# instance whose databases were stamped twice; the scripts' location is Dagster's own.
from dagster._core.storage.sql import (
    ALEMBIC_SCRIPTS_LOCATION,  # noqa: F401
    create_engine,  # noqa: F401
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # noqa: F401

# A run over a partition-key range (how batches and backfills put up to 32 partitions in one run):
# `execute_in_process` takes one partition key, the range goes in these two run tags.
from dagster._core.storage.tags import (  # noqa: F401
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,  # noqa: F401
)
from dagster._core.utils import make_new_backfill_id  # noqa: F401
from dagster._serdes import ConfigurableClassData  # noqa: F401

PRIVATE_SYMBOLS = (
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "PARTITION_NAME_TAG",
    "BulkActionStatus",
    "AssetGraphSubset",
    "PartitionBackfill",
    "make_new_backfill_id",
    "ConsolidatedSqliteEventLogStorage",
    "SqliteRunStorage",
    "SqliteScheduleStorage",
    "ALEMBIC_SCRIPTS_LOCATION",
    "create_engine",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "InstanceRef",
    "ConfigurableClassData",
    "CachingDynamicPartitionsLoader",
)
