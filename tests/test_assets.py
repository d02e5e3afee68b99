"""The Dagster assets: task tables and key registration, the partitioned LLM assets, the asset graph."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.assets import core, llm_evaluation, llm_generation, raw_data, results
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.experiment.ids import combo_id, evaluation_task_id, generation_task_id
from daydreaming_dagster.experiment.loaders import load_models, load_templates
from daydreaming_dagster.resources.config import ExperimentConfig
from daydreaming_dagster.resources.io_managers import TableIOManager, TextIOManager
from daydreaming_dagster.resources.llm import LLMClientResource
from daydreaming_dagster.resources.response_store import ResponseStore
from daydreaming_dagster.settings import Settings
from tests.memory_io import MemoryIOManager

ASSETS = dg.load_assets_from_modules([raw_data, core, llm_generation, llm_evaluation, results])
TASK_ASSETS = dg.load_assets_from_modules([raw_data, core])
ASSETS_BY_NAME = {key.path[-1]: a for a in ASSETS for key in a.keys}

GENERATIONS = ["generation_prompt", "generation_response"]
EVALUATIONS = ["evaluation_prompt", "evaluation_response"]
# The tiny experiment (tests/experiment_factory.py): 3 concepts, k=2, 1 template, 2 generators, 2 judges.
GENERATION_IDS = [
    generation_task_id(combo_id(pair), "gen-a", model)
    for pair in itertools.combinations(["alpha", "beta", "gamma"], 2)
    for model in ("gen-model-1", "gen-model-2")
]
METHOD_IDS = [evaluation_task_id("judge-a", judge) for judge in ("judge-model-1", "judge-model-2")]


# --------------------------------------------------------------------------- helpers

# Every IO manager call of the recording IO manager, per store: (op, asset, partition key or None).
CALLS: dict[str, list[tuple[str, str, str | None]]] = {}
VALUES: dict[str, dict[tuple[str, str | None], Any]] = {}


class RecordingIOManager(MemoryIOManager):
    """The project's in-memory IO manager, recording each handle_output/load_input Dagster makes."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        key = str(context.asset_partition_key) if context.has_asset_partitions else None
        CALLS.setdefault(self.store, []).append(("handle", context.asset_key.path[-1], key))
        VALUES.setdefault(self.store, {})[(context.asset_key.path[-1], key)] = getattr(obj, "text", obj)
        super().handle_output(context, obj)

    def load_input(self, context: dg.InputContext) -> Any:
        key = str(context.asset_partition_key) if context.has_asset_partitions else None
        CALLS.setdefault(self.store, []).append(("load", context.asset_key.path[-1], key))
        return super().load_input(context)


@pytest.fixture
def fast_instance():
    """An ephemeral (in-memory) instance: same dynamic-partition and materialization storage code,
    without a SQLite file per run (about 4x faster per run than instance_for_test)."""
    inst = dg.DagsterInstance.ephemeral()
    yield inst
    inst.dispose()


@pytest.fixture
def store(request) -> str:
    """A store name of its own for this test; emptied afterwards."""
    name = f"test-assets::{request.node.nodeid}"
    yield name
    MemoryIOManager.clear(name)
    CALLS.pop(name, None)
    VALUES.pop(name, None)


def memory_resources(experiment: Path, out: Path, store: str, llm: LLMClientResource | None = None) -> dict:
    io = RecordingIOManager(store=store)
    return {
        "experiment_config": ExperimentConfig.for_experiment(str(experiment), str(out)),
        "llm": llm or LLMClientResource(backend="offline"),
        "responses": ResponseStore(base_path=str(out)),
        "text_io_manager": io,
        "table_io_manager": io,
    }


def file_resources(experiment: Path, out: Path, llm: LLMClientResource) -> dict:
    return {
        "experiment_config": ExperimentConfig.for_experiment(str(experiment), str(out)),
        "llm": llm,
        "responses": ResponseStore(base_path=str(out)),
        "text_io_manager": TextIOManager(base_path=str(out)),
        "table_io_manager": TableIOManager(base_path=str(out)),
    }


