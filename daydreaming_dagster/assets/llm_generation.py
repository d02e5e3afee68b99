"""Generation: one prompt and one paid response per generation task."""

import dagster as dg
import pandas as pd

from ..experiment import Concept, render_generation_prompt
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource, LLMRequest, LLMResponse
from ..resources.responses import ResponseStore
from .common import experiment_errors_as_failures, text_preview
from .partitions import generation_tasks_partitions
from .responding import LLM_POOL, ResponseConfig, respond

GROUP = "llm_generation"


def task_row(table: pd.DataFrame, column: str, key: str, table_name: str) -> pd.Series:
    rows = table[table[column] == key]
    if rows.empty:
        raise dg.Failure(
            description=f"{column} '{key}' is not in {table_name}; it is a stale partition key "
            f"(rematerialize {table_name}, or see the stale-key check)."
        )
    return rows.iloc[0]


@dg.asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
)
def generation_prompt(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
) -> dg.Output[str]:
    """The prompt of one generation task: its template rendered with its concepts."""
    task = task_row(generation_tasks, "generation_task_id", context.partition_key, "generation_tasks")
    members = content_combinations[content_combinations["combo_id"] == task["combo_id"]].sort_values("position")
    template = task_row(generation_templates, "template_id", task["generation_template_id"], "generation_templates")
    with experiment_errors_as_failures():
        prompt = render_generation_prompt(
            template["text"], [Concept(name=r.name, content=r.content) for r in members.itertuples()]
        )
    return dg.Output(
        prompt,
        metadata={
            "combo_id": task["combo_id"],
            "concept_ids": task["concept_ids"],
            "template_id": task["generation_template_id"],
            "preview": text_preview(prompt),
        },
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    pool=LLM_POOL,
)
def generation_response(
    context: dg.AssetExecutionContext,
    config: ResponseConfig,
    generation_prompt: str,
    generation_tasks: pd.DataFrame,
    experiment_config: ExperimentConfig,
    llm: LLMClientResource,
    responses: ResponseStore,
) -> dg.Output[LLMResponse]:
    """The generator model's answer to the generation prompt (paid once, stored once, with provenance)."""
    task = task_row(generation_tasks, "generation_task_id", context.partition_key, "generation_tasks")
    request = LLMRequest(
        model_id=task["generation_model_id"],
        model=task["generation_model"],
        prompt=generation_prompt,
        temperature=experiment_config.generation_temperature,
        max_tokens=experiment_config.generation_max_tokens,
    )
    return respond(context, llm, responses, context.partition_key, request, config)
