"""Batches: many partitions in one Dagster run (a partition-key range), each still its own materialization.

How `daydream run` cuts the work into ranges, what Dagster makes of those ranges, the response
assets running a range (concurrent calls, each answer stored as it arrives, failures), and the
runner falling back to one run per partition when a batch fails."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading

import dagster as dg
import pytest

from daydreaming_dagster.assets import llm_evaluation, llm_generation
from daydreaming_dagster.assets.common import BACKFILL_PARTITIONS_PER_RUN
from daydreaming_dagster.assets.partitions import evaluation_pairs_partitions
from daydreaming_dagster.llm import slots as llm_slots
from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.ranges import (
    Batch,
    batch_size,
    key_batches,
    pair_batches,
)
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.write_once import read_provenance
from tests.experiment_factory import write_experiment
from tests.openai_server import status, truncated
from tests.pipeline import KEY, responses_in

GENERATION = ["generation_prompt", "generation_response"]
EVALUATION = ["evaluation_prompt", "evaluation_response"]


def parallel(asset: str, calls: int) -> dict:
    return {"ops": {asset: {"config": {"parallel_calls": calls}}}}


def max_in_flight(requests, latency_s: float) -> int:
    """The most requests the server held at once (each is held for `latency_s` after it arrives)."""
    times = sorted(r.received_at for r in requests)
    return max(sum(1 for u in times if t - latency_s * 0.9 < u <= t) for t in times)


def materialization(instance: dg.DagsterInstance, asset: str, key: str) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def metadata_of(instance: dg.DagsterInstance, asset: str, key: str) -> dict:
    event = materialization(instance, asset, key)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def generation_order(pipeline) -> list[str]:
    return pipeline.instance.get_dynamic_partitions("generation_tasks")


def first_method_pairs(pipeline) -> list[str]:
    method = pipeline.instance.get_dynamic_partitions("evaluation_tasks")[0]
    return [f"{method}|{g}" for g in generation_order(pipeline)]


# --------------------------------------------------------------------------- cutting the work into ranges


@pytest.mark.parametrize(
    "todo, workers, max_size, expected",
    [(200, 4, 32, 25), (10, 2, 32, 5), (64, 2, 32, 32), (65, 2, 32, 17), (1, 3, 32, 1), (1000, 3, 32, 31)],
)
def test_batch_size_makes_few_batches_of_at_most_the_maximum_in_a_multiple_of_the_workers(
    todo, workers, max_size, expected
):
    size = batch_size(todo, workers, max_size)
    assert size == expected and size <= max_size
    batches = -(-todo // size)
    assert batches == 1 or batches % workers == 0 or todo < workers * size


def test_key_batches_follow_the_instance_order_and_break_where_a_key_is_not_asked_for():
    order = ["a", "b", "c", "d", "e", "f", "g"]
    assert key_batches(order, ["e", "a", "b", "d", "g"], 10) == [Batch(("a", "b")), Batch(("d", "e")), Batch(("g",))]
    # A run longer than the size is cut into nearly equal pieces, never more than the size.
    assert [len(b.keys) for b in key_batches(order, order, 3)] == [3, 2, 2]
    # A key the instance does not know runs alone (its run then says what is wrong with it).
    assert key_batches(order, ["zz", "a"], 10) == [Batch(("a",)), Batch(("zz",))]


def test_pair_batches_hold_one_method_and_consecutive_generations():
    batches = pair_batches(["g1", "g2", "g3"], [("g3", "m2"), ("g1", "m1"), ("g2", "m1"), ("g1", "m2")], 10)
    assert batches == [Batch(("m1|g1", "m1|g2")), Batch(("m2|g1",)), Batch(("m2|g3",))]


def test_every_batch_is_a_dagster_range_of_exactly_its_pairs(instance):
    generations = [f"g{i:02d}" for i in range(20)]
    methods = ["m0", "m1", "m2"]
    instance.add_dynamic_partitions("generation_tasks", generations)
    instance.add_dynamic_partitions("evaluation_tasks", methods)
    rng = random.Random(7)
    todo = [(g, m) for g in generations for m in methods if rng.random() < 0.7]

    batches = pair_batches(generations, todo, 4)

    covered = []
    for batch in batches:
        assert 1 <= len(batch.keys) <= 4
        keys = evaluation_pairs_partitions.get_partition_keys_in_range(
            dg.PartitionKeyRange(batch.start, batch.end), dynamic_partitions_store=instance
        )
        assert [str(k) for k in keys] == list(batch.keys)
        covered += batch.keys
    assert sorted(covered) == sorted(f"{m}|{g}" for g, m in todo)


def test_the_ranges_dagster_backfills_make_of_a_pair_subset_hold_only_those_pairs(instance):
    # The evaluation assets' BackfillPolicy lets the backfill daemon put several pairs in one run;
    # the ranges it builds from a subset of pairs must never reach a pair outside the subset.
    generations = [f"g{i:02d}" for i in range(12)]
    instance.add_dynamic_partitions("generation_tasks", generations)
    instance.add_dynamic_partitions("evaluation_tasks", ["m0", "m1"])
    rng = random.Random(3)
    wanted = {f"{m}|{g}" for g in generations for m in ("m0", "m1") if rng.random() < 0.5}
    subset = evaluation_pairs_partitions.empty_subset().with_partition_keys(wanted)

    with dg.partition_loading_context(dynamic_partitions_store=instance):
        ranges = subset.get_partition_key_ranges(evaluation_pairs_partitions)
        expanded = [
            str(k) for r in ranges for k in evaluation_pairs_partitions.get_partition_keys_in_range(r, instance)
        ]

    assert sorted(expanded) == sorted(wanted)
    for asset in (llm_evaluation.evaluation_prompt, llm_evaluation.evaluation_response):
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(BACKFILL_PARTITIONS_PER_RUN)
    for asset in (llm_generation.generation_prompt, llm_generation.generation_response):
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(BACKFILL_PARTITIONS_PER_RUN)


# --------------------------------------------------------------------------- one run over a range


def test_one_run_over_a_range_materializes_every_partition_with_its_own_answer_and_metadata(pipeline, openai_server):
    openai_server.latency_s = 0.3
    openai_server.default_answer = lambda body: "An idea from: " + body["messages"][-1]["content"][-60:]
    generations = generation_order(pipeline)

    result = pipeline.materialize_range(GENERATION, generations, parallel("generation_response", 3))

    assert result.success, failure_text(result)
    assert len(openai_server.requests) == 6
    assert 2 <= max_in_flight(openai_server.requests, 0.3) <= 3  # concurrent, within parallel_calls
    assert pipeline.instance.get_materialized_partitions(dg.AssetKey("generation_response")) == set(generations)
    for key in generations:
        meta = metadata_of(pipeline.instance, "generation_response", key)
        path = pipeline.response_path(key)
        prompt = text_path(pipeline.root, "generation_prompt", key).read_text()
        assert meta["path"] == str(path) and meta["reused"] is False
        assert meta["prompt_sha256"] == read_provenance(path)["prompt_sha256"]
        assert meta["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert "Combine these ideas" in metadata_of(pipeline.instance, "generation_prompt", key)["preview"]

    pairs = first_method_pairs(pipeline)
    result = pipeline.materialize_range(EVALUATION, pairs, parallel("evaluation_response", 3))

    assert result.success, failure_text(result)
    assert pipeline.instance.get_materialized_partitions(dg.AssetKey("evaluation_response")) == set(pairs)
    for pair in pairs:
        method, generation = pair.split("|")
        # Each judge prompt holds its own generation's response, delivered through the partition mapping.
        prompt = text_path(
            pipeline.root, "evaluation_prompt", {"generation_tasks": generation, "evaluation_tasks": method}
        ).read_text()
        assert pipeline.response_path(generation).read_text() in prompt
        assert metadata_of(pipeline.instance, "evaluation_prompt", pair)["generation_task_id"] == generation
        assert metadata_of(pipeline.instance, "evaluation_response", pair)["model_id"] == method.split("__")[-1]


def test_a_refused_call_stops_the_range_keeps_the_answers_that_arrived_and_the_rerun_pays_only_for_the_rest(
    pipeline, openai_server
):
    assert pipeline.materialize_range(GENERATION, generation_order(pipeline)).success
    pairs = first_method_pairs(pipeline)
    before = len(openai_server.requests)
    openai_server.behaviour_for = lambda body: status(400) if len(openai_server.requests) == before + 3 else None

    result = pipeline.materialize_range(EVALUATION, pairs, parallel("evaluation_response", 1))

    assert not result.success
    message = failure_text(result)
    assert "1 evaluation_response partition(s) got no usable answer, 3 not asked after that error" in message
    assert "the 2 answer(s) that did arrive are stored" in message
    assert len(openai_server.requests) == before + 3  # nothing was asked after the refusal
    stored = sorted((pipeline.root / "4_evaluation" / "evaluation_response").glob("*/*.txt"))
    assert len(stored) == 2
    assert pipeline.instance.get_materialized_partitions(dg.AssetKey("evaluation_response")) == set()

    openai_server.behaviour_for = None
    again = pipeline.materialize_range(EVALUATION, pairs, parallel("evaluation_response", 2))

    assert again.success, failure_text(again)
    assert len(openai_server.requests) == before + 3 + 4  # the two stored answers were not bought again
    reused = [metadata_of(pipeline.instance, "evaluation_response", p)["reused"] for p in pairs]
    assert sorted(reused) == [False] * 4 + [True] * 2


def test_a_truncated_answer_in_a_range_is_kept_aside_and_the_other_calls_go_on(pipeline, openai_server):
    generations = generation_order(pipeline)
    before = len(openai_server.requests)
    openai_server.behaviour_for = lambda body: truncated() if len(openai_server.requests) == before + 2 else None

    result = pipeline.materialize_range(GENERATION, generations, parallel("generation_response", 1))

    assert not result.success
    message = failure_text(result)
    assert "1 generation_response partition(s) got no usable answer (first, " in message
    assert "not asked" not in message and "the 5 answer(s) that did arrive are stored" in message
    folder = pipeline.root / "3_generation" / "generation_response"
    assert len(responses_in(folder)) == 5 and len(responses_in(folder / "_rejected")) == 1


def test_a_range_with_a_pair_the_table_does_not_list_is_refused_before_any_call(pipeline, openai_server):
    generations = generation_order(pipeline)
    assert pipeline.materialize_range(GENERATION, generations).success
    pipeline.instance.add_dynamic_partitions("generation_tasks", ["ghost-generation"])
    method = pipeline.instance.get_dynamic_partitions("evaluation_tasks")[0]
    before = len(openai_server.requests)

    result = pipeline.materialize_range(EVALUATION, [f"{method}|{generations[-1]}", f"{method}|ghost-generation"])

    assert not result.success
    assert f"'{method}|ghost-generation'" in failure_text(result)
    assert len(openai_server.requests) == before


def test_a_range_whose_generation_is_missing_fails_naming_it_before_any_call(pipeline, openai_server):
    generations = generation_order(pipeline)
    assert pipeline.materialize_range(GENERATION, generations[:-1]).success  # all but the last
    before = len(openai_server.requests)

    result = pipeline.materialize_range(EVALUATION, first_method_pairs(pipeline))

    assert not result.success
    assert f"generation_response of generation task '{generations[-1]}' is not materialized" in failure_text(result)
    assert len(openai_server.requests) == before


def test_shared_call_slots_bound_the_calls_in_flight_whatever_each_run_allows(pipeline, openai_server, monkeypatch):
    monkeypatch.setattr(llm_slots, "_shared_call_slots", None)
    llm_slots.share_call_slots(threading.BoundedSemaphore(2))
    openai_server.latency_s = 0.2

    result = pipeline.materialize_range(GENERATION, generation_order(pipeline), parallel("generation_response", 6))

    assert result.success, failure_text(result)
    assert max_in_flight(openai_server.requests, 0.2) == 2


# --------------------------------------------------------------------------- daydream run: batches and fallback


@pytest.fixture
def in_process_daydream(tmp_path, monkeypatch):
    """`daydream` called in this process on a fresh experiment and the project's instance config."""
    experiment = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs (2 judges)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")  # the project's instance: pooled SQLite storage
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(experiment))
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "OPENROUTER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return experiment


