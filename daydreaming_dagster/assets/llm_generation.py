"""Generation: one prompt and one paid response per generation task.

Both assets run for one partition or, batched, for a range of partitions in one run (see
`partition_output`); either way every partition is materialized, and re-runnable, on its own."""

import dagster as dg
import pandas as pd

from ..experiment import Concept, render_generation_prompt
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource, LLMRequest
from ..resources.responses import ResponseStore
from .common import PartitionText, by_partition, experiment_errors_as_failures, partition_output, text_preview
from .partitions import generation_tasks_partitions
from .responding import BACKFILL_POLICY, LLM_POOL, Ask, PartitionResponse, ResponseConfig, respond

GROUP = "llm_generation"


def task_rows(table: pd.DataFrame, column: str, keys: list[str], table_name: str) -> dict[str, pd.Series]:
    """The row of every key (one index lookup for a whole batch); refuses a key the table lacks."""
    indexed = table.drop_duplicates(column).set_index(column, drop=False)
    missing = [k for k in keys if k not in indexed.index]
    if missing:
        raise dg.Failure(
            description=f"{column} '{missing[0]}' is not in {table_name}; it is a stale partition key "
            f"(rematerialize {table_name}, or see the stale-key check)."
        )
    return {k: indexed.loc[k] for k in keys}


def task_row(table: pd.DataFrame, column: str, key: str, table_name: str) -> pd.Series:
    return task_rows(table, column, [key], table_name)[key]


@dg.asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    dagster_type=PartitionText,
    backfill_policy=BACKFILL_POLICY,
)
def generation_prompt(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
) -> dg.Output:
    """The prompt of one generation task: its template rendered with its concepts."""
    keys = [str(k) for k in context.partition_keys]
    tasks = task_rows(generation_tasks, "generation_task_id", keys, "generation_tasks")
    members_of = {combo: rows.sort_values("position") for combo, rows in content_combinations.groupby("combo_id")}
    prompts, metadata = {}, {}
    for key, task in tasks.items():
        template = task_row(generation_templates, "template_id", task["generation_template_id"], "generation_templates")
        members = members_of.get(task["combo_id"], content_combinations.iloc[0:0])
        with experiment_errors_as_failures():
            prompts[key] = render_generation_prompt(
                template["text"], [Concept(name=r.name, content=r.content) for r in members.itertuples()]
            )
        metadata[key] = {
            "combo_id": task["combo_id"],
            "concept_ids": task["concept_ids"],
            "template_id": task["generation_template_id"],
            "preview": text_preview(prompts[key]),
        }
    return partition_output(context, prompts, metadata)


@dg.asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    ins={"generation_prompt": dg.AssetIn(dagster_type=PartitionText)},
    dagster_type=PartitionResponse,
    pool=LLM_POOL,
    backfill_policy=BACKFILL_POLICY,
)
def generation_response(
    context: dg.AssetExecutionContext,
    config: ResponseConfig,
    generation_prompt: str | dict[str, str],
    generation_tasks: pd.DataFrame,
    experiment_config: ExperimentConfig,
    llm: LLMClientResource,
    responses: ResponseStore,
) -> dg.Output:
    """The generator model's answer to the generation prompt (paid once, stored once, with provenance)."""
    keys = [str(k) for k in context.partition_keys]
    prompts = by_partition(context, generation_prompt, keys[0])
    tasks = task_rows(generation_tasks, "generation_task_id", keys, "generation_tasks")
    asks = [
        Ask(
            key=key,
            parts=key,
            request=LLMRequest(
                model_id=task["generation_model_id"],
                model=task["generation_model"],
                prompt=prompts[key],
                temperature=experiment_config.generation_temperature,
                max_tokens=experiment_config.generation_max_tokens,
            ),
        )
        for key, task in tasks.items()
    ]
    return respond(context, llm, responses, asks, config)
