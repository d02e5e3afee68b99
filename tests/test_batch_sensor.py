"""The batches_collect sensor: after `daydream run --batch` (no --wait) returns, its ticks collect
the finished batches, request runs of exactly their partitions, and batch the evaluations."""

from __future__ import annotations

import dagster as dg

from daydreaming_dagster.assets.batch_sensor import build_batch_sensor
from daydreaming_dagster.assets.batch_step import BATCH_TAG
from daydreaming_dagster.compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from daydreaming_dagster.definitions import build_resources
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.write_once import read_provenance
from tests.batch_fixtures import RUN, batch_asked
from tests.pipeline import KEY, Pipeline


def tick(instance: dg.DagsterInstance):
    settings = Settings.from_env()
    with dg.build_sensor_context(instance=instance, resources=build_resources(settings)) as context:
        return build_batch_sensor()(context)


def test_the_sensor_collects_requests_exactly_the_answered_partitions_and_batches_their_evaluations(
    batched, openai_server, capsys
):
    openai_server.batches.delay_s = 0
    with dg.DagsterInstance.get() as instance:
        assert isinstance(tick(instance), dg.SkipReason)  # nothing open yet
        assert daydream([*RUN, "--batch"]) == 0  # submits the generations and returns
        assert openai_server.batches.created == 2

        requests = tick(instance)

        generations = sorted(instance.get_dynamic_partitions("generation_tasks"))
        assert sorted(r.partition_key for r in requests) == generations
        assert all(r.asset_selection == [dg.AssetKey("generation_prompt"), dg.AssetKey("generation_response")] for r in requests)
        provenance = read_provenance(text_path(batched, "generation_response", generations[0]))
        assert provenance["batch_id"].startswith("batch_")
        assert openai_server.batches.created == 4  # the judges' batches, submitted by the same tick

        pairs = tick(instance)
        assert len(pairs) == 12 and len({r.partition_key for r in pairs}) == 12
        assert isinstance(tick(instance), dg.SkipReason)  # nothing open any more

        # What the requested runs do: materialize from the stored answers, without a call.
        pipeline = Pipeline(batched, instance, openai_server)
        assert pipeline.generate(generations[0]).success
        pair = next(p for p in pipeline.pairs() if p.keys_by_dimension["generation_tasks"] == generations[0])
        assert pipeline.evaluate(pair).success
        assert openai_server.requests == [] and set(batch_asked(openai_server).values()) == {1}


def test_a_ui_run_with_the_batch_tag_submits_instead_of_calling_and_the_sensor_finishes_it(
    experiment, instance, openai_server, monkeypatch
):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    openai_server.batches.delay_s = 0
    pipeline = Pipeline(experiment, instance, openai_server)
    pipeline.tables()
    keys = pipeline.generation_keys()

    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1], BATCH_TAG: "true"}
    result = pipeline.materialize(["generation_prompt", "generation_response"], tags=tags)

    assert not result.success and openai_server.requests == []
    message = failure_text(result)
    assert message.startswith("6 generation_response partition(s) were submitted to provider batch(es) batch_")
    assert "none asked live" in message and openai_server.batches.created == 2
    assert not instance.get_materialized_partitions(dg.AssetKey("generation_response"))

    with dg.build_sensor_context(instance=instance, resources=pipeline.resources) as context:
        requests = build_batch_sensor()(context)
    assert sorted(r.partition_key for r in requests) == sorted(keys)
    assert pipeline.generate_all() is None  # the requested runs: every answer reused, no call
    assert openai_server.requests == [] and openai_server.batches.requests_answered == 6
