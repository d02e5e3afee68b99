"""Which partitions other runs are materializing right now, so `daydream run` leaves them to those runs.

The instance knows every run in progress (queued, starting, started) and every backfill the daemon
works on: a run's partitions are in its tags (one partition, or a range START..END in the
instance's key order), its assets in its asset selection or its execution plan; a backfill targets
a subset of partitions. `daydream run` asks when it plans a stage, and again the moment each of
its runs is created, under a lock in DAGSTER_HOME (see `RunGate`), so two runners started together
never both create a run for one partition. Whatever still overlaps (a UI run started a moment
later, a runner on another instance sharing the folder) is caught by the claims on paid calls.

Runs that a runner's workers execute in process carry the worker's host and pid. A run whose
worker is gone (killed with its runner) would otherwise stay STARTED for ever and block its
partitions; it is reported failed instead, naming the lost process."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ...compat import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    BulkActionStatus,
    CachingDynamicPartitionsLoader,
)
from ...store.files import exclusive_lock

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
HOST_TAG = "daydream/host"
PID_TAG = "daydream/pid"
# On a runner's run that re-runs materialized partitions on purpose (--replace-changed).
RERUN_TAG = "daydream/rerun_materialized"
RUNS_LOCK = ".daydream-runs.lock"
# A daemon whose last heartbeat is older than this is not running: its queued runs and requested
# backfills make no progress, so they do not hold their partitions.
DAEMON_STALE_S = 120.0
WHOLE = "*"  # the key of an unpartitioned run in a `busy` mapping


@dataclass(frozen=True)
class Other:
    """Another run or backfill that targets a partition."""

    kind: str  # "run" or "backfill"
    id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class RunsOverlap(Exception):
    """The run about to be created targets partitions other runs are materializing (`busy`:
    partition key, or WHOLE for an unpartitioned job, -> the other run)."""

    def __init__(self, busy: Mapping[str, Other]) -> None:
        super().__init__(f"{len(busy)} partition(s) are being materialized by another run")
        self.busy = dict(busy)


def owner_tags() -> dict[str, str]:
    """The tags that name the process executing a run in process (see `worker_gone`)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _process_started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), where /proc tells; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def worker_gone(tags: Mapping[str, str], created: float) -> str | None:
    """For a run executed in process by a worker on this host: the worker's description when that
    process no longer exists (or its pid now belongs to a process started after the run); else None."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} on host {tags[HOST_TAG]}"
    except PermissionError:
        return None
    started = _process_started(pid)
    if started is not None and started > created + 1.0:
        return f"pid {pid} on host {tags[HOST_TAG]}"
    return None


def run_partitions(tags: Mapping[str, str], partitions_def, store) -> list[str] | None:
    """The partition keys a run targets, from its tags; None for an unpartitioned run."""
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None or partitions_def is None:
        return None
    try:
        with dg.partition_loading_context(dynamic_partitions_store=store):
            keys = partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
    except dg.DagsterError:  # a range whose ends were since removed: it targets no key we know
        return []
    return [str(k) for k in keys]


class KeysOnce(CachingDynamicPartitionsLoader):
    """An instance's dynamic partition keys, each list read once (for one overlap check, which
    expands the range of every run in progress: reading the keys per range cost ~15 ms each);
    a key's existence is looked up in that list instead of asked of the database."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        super().__init__(instance)
        self._sets: dict[str, frozenset[str]] = {}

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        if partitions_def_name not in self._sets:
            self._sets[partitions_def_name] = frozenset(self.get_dynamic_partitions(partitions_def_name))
        return partition_key in self._sets[partitions_def_name]


