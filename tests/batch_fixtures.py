"""Fixtures and helpers of the batch-mode tests: a priced experiment for `daydream` in this process,
against the test server's batch protocol (see tests/openai_batch_protocol.py)."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY
from tests.test_cost import PRICES, answer, write_prices

RUN = ["run", "--workers", "1", "--concurrency", "2"]


def set_batch_columns(root: Path, columns: dict[str, dict[str, str]]) -> None:
    """Add columns to llm_models.csv: {column: {model_id: value}} (empty where not given)."""
    path = root / "1_raw" / "llm_models.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, values in columns.items():
        table[column] = table["id"].map(lambda m: values.get(m, ""))
    table.to_csv(path, index=False)


@pytest.fixture
def batched(tmp_path, monkeypatch, openai_server) -> Path:
    """The tiny experiment (6 generations, 12 pairs), priced, for `daydream` in this process."""
    experiment = write_experiment(tmp_path / "data")
    write_prices(experiment, PRICES)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DAGSTER_HOME": str(home),
        "OPENROUTER_API_KEY": KEY,
        "OPENROUTER_BASE_URL": openai_server.base_url,
        "DAYDREAM_DATA_ROOT": str(experiment),
        "DAYDREAM_BATCH_POLL_S": "0.1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    openai_server.default_answer = answer
    openai_server.batches.delay_s = 0.3
    return experiment


def materialization_counts(asset: str) -> collections.Counter:
    records = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey(asset), limit=10000).records
    return collections.Counter(r.partition_key for r in records)


def batch_asked(server) -> collections.Counter:
    return collections.Counter((b["model"], b["messages"][-1]["content"]) for b in server.batches.answered_bodies)