def run(instance, resources: dict, selection: list[str], partition_key: str | None = None, **kwargs):
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        **kwargs,
    )


def run_task_tables(instance, resources: dict):
    result = run(instance, resources, [a.key.path[-1] for a in TASK_ASSETS])
    assert result.success, failure_messages(result)
    return result


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's description and error messages, joined."""
    parts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            parts.append(data.user_failure_data.description)
        error = data.error
        while error is not None:
            parts.append(error.message)
            error = error.cause
    return "\n".join(parts)


def pair(generation: str, method: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"generation_tasks": generation, "evaluation_tasks": method})


def expected_input_loads(selection: list[str], partition_key: str) -> Counter:
    """One load per declared asset input of each selected asset, with the mapped upstream partition."""
    loads = Counter()
    for name in selection:
        for upstream in ASSETS_BY_NAME[name].keys_by_input_name.values():
            upstream_name = upstream.path[-1]
            upstream_def = ASSETS_BY_NAME[upstream_name].partitions_def
            if upstream_def is None:
                key = None
            elif isinstance(upstream_def, dg.MultiPartitionsDefinition):
                key = str(partition_key)
            else:  # the generation dimension of the pair "<eval>|<gen>"
                key = str(partition_key).split("|", 1)[1]
            loads[("load", upstream_name, key)] += 1
    return loads


# --------------------------------------------------------------------------- a. task tables


def test_task_tables_have_valid_foreign_keys_and_register_keys(experiment: Path, tmp_path: Path, instance):
    resources = {"experiment_config": ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))}
    result = dg.materialize_to_memory(TASK_ASSETS, instance=instance, resources=resources)
    assert result.success

    concepts = result.output_for_node("concepts")
    combos = result.output_for_node("content_combinations")
    generation = result.output_for_node("generation_tasks")
    evaluation = result.output_for_node("evaluation_tasks")
    templates = result.output_for_node("evaluation_templates")
    models = result.output_for_node("llm_models")

    assert combos["combo_id"].nunique() == 3 and len(combos) == 6
    assert set(combos["concept_id"]) <= set(concepts["concept_id"])
    assert len(generation) == 6 and generation["generation_task_id"].is_unique
    assert sorted(generation["generation_task_id"]) == sorted(GENERATION_IDS)
    assert set(generation["combo_id"]) == set(combos["combo_id"])
    assert set(generation["generation_model_id"]) <= set(models.loc[models["for_generation"], "id"])
    assert len(evaluation) == 12
    assert not evaluation[["generation_task_id", "evaluation_task_id"]].duplicated().any()
    assert set(evaluation["generation_task_id"]) == set(generation["generation_task_id"])
    assert set(evaluation["evaluation_template_id"]) <= set(templates.loc[templates["active"], "template_id"])
    assert set(evaluation["evaluation_model_id"]) <= set(models.loc[models["for_evaluation"], "id"])
    assert sorted(evaluation["evaluation_task_id"].unique()) == METHOD_IDS

    # the dynamic keys are on the instance: generation ids, and the method ids of the eval dimension
    assert sorted(instance.get_dynamic_partitions("generation_tasks")) == sorted(GENERATION_IDS)
    assert sorted(instance.get_dynamic_partitions("evaluation_tasks")) == METHOD_IDS
    generation_keys = instance.get_dynamic_partitions("generation_tasks")
    evaluation_keys = instance.get_dynamic_partitions("evaluation_tasks")

    # re-materializing registers nothing twice and changes nothing
    again = dg.materialize_to_memory(TASK_ASSETS, instance=instance, resources=resources)
    assert again.success
    assert instance.get_dynamic_partitions("generation_tasks") == generation_keys
    assert instance.get_dynamic_partitions("evaluation_tasks") == evaluation_keys
    pd.testing.assert_frame_equal(again.output_for_node("evaluation_tasks"), evaluation)


