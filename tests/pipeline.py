"""A small experiment's assets on a Dagster instance, calling the fake OpenAI server (shared by tests)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.assets import (
    core,
    llm_evaluation,
    llm_generation,
    raw_data,
    replicates,
    results,
)
from daydreaming_dagster.compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from daydreaming_dagster.resources.config import ExperimentConfig
from daydreaming_dagster.resources.io_managers import (
    TableIOManager,
    TextIOManager,
    read_table,
)
from daydreaming_dagster.resources.llm import LLMClientResource
from daydreaming_dagster.resources.response_store import ResponseStore
from daydreaming_dagster.store.layout import table_path, text_path

KEY = "sk-or-v1-PAIDTEST-5f0c2b7e9a41d3c8"
ASSETS = dg.load_assets_from_modules([raw_data, core, llm_generation, llm_evaluation, results, replicates])
TASK_TABLES = dg.AssetSelection.groups(raw_data.GROUP, core.GROUP)
REPLACE_CHANGED = {"ops": {"generation_response": {"config": {"replace_changed": True}}}}


class Pipeline:
    """The experiment at `data_root` on `instance`, calling `server`; one Dagster run per call
    (for one partition, or for a range of partitions)."""

    def __init__(self, data_root: Path, instance: dg.DagsterInstance, server) -> None:
        self.root = data_root
        self.instance = instance
        self.server = server
        out = str(data_root)
        self.resources = {
            "experiment_config": ExperimentConfig.for_experiment(out, out),
            # Bound like definitions.py binds it: through the environment, never as a literal.
            "llm": LLMClientResource(
                api_key=dg.EnvVar("OPENROUTER_API_KEY"),
                base_url=server.base_url,
                timeout_s=5.0,
                max_attempts=3,
                backoff_base_s=0.01,
                max_wait_s=1.0,
            ),
            "responses": ResponseStore(base_path=out),
            "text_io_manager": TextIOManager(base_path=out),
            "table_io_manager": TableIOManager(base_path=out),
        }

    def materialize(self, selection, partition_key=None, run_config=None, tags=None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            ASSETS,
            selection=selection,
            partition_key=partition_key,
            run_config=run_config,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
            tags=tags,
        )

    def materialize_range(self, selection, keys: list[str], run_config=None) -> dg.ExecuteInProcessResult:
        """One run over the partition-key range from keys[0] to keys[-1] (how batches run)."""
        tags = {ASSET_PARTITION_RANGE_START_TAG: str(keys[0]), ASSET_PARTITION_RANGE_END_TAG: str(keys[-1])}
        return self.materialize(selection, run_config=run_config, tags=tags)

    def tables(self) -> None:
        assert self.materialize(TASK_TABLES).success

    def generation_keys(self) -> list[str]:
        return read_table(table_path(self.root, "generation_tasks"))["generation_task_id"].tolist()

    def pairs(self) -> list[dg.MultiPartitionKey]:
        table = read_table(table_path(self.root, "evaluation_tasks"))
        return [
            dg.MultiPartitionKey({"generation_tasks": g, "evaluation_tasks": e})
            for g, e in zip(table["generation_task_id"], table["evaluation_task_id"])
        ]

    def generate(self, key: str, run_config=None) -> dg.ExecuteInProcessResult:
        return self.materialize(["generation_prompt", "generation_response"], key, run_config)

    def evaluate(self, pair: dg.MultiPartitionKey, run_config=None) -> dg.ExecuteInProcessResult:
        return self.materialize(["evaluation_prompt", "evaluation_response"], pair, run_config)

    def generate_all(self, run_config=None) -> None:
        """Every generation task, in one run over their range."""
        assert self.materialize_range(["generation_prompt", "generation_response"], self.generation_keys(), run_config).success

    def evaluate_all(self, run_config=None) -> None:
        """Every pair, one run per evaluation method over the range of its generations (how batches run)."""
        by_method: dict[str, list[dg.MultiPartitionKey]] = {}
        for pair in self.pairs():
            by_method.setdefault(pair.keys_by_dimension["evaluation_tasks"], []).append(pair)
        for pairs in by_method.values():
            assert self.materialize_range(["evaluation_prompt", "evaluation_response"], pairs, run_config).success

    def response_path(self, key: str) -> Path:
        return text_path(self.root, "generation_response", key)

    def response_metadata(self, asset: str, partition: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        materialization = event.asset_materialization
        assert materialization.partition == partition
        return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


@pytest.fixture
def pipeline(experiment, instance, openai_server, monkeypatch) -> Pipeline:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    pipe = Pipeline(experiment, instance, openai_server)
    pipe.tables()
    return pipe


def responses_in(folder: Path) -> list[Path]:
    """The stored responses directly in `folder` (what a person would call the response files)."""
    return sorted(p for p in folder.glob("*.txt") if p.is_file())
