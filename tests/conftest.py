"""Shared pytest setup: the fake OpenAI-compatible server (`openai_server`), a PostgreSQL server
(`postgres`) and small experiments."""

from pathlib import Path

import dagster as dg
import pytest

from tests.experiment_factory import write_experiment

pytest_plugins = [
    "tests.openai_server", "tests.pipeline", "tests.browser", "tests.postgres", "tests.s3_server", "tests.batch_fixtures",
]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """A tiny experiment data root: 3 concepts (k=2 -> 3 combos) x 1 template x 2 generators = 6
    generation tasks; x 1 evaluation template x 2 judges = 12 evaluation pairs."""
    return write_experiment(tmp_path / "data")


@pytest.fixture
def instance():
    """An ephemeral (in-memory) Dagster instance: real storage code, ~4x faster per run than
    SQLite on disk. Tests that need the on-disk instance (CLI subprocesses) make their own."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst
