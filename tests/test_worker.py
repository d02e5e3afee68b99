"""What a `daydream run` worker does: several Dagster runs at once in one process, on the instance
in DAGSTER_HOME (the project's pooled SQLite storage), each partition materialized on its own."""

from __future__ import annotations

import shutil
import threading

import dagster as dg

from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from daydreaming_dagster.runner.executor import worker
from daydreaming_dagster.runner.executor.ranges import Batch
from daydreaming_dagster.runner.executor.worker import QUIET, execute, partition_run_config
from tests.experiment_factory import write_experiment


def test_several_runs_at_once_in_one_process_each_record_their_partitions(tmp_path, monkeypatch):
    experiment = write_experiment(tmp_path / "data")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(experiment))
    monkeypatch.setenv("DAYDREAM_BACKEND", "offline")
    monkeypatch.setattr(worker, "_WORKER", {})
    instance = dg.DagsterInstance.get()  # creates the storage, as the runner does before its workers
    assert execute("task_tables", None, QUIET).success
    generations = instance.get_dynamic_partitions("generation_tasks")
    config = partition_run_config("generation", False, 4)

    # Six runs at once, one thread each. Stock Dagster re-applies its logging config when each run
    # starts (deadlocking against a run logging in another thread: measured, the runs never end)
    # and swaps the process's stdout/stderr for each run's captured logs; the worker's instance
    # does neither. Daemon threads: a deadlocked run fails the test instead of hanging pytest.
    outcomes = {}

    def run(key: str) -> None:
        outcomes[key] = execute("generation", Batch((key,)), config)

    threads = [threading.Thread(target=run, args=(key,), daemon=True) for key in generations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(outcomes) == len(generations), "runs in threads of one process did not finish (deadlock)"
    assert all(o.success for o in outcomes.values()), [o.error for o in outcomes.values()]
    assert instance.get_materialized_partitions(dg.AssetKey("generation_response")) == set(generations)
    assert len(instance.get_runs(dg.RunsFilter(job_name="generation"))) == len(generations)
