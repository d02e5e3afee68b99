"""PostgreSQL instance storage, on a real server the tests start (fixture `postgres`, tests/postgres.py).

End to end, as a user runs it with deploy/dagster.postgres.yaml: `daydream run --offline` (and its
resume), `daydream backfill`; in process: the sensor, the pool of connections, the schema that
keeps offline runs apart, and the first use of a concurrency pool by two processes at once."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.experiment.stages import EVALUATION
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from tests.experiment_factory import write_experiment
from tests.postgres import LocalPostgres
from tests.test_automation import tick
from tests.test_cli import DAYDREAM, GENERATION_IDS, METHOD_IDS, VALID_PAIRS, base_env, explain, run_cli  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PG_EXAMPLE = REPO / "deploy" / "dagster.postgres.yaml"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def postgres_home(path: Path, schema: str | None = None) -> Path:
    """A DAGSTER_HOME with the README's PostgreSQL dagster.yaml (optionally with a schema)."""
    path.mkdir(parents=True)
    config = yaml.safe_load(PG_EXAMPLE.read_text())
    if schema:
        config["storage"]["custom"]["config"]["schema"] = schema
    (path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return path


def sessions(server: LocalPostgres, db_name: str) -> int:
    return server.query("SELECT sessions FROM pg_stat_database WHERE datname = %s", params=(db_name,))[0][0]


def tables_by_schema(server: LocalPostgres, db_name: str) -> dict[str, set[str]]:
    rows = server.query(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        db_name,
    )
    found: dict[str, set[str]] = {}
    for schema, table in rows:
        found.setdefault(schema, set()).add(table)
    return found


@pytest.fixture
def pg_instance(postgres: LocalPostgres, tmp_path: Path, monkeypatch):
    """A Dagster instance on a new database, built from the README's dagster.yaml."""
    db_name = postgres.create_database()
    for name, value in postgres.env(db_name).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(postgres_home(tmp_path / "home"))) as instance:
        yield instance, db_name


def with_schema_and_driver(url: str, schema: str | None) -> str:
    pytest.importorskip("dagster_postgres", reason="the postgres extra is not installed (`uv sync --extra postgres`)")
    from daydreaming_dagster.instance.postgres import with_schema_and_driver

    return with_schema_and_driver(url, schema)


@pytest.mark.parametrize(
    "url, schema, expected",
    [
        ("postgresql://u:p@h:5432/d", None, "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgresql+psycopg2://u:p@h:5432/d", "daydream_offline", "postgresql+psycopg2://u:p@h:5432/d?options=-csearch_path%3Ddaydream_offline"),
        (
            "postgresql://u:p@h:5432/d?options=-c%20synchronous_commit%3Doff",
            "s1",
            "postgresql+psycopg2://u:p@h:5432/d?options=-c+synchronous_commit%3Doff+-csearch_path%3Ds1",
        ),
    ],
)
def test_postgres_url_gets_psycopg2_and_the_schema(url, schema, expected):
    assert with_schema_and_driver(url, schema) == expected


def test_a_schema_that_is_not_a_plain_name_is_refused():
    with pytest.raises(ValueError, match=r"^PostgreSQL schema 'x; drop' in dagster.yaml is not a plain lower-case name"):
        with_schema_and_driver("postgresql://u@h/d", "x; drop")


# --------------------------------------------------------------------------- in process


def test_statements_share_pooled_connections(pg_instance, postgres):
    instance, db_name = pg_instance
    before = sessions(postgres, db_name)
    for i in range(40):
        instance.add_dynamic_partitions("generation_tasks", [f"g{i}"])
        assert instance.has_dynamic_partition("generation_tasks", f"g{i}")
        instance.get_runs_count()
    # 120 statements; stock dagster-postgres opens one session for each
    assert sessions(postgres, db_name) - before <= 5


def test_a_schema_keeps_two_instances_apart_in_one_database(pg_instance, postgres, tmp_path):
    instance, db_name = pg_instance
    with dg.DagsterInstance.from_config(str(postgres_home(tmp_path / "other", schema="daydream_offline"))) as other:
        other.add_dynamic_partitions("generation_tasks", ["only-offline"])
        instance.add_dynamic_partitions("generation_tasks", ["only-real"])
        assert list(other.get_dynamic_partitions("generation_tasks")) == ["only-offline"]
        assert list(instance.get_dynamic_partitions("generation_tasks")) == ["only-real"]
    tables = tables_by_schema(postgres, db_name)
    assert {"runs", "event_logs", "dynamic_partitions"} <= tables["public"]
    assert tables["daydream_offline"] == tables["public"]


def test_a_pool_initialized_by_another_process_first_does_not_fail(pg_instance, tmp_path):
    """Dagster's first use of a pool inserts its limit row; when another process inserted it
    between Dagster's check and its INSERT, stock dagster-postgres fails the step."""
    instance, _ = pg_instance
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as second:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default("llm_api")
        # what the slower process does next: its INSERT meets the row the first one made
        assert second.event_log_storage.initialize_concurrency_limit_to_default("llm_api")
    limits = {p.name: p for p in instance.event_log_storage.get_pool_limits()}
    assert limits["llm_api"].limit == 8 and limits["llm_api"].from_default


def test_sensor_requests_exactly_the_new_generations_pairs_on_postgres(pg_instance, tmp_path):
    instance, _ = pg_instance
    root = write_experiment(tmp_path / "data", generators=("gen-model-1",))
    defs = build_definitions(Settings(data_root=root, backend="offline", base_url="http://127.0.0.1:9"))

    def run(job: str, partition_key: str | None = None) -> None:
        job_def = defs.resolve_job_def(job)
        assert job_def.execute_in_process(instance=instance, partition_key=partition_key, run_config=QUIET).success

    run("task_tables")
    table = read_table(root / "offline" / "2_tasks" / "evaluation_tasks.csv")
    generations = sorted(table["generation_task_id"].unique())
    first, cursor = tick(defs, instance, None)
    assert not first.run_requests
    for g in generations[:2]:
        run("generation", g)
    result, cursor = tick(defs, instance, cursor)
    assert sorted(r.partition_key for r in result.run_requests) == sorted(
        EVALUATION.select(table, parents=generations[:2])
    )
    again, _ = tick(defs, instance, cursor)
    assert not again.run_requests


# --------------------------------------------------------------------------- the command line


@dataclass
class PostgresRun:
    base: Path
    data: Path
    home: Path  # the user's DAGSTER_HOME (PostgreSQL); the offline instance is home/offline
    db_name: str
    env: dict[str, str]
    proc: subprocess.CompletedProcess

    @property
    def out(self) -> Path:
        return self.data / "offline"

    def responses(self) -> dict[Path, tuple[int, bytes]]:
        folders = (self.out / "3_generation" / "generation_response", self.out / "4_evaluation" / "evaluation_response")
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for folder in folders for p in sorted(folder.rglob("*.txt"))}


@pytest.fixture(scope="module")
def postgres_run(tmp_path_factory, base_env, postgres) -> PostgresRun:  # noqa: F811
    """`daydream run --offline` with DAGSTER_HOME holding the README's PostgreSQL dagster.yaml."""
    base = tmp_path_factory.mktemp("pgcli")
    data = write_experiment(base / "data")
    home = postgres_home(base / "dagster_home")
    db_name = postgres.create_database()
    env = {**base_env, **postgres.env(db_name), "DAGSTER_HOME": str(home)}
    proc = run_cli([*DAYDREAM, "run", "--offline", "--concurrency", "2", "--data-root", str(data)], env, base)
    return PostgresRun(base, data, home, db_name, env, proc)