def test_registration_is_incremental(experiment: Path, tmp_path: Path, fast_instance):
    """A changed experiment adds the new keys and keeps the old ones (never wipe and recreate)."""
    resources = {"experiment_config": ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))}
    assert dg.materialize_to_memory(TASK_ASSETS, instance=fast_instance, resources=resources).success
    before = fast_instance.get_dynamic_partitions("generation_tasks")

    raw = experiment / "1_raw"
    with (raw / "concepts" / "concepts_metadata.csv").open("a") as f:
        f.write("delta,Delta,true\n")
    # gamma becomes inactive: its keys are stale but stay registered
    csv = raw / "concepts" / "concepts_metadata.csv"
    csv.write_text(csv.read_text().replace("gamma,Gamma,true", "gamma,Gamma,false"))
    result = dg.materialize_to_memory(TASK_ASSETS, instance=fast_instance, resources=resources)
    assert result.success
    after = fast_instance.get_dynamic_partitions("generation_tasks")
    current = result.output_for_node("generation_tasks")["generation_task_id"].tolist()
    assert after[: len(before)] == before
    assert set(after) == set(before) | set(current)
    assert len(after) == len(set(after))


# --------------------------------------------------------------------------- b. dangling FK


def test_evaluation_tasks_with_a_dangling_generation_id_registers_nothing(experiment: Path, fast_instance, tmp_path):
    raw = experiment / "1_raw"
    generation = pd.DataFrame({"generation_task_id": ["gen-registered", "gen-ghost", "gen-phantom"]})
    fast_instance.add_dynamic_partitions("generation_tasks", ["gen-registered"])
    context = dg.build_asset_context(instance=fast_instance)
    config = ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))
    with pytest.raises(dg.Failure) as info:
        core.evaluation_tasks(context, generation, load_templates(raw, "evaluation"), load_models(raw), config)
    message = info.value.description
    assert "gen-ghost" in message and "gen-phantom" in message
    assert "gen-registered" not in message
    assert fast_instance.get_dynamic_partitions("evaluation_tasks") == []
    assert fast_instance.get_dynamic_partitions("generation_tasks") == ["gen-registered"]


def test_evaluation_tasks_run_with_a_dangling_generation_id_fails(experiment: Path, tmp_path: Path, fast_instance, store):
    """Through Dagster: generation_tasks exists in storage, but one of its keys was never registered."""
    resources = memory_resources(experiment, tmp_path / "out", store)
    run_task_tables(fast_instance, resources)
    fast_instance.delete_dynamic_partition("evaluation_tasks", METHOD_IDS[0])
    fast_instance.delete_dynamic_partition("evaluation_tasks", METHOD_IDS[1])
    ghost = GENERATION_IDS[3]
    fast_instance.delete_dynamic_partition("generation_tasks", ghost)

    result = run(fast_instance, resources, ["evaluation_tasks"])
    assert not result.success
    assert ghost in failure_messages(result)
    assert fast_instance.get_dynamic_partitions("evaluation_tasks") == []


# --------------------------------------------------------------------------- c. evaluation partitions


def test_evaluation_prompt_gets_its_own_generation_through_the_partition_mapping(
    experiment: Path, tmp_path: Path, fast_instance, store
):
    instance = fast_instance
    resources = memory_resources(experiment, tmp_path / "out", store)
    run_task_tables(instance, resources)
    g1, g2 = GENERATION_IDS[0], GENERATION_IDS[3]
    for g in (g1, g2):
        assert run(instance, resources, GENERATIONS, partition_key=g).success
    text = {g: VALUES[store][("generation_response", g)] for g in (g1, g2)}
    assert text[g1] != text[g2] and text[g1] and text[g2]

    method = METHOD_IDS[1]
    # one pair addressed as a MultiPartitionKey, the other as the "<eval>|<gen>" string
    for g, other, partition_key in (
        (g1, g2, pair(g1, method)),
        (g2, g1, f"{method}|{g2}"),
    ):
        key = f"{method}|{g}"
        CALLS[store].clear()
        result = run(instance, resources, EVALUATIONS, partition_key=partition_key)
        assert result.success, failure_messages(result)

        prompt = VALUES[store][("evaluation_prompt", key)]
        assert text[g] in prompt
        assert text[other] not in prompt

        # Dagster itself loaded generation_response, for the upstream generation key only.
        calls = CALLS[store]
        assert [c for c in calls if c[1] == "generation_response"] == [("load", "generation_response", g)]
        # Exactly one load per declared input and one handle per output: no asset reads storage by hand.
        assert Counter(c for c in calls if c[0] == "load") == expected_input_loads(EVALUATIONS, key)
        assert sorted(c for c in calls if c[0] == "handle") == [
            ("handle", "evaluation_prompt", key),
            ("handle", "evaluation_response", key),
        ]
        assert "SCORE:" in VALUES[store][("evaluation_response", key)]

    done = instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))
    assert done == {f"{method}|{g1}", f"{method}|{g2}"}