class InProgress:
    """What other runs and backfills of one instance are materializing, read once."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.keys = KeysOnce(instance)
        self._assets_of_plan: dict[str, frozenset[str]] = {}

    def _assets(self, run: dg.DagsterRun) -> frozenset[str]:
        if run.asset_selection:
            return frozenset(k.to_user_string() for k in run.asset_selection)
        plan_id = run.execution_plan_snapshot_id
        if plan_id is None:
            return frozenset()
        if plan_id not in self._assets_of_plan:
            plan = self.instance.get_execution_plan_snapshot(plan_id)
            self._assets_of_plan[plan_id] = frozenset(plan.step_keys_to_execute or (s.key for s in plan.steps))
        return self._assets_of_plan[plan_id]

    def _daemon_alive(self, daemon_type: str) -> bool:
        heartbeat = self.instance.get_daemon_heartbeats().get(daemon_type)
        return heartbeat is not None and time.time() - heartbeat.timestamp < DAEMON_STALE_S

    def busy(self, assets: set[str], partitions_def, exclude_run: str | None = None) -> dict[str, Other]:
        """Partition key (WHOLE for an unpartitioned run) -> the other run or backfill that is
        materializing one of `assets` for it."""
        busy: dict[str, Other] = {}
        queue_alive = None
        for record in self.instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS)):
            run = record.dagster_run
            if run.run_id == exclude_run or not self._assets(run) & assets:
                continue
            if run.status == dg.DagsterRunStatus.QUEUED:
                queue_alive = self._daemon_alive("QUEUED_RUN_COORDINATOR") if queue_alive is None else queue_alive
                if not queue_alive:
                    continue
            gone = worker_gone(run.tags, record.create_timestamp.timestamp())
            if gone is not None:
                self.instance.report_run_failed(
                    run, message=f"the process executing this run ({gone}) no longer exists; it was killed"
                )
                continue
            keys = run_partitions(run.tags, partitions_def, self.keys)
            for key in [WHOLE] if keys is None else keys:
                busy.setdefault(key, Other("run", run.run_id))
        if self._daemon_alive("BACKFILL"):
            for backfill in self.instance.get_backfills(status=BulkActionStatus.REQUESTED):
                for key in self._backfill_partitions(backfill, assets):
                    busy.setdefault(key, Other("backfill", backfill.backfill_id))
        return busy

    @staticmethod
    def _backfill_partitions(backfill, assets: set[str]) -> Iterator[str]:
        if not backfill.is_asset_backfill:
            return
        data = backfill.asset_backfill_data
        remaining = data.target_subset - (data.materialized_subset | data.failed_and_downstream_subset)
        for asset_key, subset in remaining.partitions_subsets_by_asset_key.items():
            if asset_key.to_user_string() in assets:
                yield from (str(k) for k in subset.get_partition_keys())
        if any(k.to_user_string() in assets for k in remaining.non_partitioned_asset_keys):
            yield WHOLE


@contextmanager
def run_creation_lock(instance: dg.DagsterInstance) -> Iterator[None]:
    """Held while a runner checks for overlapping runs and creates its own, so that the check and
    the creation are one step for every runner on this instance."""
    with exclusive_lock(Path(instance.root_directory) / RUNS_LOCK):
        yield


def materialized_meanwhile(instance: dg.DagsterInstance, assets: set[str], keys: list[str]) -> dict[str, Other]:
    """The partitions among `keys` whose every asset of `assets` is materialized (by the run that
    materialized the last of them): a runner planned them as not materialized, so another run did them."""
    if not keys:  # an empty partition filter is no filter at all: it would return every partition
        return {}
    done: dict[str, Other] | None = None
    for asset in sorted(assets):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(asset), asset_partitions=keys), limit=10_000
        ).records
        by_key = {r.partition_key: Other("run", r.run_id) for r in records}
        done = by_key if done is None else {k: v for k, v in by_key.items() if k in done}
    return done or {}


def check_no_overlap(
    instance: dg.DagsterInstance, job_def: dg.JobDefinition, tags: Mapping[str, str], rerun_materialized: bool
) -> None:
    """Raise RunsOverlap when another run or backfill is materializing what this run would, or
    (unless `rerun_materialized`) has materialized it since the runner planned it."""
    assets = {k.to_user_string() for k in job_def.asset_layer.selected_asset_keys}
    in_progress = InProgress(instance)
    busy = in_progress.busy(assets, job_def.partitions_def)
    keys = run_partitions(tags, job_def.partitions_def, in_progress.keys)
    if keys is None:  # an unpartitioned job: any other run of its assets holds all of it
        overlap = {WHOLE: next(iter(busy.values()))} if busy else {}
    elif WHOLE in busy:
        overlap = {k: busy[WHOLE] for k in keys}
    else:
        overlap = {k: busy[k] for k in keys if k in busy}
        if not rerun_materialized:
            overlap.update(materialized_meanwhile(instance, assets, [k for k in keys if k not in overlap]))
    if overlap:
        raise RunsOverlap(overlap)
