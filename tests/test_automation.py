"""The sensor and the backfill submit exactly the valid evaluation pairs, on a real instance."""

import json
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.experiment.stages import EVALUATION
from daydreaming_dagster.runner.backfills import check_pairs, submit_pair_backfill
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from tests.experiment_factory import write_experiment

SENSOR = "evaluations_follow_generations"


@pytest.fixture
def setup(tmp_path: Path, instance: dg.DagsterInstance):
    """3 generation tasks (3 combos x 1 template x 1 generator) x 2 judges = 6 valid pairs."""
    root = write_experiment(tmp_path / "data", generators=("gen-model-1",))
    defs = build_definitions(Settings(data_root=root, backend="offline", base_url="http://127.0.0.1:9"))
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

    def run(job: str, partition_key: str | None = None):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition_key, run_config=quiet
        )
        assert result.success
        return result

    run("task_tables")
    table = read_table(root / "offline" / "2_tasks" / "evaluation_tasks.csv")
    return defs, run, table


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    sensor = defs.resolve_sensor_def(SENSOR)
    resources = {"experiment_config": defs.resources["experiment_config"]}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, repository_def=defs.get_repository_def()
    ) as context:
        # The daemon evaluates ticks with the instance as the partition store; a test must say so.
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            result = sensor.evaluate_tick(context)
        return result, context.cursor


def test_sensor_requests_exactly_the_new_generations_valid_pairs(setup, instance):
    defs, run, table = setup
    generations = sorted(table["generation_task_id"].unique())
    assert len(generations) == 3 and len(table) == 6

    first, cursor = tick(defs, instance, None)
    assert not first.run_requests and first.skip_message

    for g in generations[:2]:
        run("generation", g)
    result, cursor = tick(defs, instance, cursor)
    requested = sorted(r.partition_key for r in result.run_requests)
    assert requested == sorted(EVALUATION.select(table, parents=generations[:2]))
    assert len(requested) == 4
    assert all(r.run_key == r.partition_key for r in result.run_requests)

    # Same materializations, next tick: the cursor has moved past them, nothing is asked twice.
    again, cursor = tick(defs, instance, cursor)
    assert not again.run_requests and again.skip_message

    for key in requested:
        run("evaluation", key)
    run("generation", generations[2])
    result, cursor = tick(defs, instance, cursor)
    assert sorted(r.partition_key for r in result.run_requests) == sorted(
        EVALUATION.select(table, parents=[generations[2]])
    )

    for key in EVALUATION.select(table, parents=[generations[2]]):
        run("evaluation", key)
    run("generation", generations[0])  # a re-materialization whose pairs are all done
    done, _ = tick(defs, instance, cursor)
    assert not done.run_requests and "already materialized" in done.skip_message


def test_sensor_reconsiders_all_generations_when_the_evaluation_table_changes(setup, instance):
    defs, run, table = setup
    for g in sorted(table["generation_task_id"].unique()):
        run("generation", g)
    result, cursor = tick(defs, instance, None)
    assert len(result.run_requests) == 6
    run("task_tables")  # evaluation_tasks rematerialized: every pair is looked at again
    result, _ = tick(defs, instance, cursor)
    assert len(result.run_requests) == 6
    assert json.loads(cursor)["generation"] is not None


def test_backfill_targets_exactly_the_valid_pairs(setup, instance):
    defs, _, table = setup
    keys = EVALUATION.select(table)
    backfill_id = submit_pair_backfill(instance, defs, keys)
    stored = instance.get_backfill(backfill_id)
    subset = stored.asset_backfill_data.target_subset
    for asset in ("evaluation_prompt", "evaluation_response"):
        targeted = subset.get_partitions_subset(dg.AssetKey(asset)).get_partition_keys()
        assert sorted(map(str, targeted)) == sorted(keys)
    assert subset.num_partitions_and_non_partitioned_assets == 2 * len(keys)


def test_backfill_of_one_method_and_invalid_pairs(setup, instance):
    defs, _, table = setup
    method = sorted(table["evaluation_task_id"].unique())[0]
    keys = EVALUATION.select(table, only={"evaluation_task_id": [method]})
    assert len(keys) == 3
    backfill_id = submit_pair_backfill(instance, defs, keys)
    targeted = instance.get_backfill(backfill_id).asset_backfill_data.target_subset.get_partitions_subset(
        dg.AssetKey("evaluation_response")
    )
    assert sorted(map(str, targeted.get_partition_keys())) == sorted(keys)

    # Both keys registered, pair not in the table: refused with the sentence that says how to list pairs.
    instance.add_dynamic_partitions("evaluation_tasks", ["judge-x__judge-model-9"])
    bogus = f"judge-x__judge-model-9|{table['generation_task_id'].iloc[0]}"
    csv = Path("/somewhere/offline/2_tasks/evaluation_tasks.csv")
    with pytest.raises(ValueError, match=r"not listed in evaluation_tasks; list the valid pairs with `daydream keys`") as err:
        check_pairs([bogus], set(EVALUATION.select(table)), csv)
    assert str(csv) in str(err.value)


def test_registering_keys_twice_is_harmless(setup, instance):
    _, run, table = setup
    before = list(instance.get_dynamic_partitions("generation_tasks"))
    result = run("task_tables")
    assert list(instance.get_dynamic_partitions("generation_tasks")) == before
    meta = result.asset_materializations_for_node("generation_tasks")[0].metadata
    assert meta["generation_tasks_keys_added"].value == 0


def test_stale_keys_are_reported_not_removed(setup, instance):
    _, run, table = setup
    instance.add_dynamic_partitions("generation_tasks", ["combo-2-gone__gen-a__gen-model-1"])
    result = run("task_tables")
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    stale = evaluations["generation_keys_current"]
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert "combo-2-gone__gen-a__gen-model-1" in (stale.description or "")
    assert evaluations["generation_tasks_integrity"].passed
    assert evaluations["evaluation_tasks_integrity"].passed
    assert "combo-2-gone__gen-a__gen-model-1" in instance.get_dynamic_partitions("generation_tasks")


def test_many_pairs_become_one_backfill_request(setup, instance, monkeypatch):
    import daydreaming_dagster.assets.evaluation_sensor as sensors

    defs, run, table = setup
    monkeypatch.setattr(sensors, "MAX_RUN_REQUESTS_PER_TICK", 2)
    for g in sorted(table["generation_task_id"].unique()):
        run("generation", g)
    result, _ = tick(defs, instance, None)
    assert len(result.run_requests) == 1
    subset = result.run_requests[0].asset_graph_subset
    for asset in ("evaluation_prompt", "evaluation_response"):
        keys = subset.get_partitions_subset(dg.AssetKey(asset)).get_partition_keys()
        assert sorted(map(str, keys)) == sorted(EVALUATION.select(table))
