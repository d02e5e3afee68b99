"""Shared pytest setup: the fake OpenAI-compatible server (`openai_server`) and small experiments."""

from pathlib import Path

import dagster as dg
import pytest

from tests.experiment_factory import write_experiment

pytest_plugins = ["tests.openai_server"]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """A tiny experiment data root: 3 concepts (k=2 -> 3 combos) x 1 template x 2 generators = 6
    generation tasks; x 1 evaluation template x 2 judges = 12 evaluation pairs."""
    return write_experiment(tmp_path / "data")


@pytest.fixture
def instance():
    """A temporary Dagster instance (its own DAGSTER_HOME under a temp dir)."""
    with dg.instance_for_test() as inst:
        yield inst
