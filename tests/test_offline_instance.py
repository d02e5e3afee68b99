"""`--offline` keeps the kind of storage of the user's DAGSTER_HOME, or refuses in one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from daydreaming_dagster.instance.offline_home import OfflineInstanceError, prepare_offline_home
from daydreaming_dagster.runner import cli

REPO = Path(__file__).resolve().parents[1]
PG_EXAMPLE = REPO / "deploy" / "dagster.postgres.yaml"
POOLED = ("daydreaming_dagster.instance.postgres", "PooledPostgresStorage")
STOCK_PG = {
    "storage": {"postgres": {"postgres_db": {"hostname": "db", "username": "u", "password": {"env": "PW"}, "db_name": "x"}}},
    "run_queue": {"max_concurrent_runs": 3},
}


def home_with(tmp_path: Path, config: dict | Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    if isinstance(config, Path):
        (home / "dagster.yaml").write_bytes(config.read_bytes())
    else:
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def offline_yaml(home: Path) -> dict:
    prepare_offline_home(home / "offline", home / "dagster.yaml")
    return yaml.safe_load((home / "offline" / "dagster.yaml").read_text())


def one_sentence(message: str) -> None:
    assert "\n" not in message.strip() and message.strip().endswith(".")
    assert message.count(". ") == 0, message


@pytest.mark.parametrize(
    "config",
    [
        REPO / "dagster_home" / "dagster.yaml",  # the project's pooled SQLite, base_dir {env: DAGSTER_HOME}
        {"telemetry": {"enabled": False}},  # Dagster's default SQLite storage in DAGSTER_HOME
    ],
)
def test_sqlite_that_follows_the_home_is_copied_as_it_is(tmp_path, config):
    home = home_with(tmp_path, config)
    prepare_offline_home(home / "offline", home / "dagster.yaml")
    assert (home / "offline" / "dagster.yaml").read_bytes() == (home / "dagster.yaml").read_bytes()


def test_postgres_home_gives_offline_runs_a_schema_of_their_own(tmp_path):
    home = home_with(tmp_path, PG_EXAMPLE)
    user = yaml.safe_load(PG_EXAMPLE.read_text())
    offline = offline_yaml(home)
    storage = offline["storage"]["custom"]
    assert (storage["module"], storage["class"]) == POOLED
    assert storage["config"]["schema"] == "daydream_offline"
    # the same server, database and credentials (still read from the environment)
    assert storage["config"]["postgres_db"] == user["storage"]["custom"]["config"]["postgres_db"]
    assert storage["config"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert offline["concurrency"] == user["concurrency"]


def test_stock_postgres_and_a_named_schema(tmp_path):
    home = home_with(tmp_path, STOCK_PG)
    offline = offline_yaml(home)
    storage = offline["storage"]["custom"]
    assert (storage["module"], storage["class"]) == POOLED
    assert storage["config"] == {**STOCK_PG["storage"]["postgres"], "schema": "daydream_offline"}
    assert offline["run_queue"] == {"max_concurrent_runs": 3}

    named = tmp_path / "named"
    named.mkdir()
    config = {"storage": {"custom": {"module": POOLED[0], "class": POOLED[1], "config": {"postgres_url": "u", "schema": "dagster"}}}}
    home = home_with(named, config)
    assert offline_yaml(home)["storage"]["custom"]["config"]["schema"] == "dagster_offline"


@pytest.mark.parametrize(
    "config, named",
    [
        ({"storage": {"mysql": {"mysql_url": "mysql://x"}}}, "mysql"),
        ({"storage": {"custom": {"module": "acme.storage", "class": "Fancy", "config": {}}}}, "acme.storage.Fancy"),
        ({"storage": {"sqlite": {"base_dir": "/srv/dagster"}}}, "/srv/dagster"),
        (
            {"run_storage": {"module": "dagster_postgres", "class": "PostgresRunStorage", "config": {}}},
            "PostgresRunStorage",
        ),
    ],
)
def test_other_storages_are_refused_in_one_sentence(tmp_path, config, named):
    home = home_with(tmp_path, config)
    with pytest.raises(OfflineInstanceError) as err:
        prepare_offline_home(home / "offline", home / "dagster.yaml")
    one_sentence(str(err.value))
    assert named in str(err.value) and str(home / "offline" / "dagster.yaml") in str(err.value)
    assert not (home / "offline" / "dagster.yaml").exists()


def test_an_existing_offline_config_of_another_kind_is_refused(tmp_path):
    """The situation of the bug: a PostgreSQL home whose offline folder got a SQLite copy."""
    home = home_with(tmp_path, PG_EXAMPLE)
    (home / "offline").mkdir()
    (home / "offline" / "dagster.yaml").write_bytes((REPO / "dagster_home" / "dagster.yaml").read_bytes())
    with pytest.raises(OfflineInstanceError) as err:
        prepare_offline_home(home / "offline", home / "dagster.yaml")
    one_sentence(str(err.value))
    assert "uses SQLite but" in str(err.value) and "uses PostgreSQL" in str(err.value)

    # the same kind, edited by hand: used as it is
    (home / "offline" / "dagster.yaml").write_text(yaml.safe_dump(STOCK_PG))
    prepare_offline_home(home / "offline", home / "dagster.yaml")
    assert yaml.safe_load((home / "offline" / "dagster.yaml").read_text()) == STOCK_PG


def test_cli_refuses_before_doing_anything(tmp_path, monkeypatch, capsys):
    home = home_with(tmp_path, {"storage": {"mysql": {"mysql_url": "mysql://x"}}})
    monkeypatch.chdir(tmp_path)
    for name in ("DAYDREAM_DATA_ROOT", "DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "DAGSTER_HOME"):
        monkeypatch.setenv(name, "placeholder")  # records the original value for teardown
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAYDREAM_BACKEND")
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--offline", "--data-root", str(tmp_path / "data")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    one_sentence(err)
    assert "mysql" in err and "Traceback" not in err
    assert os.listdir(home) == ["dagster.yaml"]



def test_dagster_home_naming_the_offline_folder_gets_its_parents_kind(tmp_path, monkeypatch, capsys):
    """DAGSTER_HOME=<postgres home>/offline before any offline run: PostgreSQL, not the SQLite template."""
    home = home_with(tmp_path, PG_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    for name in ("DAYDREAM_DATA_ROOT", "DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "DAGSTER_HOME"):
        monkeypatch.setenv(name, "placeholder")  # records the original value for teardown
    monkeypatch.setenv("DAGSTER_HOME", str(home / "offline"))
    monkeypatch.delenv("DAYDREAM_BACKEND")
    # `keys` stops early (no task tables yet), after configuring the instance
    assert cli.main(["keys", "--offline", "--data-root", str(tmp_path / "data")]) == 2
    storage = yaml.safe_load((home / "offline" / "dagster.yaml").read_text())["storage"]["custom"]
    assert (storage["module"], storage["class"]) == POOLED and storage["config"]["schema"] == "daydream_offline"
    assert os.environ["DAGSTER_HOME"] == str(home / "offline")
