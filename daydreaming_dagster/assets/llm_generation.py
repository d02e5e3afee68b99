"""Generation: one prompt and one paid response per generation task.

Both assets run for one partition or, batched, for a range of partitions in one run (see
`partition_output`); either way every partition is materialized, and re-runnable, on its own."""

import dagster as dg
import pandas as pd

from ..experiment.loaders import Concept, render_generation_prompt
from ..llm.requests import LLMRequest
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource
from ..resources.responses import ResponseStore
from ..store.layout import text_path
from .budget import SpendingGuard
from .common import (
    PartitionText,
    by_partition,
    experiment_errors_as_failures,
    partition_output,
    partitioned_asset,
    task_row,
    task_rows,
    text_preview,
)
from .partitions import generation_tasks_partitions
from .responding import LLM_POOL, Ask, PartitionResponse, ResponseConfig, respond

GROUP = "llm_generation"


@partitioned_asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    dagster_type=PartitionText,
    kinds={"jinja", "text"},
)
def generation_prompt(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output:
    """The prompt sent to a generator model: the task's generation template rendered with the
    descriptions of its concepts. One text file per generation task."""
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
            "path": dg.MetadataValue.path(str(text_path(experiment_config.output_root, "generation_prompt", key))),
        }
    return partition_output(context, prompts, metadata)


@partitioned_asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    ins={"generation_prompt": dg.AssetIn(dagster_type=PartitionText)},
    dagster_type=PartitionResponse,
    pool=LLM_POOL,
    kinds={"openai", "text"},
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
    """The generator model's answer to its generation prompt: a paid call, made once and stored
    once, with a JSON provenance sidecar (model, parameters sent, tokens, latency) next to it."""
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
    with experiment_errors_as_failures():
        guard = SpendingGuard.for_step(experiment_config, config.max_cost_usd, llm)
    return respond(context, llm, responses, asks, config, guard)