@pytest.mark.slow
def test_offline_pipeline_runs_on_postgres_in_its_own_schema(postgres_run: PostgresRun, postgres):
    run = postgres_run
    assert run.proc.returncode == 0, explain(run.proc)
    assert "generation: 6 ran, 0 skipped, 0 failed" in run.proc.stdout
    assert "evaluation: 12 ran, 0 skipped, 0 failed" in run.proc.stdout
    parsed = pd.read_csv(run.out / "5_results" / "parsed_scores.csv")
    assert sorted(parsed["evaluation_task_id"] + "|" + parsed["generation_task_id"]) == VALID_PAIRS

    # the offline instance is PostgreSQL too: the same database, its own schema, no SQLite anywhere
    offline = yaml.safe_load((run.home / "offline" / "dagster.yaml").read_text())["storage"]["custom"]
    assert offline["class"] == "PooledPostgresStorage" and offline["config"]["schema"] == "daydream_offline"
    assert not [p for p in run.home.rglob("*") if p.suffix == ".db"]
    assert set(tables_by_schema(postgres, run.db_name)) == {"daydream_offline"}
    materialized = postgres.query(
        "SELECT count(DISTINCT partition) FROM daydream_offline.event_logs"
        " WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
        run.db_name,
        ('["evaluation_response"]',),
    )
    assert materialized == [(12,)]


@pytest.fixture(scope="module")
def resumed(postgres_run: PostgresRun, postgres):
    """The run counts, response files and second `daydream run --offline` of the PostgreSQL run."""
    assert postgres_run.proc.returncode == 0, explain(postgres_run.proc)
    count = "SELECT count(*) FROM daydream_offline.runs"
    runs_before, files_before = postgres.query(count, postgres_run.db_name), postgres_run.responses()
    again = run_cli(
        [*DAYDREAM, "run", "--offline", "--concurrency", "2", "--data-root", str(postgres_run.data)],
        postgres_run.env,
        postgres_run.base,
    )
    return again, runs_before, postgres.query(count, postgres_run.db_name), files_before


@pytest.mark.slow
def test_second_run_on_postgres_calls_nothing_and_reruns_nothing(postgres_run: PostgresRun, resumed):
    again, runs_before, runs_after, files_before = resumed
    assert again.returncode == 0, explain(again)
    assert "generation: 0 ran, 6 skipped, 0 failed" in again.stdout
    assert "evaluation: 0 ran, 12 skipped, 0 failed" in again.stdout
    assert runs_after == runs_before  # not one Dagster run
    assert postgres_run.responses() == files_before and len(files_before) == 18


@pytest.mark.slow
def test_backfill_is_submitted_to_the_postgres_instance(postgres_run: PostgresRun, resumed, monkeypatch):
    run = postgres_run
    method = METHOD_IDS[0]
    proc = run_cli([*DAYDREAM, "backfill", "--offline", "--data-root", str(run.data), "--evaluation-task", method], run.env, run.base)
    assert proc.returncode == 0, explain(proc)
    assert "submitted backfill" in proc.stdout and str(run.home / "offline") in proc.stdout
    backfill_id = proc.stdout.split("submitted backfill ")[1].split()[0]

    for name, value in run.env.items():
        if name.startswith("DAGSTER_PG_"):
            monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(run.home / "offline")) as instance:
        subset = instance.get_backfill(backfill_id).asset_backfill_data.target_subset
        targeted = subset.get_partitions_subset(dg.AssetKey("evaluation_response")).get_partition_keys()
    assert sorted(map(str, targeted)) == sorted(f"{method}|{g}" for g in GENERATION_IDS)


@pytest.mark.slow
def test_offline_over_a_sqlite_copy_beside_postgres_is_refused(postgres_run: PostgresRun, resumed, tmp_path):
    """What `daydream run --offline` used to do silently: SQLite in the offline folder of a
    PostgreSQL home. With such a file there, the command refuses and names it."""
    home = postgres_home(tmp_path / "home")
    (home / "offline").mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "offline" / "dagster.yaml")
    proc = run_cli(
        [*DAYDREAM, "run", "--offline", "--data-root", str(postgres_run.data)],
        {**postgres_run.env, "DAGSTER_HOME": str(home)},
        tmp_path,
    )
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().count("\n") == 0 and "uses SQLite but" in proc.stderr
    assert sorted(p.name for p in (home / "offline").iterdir()) == ["dagster.yaml"]