@pytest.mark.slow
def test_a_rerun_rebuilds_task_tables_and_results_only_when_what_they_are_built_from_changed(
    in_process_daydream, capsys
):
    experiment = in_process_daydream
    run = ["run", "--offline", "--workers", "1"]
    assert daydream(run) == 0
    first = capsys.readouterr().out
    assert "task_tables: 1 ran" in first and "results: 1 ran" in first

    assert daydream(run) == 0
    assert "task_tables: 0 ran, 1 skipped" in (out := capsys.readouterr().out) and "results: 0 ran, 1 skipped" in out

    # Any change under 1_raw rebuilds the tables, and then the results that read them.
    models = experiment / "1_raw" / "llm_models.csv"
    models.write_text(models.read_text() + "\n")
    assert daydream(run) == 0
    assert "task_tables: 1 ran" in (out := capsys.readouterr().out) and "results: 1 ran" in out
    assert "generation: 0 ran, 6 skipped" in out  # the same keys: nothing else runs

    # A result file that went missing is rebuilt.
    summary = experiment / "offline" / "5_results" / "evaluation_summary.csv"
    summary.unlink()
    assert daydream(run) == 0
    assert "task_tables: 0 ran, 1 skipped" in (out := capsys.readouterr().out) and "results: 1 ran" in out
    assert summary.is_file()


