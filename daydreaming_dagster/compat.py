"""Every private Dagster symbol the project uses, imported here and nowhere else.

Dagster offers no public API for these; `WHY` says what each is needed for. A Dagster upgrade that
moves or removes one fails on import of this module, and `tests/test_structure.py` names each of
them, so the break shows in one place. Dagster is pinned in pyproject.toml."""

from __future__ import annotations

from dagster._config import process_config
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.instance.types import CachingDynamicPartitionsLoader
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import ConsolidatedSqliteEventLogStorage
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION, create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._core.utils import make_new_backfill_id
from dagster._serdes import ConfigurableClass, ConfigurableClassData

WHY = {
    "ASSET_PARTITION_RANGE_START_TAG": "a run over a partition-key range (batches of up to 32 partitions): "
    "execute_in_process takes one partition key, a range goes in these two run tags",
    "ASSET_PARTITION_RANGE_END_TAG": "the other end of that range",
    "PartitionBackfill": "`daydream backfill` stores one backfill of exactly the valid pairs (instance.add_backfill)",
    "make_new_backfill_id": "the id of that backfill, made the way Dagster makes them",
    "AssetGraphSubset": "a sensor asks for one backfill of many pairs through RunRequest.for_asset_graph_subset",
    "ConsolidatedSqliteEventLogStorage": "the pooled SQLite event log subclasses Dagster's own",
    "SqliteRunStorage": "the pooled SQLite run storage subclasses Dagster's own",
    "create_engine": "the pooled storages build their engine the way Dagster's SQLite storages do",
    "SQLITE_BUSY_TIMEOUT_SECONDS": "and with the same busy timeout",
    "InstanceRef": "`daydream run`'s workers name their DagsterInstance subclass in the instance's ref "
    "(Dagster's supported seam for a custom instance class)",
    "ConfigurableClassData": "how a ref names that class",
    "NoOpComputeLogManager": "`daydream run`'s workers name it in that ref: no `tail -F` and watcher processes "
    "per run, and no swapping of the process's stdout/stderr while several runs share it",
    "DagsterStorage": "the pooled PostgreSQL storage is a storage of its own, on the same base as "
    "dagster-postgres's DagsterPostgresStorage",
    "ConfigurableClass": "and, like it, configured from dagster.yaml",
    "CachingDynamicPartitionsLoader": "bench/scale.py times a sensor tick the way the code server evaluates it; "
    "the overlap check (runner/reruns/overlap.py) reads each key list once through it",
    "PARTITION_NAME_TAG": "`daydream run` leaves to other runs the partitions they are materializing: "
    "a run of one partition names it in this tag",
    "BulkActionStatus": "and a backfill the daemon is working on has this status (REQUESTED)",
    "SqliteScheduleStorage": "the schedule storage of the project's instance is Dagster's, created under a lock",
    "ALEMBIC_SCRIPTS_LOCATION": "`daydream repair-instance` keeps the schema version of Dagster's alembic scripts "
    "(their head) in a database that two processes stamped at once",
    "process_config": "tests/test_deploy.py validates deploy/'s run launcher and compute log configs",
    "dagster_instance_config": "and reads deploy/'s dagster.yaml files the way Dagster does",
    "CachingStaleStatusResolver": "tests/test_changes.py reads Dagster's staleness (what the UI shows as stale, "
    "and why), which has no public API, the way the webserver does",
    "StaleStatus": "the status that resolver gives",
    "LoadingContextForTest": "the loading context the resolver needs outside a webserver request",
}

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "ALEMBIC_SCRIPTS_LOCATION",
    "PARTITION_NAME_TAG",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "AssetGraphSubset",
    "BulkActionStatus",
    "CachingDynamicPartitionsLoader",
    "ConfigurableClass",
    "CachingStaleStatusResolver",
    "ConfigurableClassData",
    "ConsolidatedSqliteEventLogStorage",
    "DagsterStorage",
    "InstanceRef",
    "LoadingContextForTest",
    "NoOpComputeLogManager",
    "PartitionBackfill",
    "StaleStatus",
    "SqliteRunStorage",
    "SqliteScheduleStorage",
    "create_engine",
    "dagster_instance_config",
    "make_new_backfill_id",
    "process_config",
]
PRIVATE_SYMBOLS = tuple(__all__)
