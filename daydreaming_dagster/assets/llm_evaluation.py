"""Evaluation: one judge prompt and one paid judge answer per valid (generation, method) pair.

Both assets are partitioned by the pair. `evaluation_prompt` receives `generation_response` from
Dagster through the partition mapping; `evaluation_response` sees only `evaluation_prompt`."""

import warnings

import dagster as dg
import pandas as pd

from ..errors import invalid_pair_message
from ..experiment import render_evaluation_prompt
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource, LLMRequest, LLMResponse
from ..resources.responses import ResponseStore
from .common import experiment_errors_as_failures, text_preview
from .llm_generation import task_row
from .partitions import evaluation_pairs_partitions
from .responding import LLM_POOL, ResponseConfig, respond

GROUP = "llm_evaluation"

with warnings.catch_warnings():
    # The mapping is the heart of the design (see DESIGN.md); its beta status is known and accepted.
    warnings.simplefilter("ignore", dg.BetaWarning)
    # A pair (eval|gen) reads the generation_response partition of its generation_tasks dimension.
    GENERATION_OF_PAIR = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="generation_tasks")


def pair_of(context: dg.AssetExecutionContext) -> dict[str, str]:
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        key = evaluation_pairs_partitions.get_partition_key_from_str(str(key))
    return key.keys_by_dimension


def evaluation_row(evaluation_tasks: pd.DataFrame, pair: dict[str, str], key: str) -> pd.Series:
    """The evaluation_tasks row of this pair; refuses (before any LLM call) a pair the table does not list."""
    rows = evaluation_tasks[
        (evaluation_tasks["generation_task_id"] == pair["generation_tasks"])
        & (evaluation_tasks["evaluation_task_id"] == pair["evaluation_tasks"])
    ]
    if rows.empty:
        raise dg.Failure(description=invalid_pair_message(key))
    return rows.iloc[0]


@dg.asset(
    group_name=GROUP,
    partitions_def=evaluation_pairs_partitions,
    io_manager_key="text_io_manager",
    ins={"generation_response": dg.AssetIn(partition_mapping=GENERATION_OF_PAIR)},
)
def evaluation_prompt(
    context: dg.AssetExecutionContext,
    generation_response: str,
    evaluation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
) -> dg.Output[str]:
    """The judge prompt of one pair: the method's evaluation template rendered with the generation response."""
    pair = pair_of(context)
    row = evaluation_row(evaluation_tasks, pair, str(context.partition_key))
    template = task_row(evaluation_templates, "template_id", row["evaluation_template_id"], "evaluation_templates")
    with experiment_errors_as_failures():
        prompt = render_evaluation_prompt(template["text"], generation_response)
    return dg.Output(
        prompt,
        metadata={
            "generation_task_id": pair["generation_tasks"],
            "evaluation_task_id": pair["evaluation_tasks"],
            "evaluation_template_id": row["evaluation_template_id"],
            "evaluation_model_id": row["evaluation_model_id"],
            "generation_response_chars": len(generation_response),
            "preview": text_preview(prompt),
        },
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=evaluation_pairs_partitions,
    io_manager_key="text_io_manager",
    pool=LLM_POOL,
)
def evaluation_response(
    context: dg.AssetExecutionContext,
    config: ResponseConfig,
    evaluation_prompt: str,
    evaluation_tasks: pd.DataFrame,
    experiment_config: ExperimentConfig,
    llm: LLMClientResource,
    responses: ResponseStore,
) -> dg.Output[LLMResponse]:
    """The judge model's answer to the evaluation prompt (paid once, stored once, with provenance)."""
    pair = pair_of(context)
    row = evaluation_row(evaluation_tasks, pair, str(context.partition_key))
    request = LLMRequest(
        model_id=row["evaluation_model_id"],
        model=row["evaluation_model"],
        prompt=evaluation_prompt,
        temperature=experiment_config.evaluation_temperature,
        max_tokens=experiment_config.evaluation_max_tokens,
    )
    return respond(context, llm, responses, pair, request, config)
