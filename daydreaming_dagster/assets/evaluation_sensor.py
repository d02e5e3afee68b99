"""Automation: evaluations follow generations, for exactly the valid pairs."""

import json

import dagster as dg

from ..compat import AssetGraphSubset
from ..experiment.stages import EVALUATION
from ..resources.config import ExperimentConfig
from ..store.csv_tables import read_table
from ..store.layout import table_path
from .partitions import evaluation_pairs_partitions

GENERATION_RESPONSE = dg.AssetKey("generation_response")
EVALUATION_TASKS = dg.AssetKey("evaluation_tasks")
EVALUATION_RESPONSE = dg.AssetKey("evaluation_response")
EVALUATION_PROMPT = dg.AssetKey("evaluation_prompt")
# Up to this many pairs a tick asks for one run per pair; beyond it, one backfill of them all, which
# the daemon runs within the same limits, the UI shows as one progress bar, and which costs the tick
# a fraction of the time (each run request is validated key by key).
MAX_RUN_REQUESTS_PER_TICK = 200


def pairs_request(keys: list[str]) -> list[dg.RunRequest]:
    """One run per pair for a few pairs; a single backfill request (one subset) for many."""
    if len(keys) <= MAX_RUN_REQUESTS_PER_TICK:
        return [dg.RunRequest(run_key=key, partition_key=key) for key in keys]
    subset = evaluation_pairs_partitions.subset_with_partition_keys(keys)
    return [
        dg.RunRequest.for_asset_graph_subset(
            AssetGraphSubset(partitions_subsets_by_asset_key={EVALUATION_PROMPT: subset, EVALUATION_RESPONSE: subset}),
            tags={"daydream/source": "evaluations_follow_generations"},
        )
    ]


def _new_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, after: int | None):
    """Materialization records of `key` after storage id `after`, oldest first (all pages)."""
    records, cursor = [], None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=1000, cursor=cursor, ascending=True
        )
        records.extend(page.records)
        if not page.has_more:
            return records
        cursor = page.cursor


def pending_pair_requests(
    instance: dg.DagsterInstance, output_root: str, cursor: dict
) -> tuple[list[dg.RunRequest], dict, str | None]:
    """The run requests for valid pairs whose generation is newly materialized (or, when the
    evaluation table changed, for every materialized generation), minus pairs already materialized."""
    new_generations = _new_materializations(instance, GENERATION_RESPONSE, cursor.get("generation"))
    new_tables = _new_materializations(instance, EVALUATION_TASKS, cursor.get("evaluation_tasks"))
    next_cursor = {
        "generation": new_generations[-1].storage_id if new_generations else cursor.get("generation"),
        "evaluation_tasks": new_tables[-1].storage_id if new_tables else cursor.get("evaluation_tasks"),
    }
    if new_tables:
        generations = instance.get_materialized_partitions(GENERATION_RESPONSE)
    else:
        generations = {r.partition_key for r in new_generations if r.partition_key}
    if not generations:
        return [], next_cursor, "no new generation_response materializations"
    path = table_path(output_root, "evaluation_tasks")
    if not path.is_file():
        # Keep the cursor where it was: these generations are considered again once the table exists.
        return [], cursor, "evaluation_tasks has not been materialized yet"
    keys = EVALUATION.ready(read_table(path), generations, exclude=instance.get_materialized_partitions(EVALUATION_RESPONSE))
    requests = pairs_request(keys)
    skip = None if requests else "every valid pair of the new generations is already materialized"
    return requests, next_cursor, skip


def build_evaluation_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="evaluations_follow_generations",
        asset_selection=[EVALUATION_PROMPT, EVALUATION_RESPONSE],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests one evaluation run per valid pair (from evaluation_tasks) whose "
        "generation_response was just materialized and that is not materialized yet.",
    )
    def evaluations_follow_generations(context: dg.SensorEvaluationContext, experiment_config: ExperimentConfig):
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, next_cursor, skip = pending_pair_requests(context.instance, experiment_config.output_root, cursor)
        context.update_cursor(json.dumps(next_cursor))
        if skip:
            return dg.SkipReason(skip)
        return requests

    return evaluations_follow_generations