# --------------------------------------------------------------------------- d. the asset graph


@pytest.fixture
def defs(experiment: Path) -> dg.Definitions:
    return build_definitions(Settings(data_root=experiment, backend="offline", base_url="http://127.0.0.1:9/v1"))


def test_graph_generation_response_feeds_evaluation_prompt_by_the_generation_dimension(defs, fast_instance):
    graph = defs.resolve_asset_graph()
    prompt, response = dg.AssetKey("evaluation_prompt"), dg.AssetKey("generation_response")
    assert response in graph.get(prompt).parent_keys
    mapping = graph.get_partition_mapping(prompt, response)
    assert isinstance(mapping, dg.MultiToSingleDimensionPartitionMapping)
    assert mapping.partition_dimension_name == "generation_tasks"
    assert defs.get_assets_def(prompt).get_partition_mapping(response) == mapping

    # and it maps a pair to its generation, not to the method
    fast_instance.add_dynamic_partitions("generation_tasks", ["g1", "g2"])
    fast_instance.add_dynamic_partitions("evaluation_tasks", ["e1"])
    downstream_def = graph.get(prompt).partitions_def
    upstream_def = graph.get(response).partitions_def
    subset = downstream_def.subset_with_partition_keys([pair("g2", "e1")])
    mapped = mapping.get_upstream_mapped_partitions_result_for_partitions(
        subset, downstream_def, upstream_def, dynamic_partitions_store=fast_instance
    )
    assert set(mapped.partitions_subset.get_partition_keys()) == {"g2"}


def test_graph_evaluation_response_depends_on_the_prompt_not_the_generation(defs):
    graph = defs.resolve_asset_graph()
    llm_assets = {dg.AssetKey(n) for n in GENERATIONS + EVALUATIONS}
    parents = graph.get(dg.AssetKey("evaluation_response")).parent_keys
    assert parents & llm_assets == {dg.AssetKey("evaluation_prompt")}
    assert dg.AssetKey("generation_response") not in parents
    # the prompt is taken with the identity mapping of the shared partitions definition
    mapping = graph.get_partition_mapping(dg.AssetKey("evaluation_response"), dg.AssetKey("evaluation_prompt"))
    assert isinstance(mapping, dg.IdentityPartitionMapping)


def test_graph_evaluation_assets_share_one_multi_partitions_definition(defs):
    graph = defs.resolve_asset_graph()
    prompt_def = graph.get(dg.AssetKey("evaluation_prompt")).partitions_def
    response_def = graph.get(dg.AssetKey("evaluation_response")).partitions_def
    assert isinstance(prompt_def, dg.MultiPartitionsDefinition)
    assert prompt_def == response_def
    dims = {d.name: d.partitions_def for d in prompt_def.partitions_defs}
    assert set(dims) == {"generation_tasks", "evaluation_tasks"}
    for name, dim in dims.items():
        assert isinstance(dim, dg.DynamicPartitionsDefinition) and dim.name == name
    generation_def = graph.get(dg.AssetKey("generation_response")).partitions_def
    assert dims["generation_tasks"] == generation_def
    assert graph.get(dg.AssetKey("generation_prompt")).partitions_def == generation_def


