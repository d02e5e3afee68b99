"""The daemon path as a user runs it: the shipped dagster_home/dagster.yaml, a backfill of every valid
pair, and a real `dagster-daemon` that launches its runs (each a new process, through the code
server it starts) against the test OpenAI server. Plus the instance settings that path relies on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from daydreaming_dagster.assets.common import BACKFILL_PARTITIONS_PER_RUN
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.experiment.stages import EVALUATION
from daydreaming_dagster.runner.backfills import submit_pair_backfill
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import table_path
from tests.process_groups import stop_group

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "dagster_home" / "dagster.yaml"


def shipped_instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def test_the_shipped_run_queue_launches_in_parallel_and_the_pool_never_holds_a_daemon_run(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))  # the shipped storages live under it
    with shipped_instance(tmp_path / "home") as instance:
        queue = instance.run_coordinator
        limits = instance.get_concurrency_config()
    # Launches wait for the new run process to import the code location: one at a time, every 5 s
    # (Dagster's defaults), the runs of a backfill started far apart.
    assert queue.dequeue_use_threads and queue.dequeue_interval_seconds <= 1
    runs = limits.run_queue_config.max_concurrent_runs
    assert (queue.dequeue_num_workers or runs) >= runs
    # A run holds one LLM step at a time: a pool below the run limit would make steps wait in back-off.
    assert limits.pool_config.default_pool_limit >= runs
    assert limits.run_queue_config.max_user_code_failure_retries >= 1


def test_the_postgres_example_queues_runs_as_the_shipped_instance_does():
    shipped = yaml.safe_load(SHIPPED.read_text())
    postgres = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    assert postgres["run_queue"] == shipped["run_queue"]
    assert postgres["concurrency"] == shipped["concurrency"]


@pytest.mark.parametrize("config", ["dagster.postgres.yaml", "dagster.docker.yaml", "dagster.k8s.yaml"])
def test_every_deployed_instance_queues_runs_as_fast_as_the_shipped_one(config: str):
    """The same rules as the shipped instance's (above), read from each deploy/ file as written."""
    instance = yaml.safe_load((REPO / "deploy" / config).read_text())
    queue, runs = instance["run_queue"], instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert queue["dequeue_use_threads"] and queue["dequeue_interval_seconds"] <= 1
    assert queue["dequeue_num_workers"] >= runs
    assert instance["concurrency"]["pools"]["default_limit"] >= runs
    assert queue["max_user_code_failure_retries"] >= 1


@pytest.mark.slow
def test_a_backfill_run_by_the_daemon_pays_each_pair_once_in_batched_runs(tmp_path: Path, openai_server, monkeypatch):
    from tests.experiment_factory import write_experiment

    openai_server.latency_s = 0.2
    root = write_experiment(tmp_path / "data", concepts=("alpha", "beta", "gamma", "delta"))
    home = tmp_path / "home"
    env = {
        "DAGSTER_HOME": str(home),
        "DAYDREAM_DATA_ROOT": str(root),
        "OPENROUTER_API_KEY": "sk-daemon-test",
        "OPENROUTER_BASE_URL": openai_server.base_url,
        "DAYDREAM_MAX_CALLS_IN_FLIGHT": "4",
        "DAYDREAM_BACKEND": "openai",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)  # other tests' CLI runs may leave settings behind
    defs = build_definitions(Settings.from_env())
    with shipped_instance(home) as instance:
        assert defs.resolve_job_def("task_tables").execute_in_process(instance=instance).success
        for key in instance.get_dynamic_partitions("generation_tasks"):
            assert defs.resolve_job_def("generation").execute_in_process(instance=instance, partition_key=key).success
        pairs = EVALUATION.select(read_table(table_path(root, "evaluation_tasks")))
        before = len(openai_server.requests)
        # Submitted before the daemon starts, so that its first iteration takes it (the backfill
        # daemon looks every 30 s).
        backfill_id = submit_pair_backfill(instance, defs, pairs)
        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "daydreaming_dagster.definitions"],
            env={**os.environ, **env}, cwd=REPO, stdout=log, stderr=log,
            start_new_session=True,  # its code server and run processes go with it, below
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 900  # generous: the machine may be shared and loaded
            while str(instance.get_backfill(backfill_id).status).endswith("REQUESTED") and time.monotonic() < deadline:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(1)
        finally:
            stop_group(daemon)
            log.close()
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        status = str(instance.get_backfill(backfill_id).status)
        assert status.endswith("COMPLETED_SUCCESS"), f"backfill {status}; runs {[r.status for r in runs]}"
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
        # One run per method (consecutive generations of one method form a range), not one per pair.
        assert len(runs) == len(pairs) // len(instance.get_dynamic_partitions("generation_tasks"))
        assert len(pairs) <= len(runs) * BACKFILL_PARTITIONS_PER_RUN
        assert instance.get_materialized_partitions(dg.AssetKey("evaluation_response")) == set(pairs)
        assert len(openai_server.requests) - before == len(pairs)


def test_the_sqlite_event_log_remembers_tables_it_has_seen_and_still_sees_new_ones(tmp_path: Path):
    from daydreaming_dagster.instance.sqlite import PooledSqliteEventLogStorage

    storage = PooledSqliteEventLogStorage(str(tmp_path))
    assert storage.has_table("dynamic_partitions")
    assert not storage.has_table("daydream_later")
    with storage.index_connection() as conn:
        conn.exec_driver_sql("CREATE TABLE daydream_later (id INTEGER)")
    assert storage.has_table("daydream_later")  # a missing table is asked again, not remembered
    storage.dispose()