@pytest.mark.slow
def test_daydream_run_batches_and_reruns_a_failed_batch_one_partition_per_run_paying_each_answer_once(
    in_process_daydream, openai_server, monkeypatch, capsys
):
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.base_url)
    # A generation echoes its prompt, so a judge prompt shows which concepts it is about; the first
    # judge refuses every idea about Beta and Gamma (2 pairs), the rest answer.
    openai_server.default_answer = lambda body: f"Idea by {body['model']}: {body['messages'][-1]['content']}\nSCORE: 5"

    def refuse(body):
        prompt = body["messages"][-1]["content"]
        if body["model"] == "test/judge-model-1" and "Rate this idea" in prompt and "Beta" in prompt and "Gamma" in prompt:
            return status(400, message="This model refuses the request")
        return None

    openai_server.behaviour_for = refuse

    code = daydream(["run", "--concurrency", "2", "--workers", "1", "--batch-size", "6"])

    out, err = capsys.readouterr()
    assert code == 1
    assert "evaluation: a batch of 6 failed" in err and "running its partitions one by one" in err
    assert "evaluation: 10 ran, 0 skipped, 2 failed" in out
    instance = dg.DagsterInstance.get()
    evaluated = instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))
    assert len(evaluated) == 10
    failed = {line.split(" ", 2)[1].rstrip(":") for line in err.splitlines() if line.startswith("evaluation judge")}
    assert all("judge-model-1" in key for key in failed) and len(failed) == 2
    assert not failed & evaluated
    # Every answer was paid for once: the fallback runs reused what the failed batch had stored.
    answered = [r.body["messages"][-1]["content"] + r.body["model"] for r in openai_server.requests]
    paid = [body for body, response in zip(answered, openai_server.requests) if refuse(response.body) is None]
    assert len(paid) == len(set(paid)) == 6 + 10
    # One run per batch, not one per partition: 6 generations took one run.
    generation_runs = instance.get_runs(dg.RunsFilter(job_name="generation"))
    assert len(generation_runs) == 1