# --------------------------------------------------------------------------- e. invalid pairs


def openai_llm(server) -> LLMClientResource:
    return LLMClientResource(backend="openai", api_key="test-key", base_url=server.base_url, max_attempts=1)


def test_invalid_pairs_fail_before_any_llm_call(experiment: Path, tmp_path: Path, fast_instance, store, openai_server):
    instance = fast_instance
    out = tmp_path / "out"
    offline = memory_resources(experiment, out, store)
    paid = memory_resources(experiment, out, store, openai_llm(openai_server))
    run_task_tables(instance, offline)
    g, method = GENERATION_IDS[0], METHOD_IDS[1]  # judge-model-2
    assert run(instance, offline, GENERATIONS, partition_key=g).success
    assert run(instance, offline, ["evaluation_prompt"], partition_key=pair(g, method)).success

    # 1. both keys registered (an extra method key added by hand), the pair not in the table
    ghost = "judge-a__not-a-judge"
    instance.add_dynamic_partitions("evaluation_tasks", [ghost])
    result = run(instance, paid, EVALUATIONS, partition_key=f"{ghost}|{g}")
    assert not result.success
    message = failure_messages(result)
    assert f"'{ghost}|{g}' is not listed in evaluation_tasks" in message
    assert "daydream keys" in message
    assert openai_server.requests == []
    assert f"{ghost}|{g}" not in instance.get_materialized_partitions(dg.AssetKey("evaluation_prompt"))

    # 2. a pair that was valid (its prompt is stored) and then left the table: no judge call for it
    models = experiment / "1_raw" / "llm_models.csv"
    models.write_text(models.read_text().replace("judge-model-2,false,True", "judge-model-2,false,false"))
    run_task_tables(instance, offline)
    assert method in instance.get_dynamic_partitions("evaluation_tasks")  # keys are never removed
    result = run(instance, paid, ["evaluation_response"], partition_key=pair(g, method))
    assert not result.success
    message = failure_messages(result)
    assert f"'{method}|{g}' is not listed in evaluation_tasks" in message and "daydream keys" in message
    assert openai_server.requests == []
    assert not instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))


# --------------------------------------------------------------------------- f. what is sent, and reuse


def test_generation_response_sends_the_experiment_parameters_and_is_reused(
    experiment: Path, tmp_path: Path, fast_instance, openai_server
):
    out = tmp_path / "out"
    resources = file_resources(experiment, out, openai_llm(openai_server))
    run_task_tables(fast_instance, resources)
    generation = pd.read_csv(out / "2_tasks" / "generation_tasks.csv", dtype=str)
    task = generation[generation["generation_model_id"] == "gen-model-2"].iloc[0]
    g = task["generation_task_id"]
    openai_server.default_answer = lambda body: "A fresh idea from the fake server."

    result = run(fast_instance, resources, GENERATIONS, partition_key=g)
    assert result.success, failure_messages(result)
    assert len(openai_server.requests) == 1
    body = openai_server.requests[0].body
    assert body["model"] == "test/gen-model-2" == task["generation_model"]
    assert body["temperature"] == 0.5  # generation_temperature from experiment.toml
    assert body["max_tokens"] == 300  # generation_max_tokens from experiment.toml
    prompt = (out / "3_generation" / "generation_prompt" / f"{g}.txt").read_text()
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert "Alpha" in prompt or "Beta" in prompt or "Gamma" in prompt
    stored = out / "3_generation" / "generation_response" / f"{g}.txt"
    assert stored.read_text() == "A fresh idea from the fake server."
    mtime = stored.stat().st_mtime_ns

    again = run(fast_instance, resources, GENERATIONS, partition_key=g)
    assert again.success, failure_messages(again)
    assert len(openai_server.requests) == 1  # reused by content: no second paid call
    assert stored.read_text() == "A fresh idea from the fake server."
    assert stored.stat().st_mtime_ns == mtime
    reused = [
        m.metadata["reused"].value
        for m in again.asset_materializations_for_node("generation_response")
    ]
    assert reused == [True]
