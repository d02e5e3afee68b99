"""What a rerun of `daydream run` can skip: the task tables when nothing they are built from
changed, and the results when nothing they read changed since they were built."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

from ...settings import PACKAGE_DIR
from ...store.roots import data_path

# The run tag that records what a task_tables run was built from (see tables_fingerprint).
TABLES_FINGERPRINT_TAG = "daydream/tables_fingerprint"
# The run tag that records which stored answers a results run found not matching their sidecars
# (and so left out): a digest of their files (integrity.py), NONE_UNVERIFIED when there were none.
UNVERIFIED_TAG = "daydream/unverified_answers"
NONE_UNVERIFIED = "none"


def tables_fingerprint(data_root: Path) -> str:
    """A digest of everything the task tables are built from: each file under `1_raw`, and this
    package's code (a code change rebuilds them, which costs a few seconds and no LLM call)."""
    digest = hashlib.sha256()
    for base, pattern in ((data_path(data_root) / "1_raw", "**/*"), (PACKAGE_DIR, "**/*.py")):
        for path in sorted(p for p in base.glob(pattern) if p.is_file()):
            digest.update(f"{base.name}/{path.relative_to(base)}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _outputs_exist(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether every file the run's materializations point to is still on disk."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        path = record.event_log_entry.asset_materialization.metadata.get("path")
        if path is not None and not data_path(path.value).exists():
            return False
    return bool(records)


def _latest_run(instance: dg.DagsterInstance, job_name: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name), limit=1)
    return runs[0] if runs else None


def tables_current(instance: dg.DagsterInstance, fingerprint: str) -> bool:
    """The task tables were built by `daydream run` from exactly this experiment and code, are the
    latest ones, and their files are in place."""
    run = _latest_run(instance, "task_tables")
    if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
        return False
    if run.tags.get(TABLES_FINGERPRINT_TAG) != fingerprint:
        return False
    latest = instance.get_latest_materialization_event(dg.AssetKey("evaluation_tasks"))
    return latest is not None and latest.run_id == run.run_id and _outputs_exist(instance, run.run_id)


def results_current(instance: dg.DagsterInstance, unverified: str = NONE_UNVERIFIED) -> bool:
    """The last results run succeeded after every task table and response it reads, left out the
    same stored answers that do not match their sidecars now (`unverified`: their digest, see
    integrity.py; a run without the tag found none), and its files exist."""
    run = _latest_run(instance, "results")
    if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
        return False
    if run.tags.get(UNVERIFIED_TAG, NONE_UNVERIFIED) != unverified:
        return False
    started = instance.get_run_record_by_id(run.run_id).start_time or 0
    for upstream in ("evaluation_tasks", "generation_response", "evaluation_response"):
        event = instance.get_latest_materialization_event(dg.AssetKey(upstream))
        if event is not None and event.timestamp >= started:
            return False
    return _outputs_exist(instance, run.run_id)
