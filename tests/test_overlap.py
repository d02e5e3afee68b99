"""Runs that overlap, on a real on-disk instance: which partitions other runs hold, the gate that
creates a runner's run only for partitions nobody else is doing, runs of a killed runner, and an
instance that an earlier version let two processes stamp twice."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.instance.opening import BrokenInstanceError, open_instance
from daydreaming_dagster.runner.backfills import submit_pair_backfill
from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.ranges import Batch
from daydreaming_dagster.runner.executor.worker import QUIET, execute, partition_run_config
from daydreaming_dagster.runner.reruns.overlap import HOST_TAG, PID_TAG, InProgress
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.claims import Claims, ClaimTimes, Owner
from daydreaming_dagster.store.layout import claim_path, text_path
from tests.experiment_factory import write_experiment

GENERATION = {"generation_prompt", "generation_response"}
EVALUATION = {"evaluation_prompt", "evaluation_response"}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME with the project's instance configuration, for an offline experiment of
    6 generations and 12 pairs whose task tables are built (their keys registered)."""
    data = write_experiment(tmp_path / "data")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(data))
    monkeypatch.setenv("DAYDREAM_BACKEND", "offline")
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)
    assert execute("task_tables", None, QUIET).success
    return home


def other_run(instance, job: str, assets: set[str], tags: dict, status=dg.DagsterRunStatus.STARTED) -> dg.DagsterRun:
    """A run of another process, as the instance records it."""
    run = dg.DagsterRun(
        job_name=job,
        run_id=str(uuid.uuid4()),
        status=status,
        tags=tags,
        asset_selection=frozenset(dg.AssetKey(a) for a in assets),
    )
    return instance.add_run(run)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_in_progress_runs_hold_exactly_their_partitions(home):
    instance = open_instance()
    g = instance.get_dynamic_partitions("generation_tasks")
    method = instance.get_dynamic_partitions("evaluation_tasks")[0]
    holding = other_run(instance, "generation", GENERATION, {RANGE_START: g[1], RANGE_END: g[2]})
    other_run(instance, "generation", GENERATION, {"dagster/partition": g[0]}, dg.DagsterRunStatus.SUCCESS)
    judging = other_run(instance, "evaluation", EVALUATION, {RANGE_START: f"{method}|{g[0]}", RANGE_END: f"{method}|{g[2]}"})

    in_progress = InProgress(instance)
    held = in_progress.busy(GENERATION, build_definitions(Settings.from_env()).resolve_job_def("generation").partitions_def)

    assert {k: str(v) for k, v in held.items()} == {g[1]: f"run {holding.run_id}", g[2]: f"run {holding.run_id}"}
    pairs = in_progress.busy(EVALUATION, build_definitions(Settings.from_env()).resolve_job_def("evaluation").partitions_def)
    assert sorted(pairs) == [f"{method}|{key}" for key in g[:3]]
    assert {str(v) for v in pairs.values()} == {f"run {judging.run_id}"}


def test_a_run_whose_worker_is_gone_is_marked_failed_and_holds_nothing(home):
    instance = open_instance()
    g = instance.get_dynamic_partitions("generation_tasks")
    here = socket.gethostname()
    pid = dead_pid()
    orphan = other_run(instance, "generation", GENERATION, {"dagster/partition": g[0], HOST_TAG: here, PID_TAG: str(pid)})
    alive = other_run(instance, "generation", GENERATION, {"dagster/partition": g[1], HOST_TAG: here, PID_TAG: str(os.getpid())})
    elsewhere = other_run(instance, "generation", GENERATION, {"dagster/partition": g[2], HOST_TAG: "other-host", PID_TAG: str(pid)})

    partitions_def = build_definitions(Settings.from_env()).resolve_job_def("generation").partitions_def
    held = InProgress(instance).busy(GENERATION, partitions_def)
    assert {k: v.id for k, v in held.items()} == {g[1]: alive.run_id, g[2]: elsewhere.run_id}
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    [failure] = [e for e in instance.all_logs(orphan.run_id) if e.dagster_event and e.dagster_event.is_run_failure]
    assert f"pid {pid} on host {here}" in failure.dagster_event.message and "no longer exists" in failure.dagster_event.message


def test_a_backfill_holds_what_it_has_not_materialized_while_its_daemon_runs(home, monkeypatch):
    instance = open_instance()
    defs = build_definitions(Settings.from_env())
    g = instance.get_dynamic_partitions("generation_tasks")
    method = instance.get_dynamic_partitions("evaluation_tasks")[0]
    wanted = [f"{method}|{key}" for key in g[:3]]
    backfill_id = submit_pair_backfill(instance, defs, wanted)
    partitions_def = defs.resolve_job_def("evaluation").partitions_def

    # No daemon has ever run here: the backfill makes no progress and holds nothing.
    assert InProgress(instance).busy(EVALUATION, partitions_def) == {}

    # The backfill daemon cannot run in a test; its heartbeat is what tells that it works.
    monkeypatch.setattr(InProgress, "_daemon_alive", lambda self, daemon_type: daemon_type == "BACKFILL")
    held = InProgress(instance).busy(EVALUATION, partitions_def)
    assert {k: str(v) for k, v in held.items()} == {key: f"backfill {backfill_id}" for key in wanted}


def test_a_runner_creates_runs_only_for_the_partitions_nobody_else_holds(home):
    instance = open_instance()
    g = instance.get_dynamic_partitions("generation_tasks")
    holding = other_run(instance, "generation", GENERATION, {"dagster/partition": g[1]})
    run_config = partition_run_config("generation", False, 4)

    first = execute("generation", Batch(tuple(g[:3])), run_config)

    assert first.success and first.keys == (g[0], g[2])
    assert first.left == {g[1]: f"run {holding.run_id}"}
    created = instance.get_runs(dg.RunsFilter(job_name="generation", statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert sorted(r.tags.get("dagster/partition") for r in created) == sorted([g[0], g[2]])  # two pieces
    assert all(r.tags[HOST_TAG] == socket.gethostname() and r.tags[PID_TAG] == str(os.getpid()) for r in created)

    # Planned before those finished, a batch over them finds them materialized meanwhile.
    second = execute("generation", Batch(tuple(g[:4])), run_config)

    by = {r.tags["dagster/partition"]: f"run {r.run_id}" for r in created}
    assert second.keys == (g[3],)
    assert second.left == {g[0]: by[g[0]], g[1]: f"run {holding.run_id}", g[2]: by[g[2]]}

    # A batch that another run holds entirely leaves exactly its own partitions, nothing more.
    assert execute("generation", Batch((g[1],)), run_config).left == {g[1]: f"run {holding.run_id}"}
    materialized = instance.get_materialized_partitions(dg.AssetKey("generation_response"))
    assert materialized == {g[0], g[2], g[3]}


def test_an_unpartitioned_job_another_run_is_building_is_left_to_it(home):
    instance = open_instance()
    building = other_run(instance, "results", {"evaluation_summary"}, {})

    outcome = execute("results", None, QUIET)

    assert outcome.left == {"results": f"run {building.run_id}"} and outcome.keys == ()
    assert instance.get_runs(dg.RunsFilter(job_name="results")) == [building]


# --------------------------------------------------------------------------- an instance stamped twice


def test_an_instance_stamped_twice_is_reported_in_one_sentence_and_repaired(tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAYDREAM_BACKEND", raising=False)
    open_instance()
    schedules = home / "schedules" / "schedules.db"
    # What two processes creating the instance at once left, as measured: the current version,
    # and the older one the second process stamped on the tables the first had just created.
    with sqlite3.connect(schedules) as conn:
        [(head,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        conn.execute("INSERT INTO alembic_version VALUES ('5771160a95ad')")

    with pytest.raises(BrokenInstanceError) as broken:
        open_instance()
    message = str(broken.value)
    assert message == (
        f"The Dagster instance in {home} was left broken by two processes that created it at once (before "
        f"daydream serialized that): schedules/schedules.db records 2 schema versions ({head}, 5771160a95ad); "
        "repair it with `daydream repair-instance`, which keeps the version its tables were created at."
    )
    assert daydream(["prune-keys"]) == 2
    assert capsys.readouterr().err.strip() == message  # the sentence, not a traceback

    assert daydream(["repair-instance"]) == 0
    assert f"kept schema version {head}, removed 5771160a95ad" in capsys.readouterr().out
    open_instance()  # opens again
    with sqlite3.connect(schedules) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    assert daydream(["repair-instance"]) == 0
    assert "nothing to repair" in capsys.readouterr().out


@pytest.mark.slow
def test_a_partition_another_live_owner_is_paying_for_is_left_to_it_not_failed(home, monkeypatch, capsys):
    monkeypatch.setenv("DAYDREAM_CLAIM_WAIT_S", "1")
    monkeypatch.setenv("DAYDREAM_CLAIM_POLL_S", "0.1")
    g = open_instance().get_dynamic_partitions("generation_tasks")
    output = Settings.from_env().output_root
    held = Claims(times=ClaimTimes(lease_s=600, renew_s=150)).take(
        claim_path(text_path(output, "generation_response", g[0])), Owner("other-host", 4242, "run-elsewhere"), {}
    )

    assert daydream(["run", "--offline", "--workers", "1"]) == 0

    out, err = capsys.readouterr()
    assert "generation: 5 ran, 0 skipped, 1 left to another run, 0 failed" in out, err
    assert "evaluation: 2 pair(s) wait for a generation that is not materialized" in err
    assert "FAILED" not in err
    assert g[0] not in open_instance().get_materialized_partitions(dg.AssetKey("generation_response"))
    assert Claims().holder(held.path) is not None  # the other owner's claim is untouched
