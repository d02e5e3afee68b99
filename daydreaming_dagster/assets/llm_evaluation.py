"""Evaluation: one judge prompt and one paid judge answer per valid (generation, method) pair.

Both assets are partitioned by the pair and run for one pair or, batched, for a range of pairs.
`evaluation_prompt` receives `generation_response` from Dagster through the partition mapping;
`evaluation_response` sees only `evaluation_prompt`."""

import warnings

import dagster as dg
import pandas as pd

from ..calls.guard import SpendingGuard
from ..experiment.errors import invalid_pair_message
from ..experiment.prompts import CODE_VERSION as PROMPT_CODE_VERSION
from ..experiment.prompts import evaluation_prompts
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource
from ..resources.response_store import ResponseStore
from ..store.archive import mismatch_message
from ..store.layout import table_path, text_path
from ..store.write_once import verify_stored
from .common import (
    PartitionText,
    by_partition,
    experiment_errors_as_failures,
    partition_output,
    partitioned_asset,
    prompt_metadata,
)
from .partitions import evaluation_pairs_partitions
from .responding import LLM_POOL, Call, PartitionResponse, ResponseConfig, respond

GROUP = "llm_evaluation"

with warnings.catch_warnings():
    # The mapping is the heart of the design (see DESIGN.md); its beta status is known and accepted.
    warnings.simplefilter("ignore", dg.BetaWarning)
    # A pair (eval|gen) reads the generation_response partition of its generation_tasks dimension.
    GENERATION_OF_PAIR = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="generation_tasks")


def pairs_of(context: dg.AssetExecutionContext) -> dict[str, dict[str, str]]:
    """Every pair of the run (one, or a range), keyed by its partition key string."""
    pairs = {}
    for key in context.partition_keys:
        if not isinstance(key, dg.MultiPartitionKey):
            key = evaluation_pairs_partitions.get_partition_key_from_str(str(key))
        pairs[str(key)] = key.keys_by_dimension
    return pairs


def evaluation_rows(
    evaluation_tasks: pd.DataFrame, pairs: dict[str, dict[str, str]], config: ExperimentConfig
) -> dict[str, pd.Series]:
    """The evaluation_tasks row of every pair; refuses (before any LLM call) a pair the table does not list."""
    indexed = evaluation_tasks.drop_duplicates(["generation_task_id", "evaluation_task_id"]).set_index(
        ["generation_task_id", "evaluation_task_id"], drop=False
    )
    rows = {}
    for key, pair in pairs.items():
        index = (pair["generation_tasks"], pair["evaluation_tasks"])
        if index not in indexed.index:
            raise dg.Failure(description=invalid_pair_message(key, table_path(config.output_root, "evaluation_tasks")))
        rows[key] = indexed.loc[index]
    return rows


@partitioned_asset(
    group_name=GROUP,
    partitions_def=evaluation_pairs_partitions,
    io_manager_key="text_io_manager",
    ins={"generation_response": dg.AssetIn(partition_mapping=GENERATION_OF_PAIR, dagster_type=PartitionText)},
    dagster_type=PartitionText,
    kinds={"jinja", "text"},
    code_version=PROMPT_CODE_VERSION,
)
def evaluation_prompt(
    context: dg.AssetExecutionContext,
    generation_response: str | dict[str, str],
    evaluation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output:
    """The prompt sent to a judge for one pair (generation task x evaluation method): the method's
    evaluation template rendered with the generation's answer.

    `generation_response` is the text of the pair's generation (a str), or, in a run over a range
    of pairs, the texts of their generations keyed by generation_task_id. Its data version is the
    digest of its text, so an evaluation_response is stale in Dagster exactly when the prompt it
    answered has changed."""
    pairs = pairs_of(context)
    rows = evaluation_rows(evaluation_tasks, pairs, experiment_config)
    texts = by_partition(context, generation_response, next(iter(pairs.values()))["generation_tasks"])
    missing = sorted({p["generation_tasks"] for p in pairs.values()} - set(texts))
    if missing:  # a range run loads what exists; a pair whose generation does not exist cannot be judged
        path = text_path(experiment_config.output_root, "generation_response", missing[0])
        if (reason := verify_stored(path)) is not None:  # left out: it does not match its sidecar
            raise dg.Failure(description=mismatch_message("generation_response", missing[0], path, reason))
        raise dg.Failure(
            description=f"generation_response of generation task '{missing[0]}' is not materialized "
            f"({len(missing)} missing in this run); materialize it before its evaluation pairs."
        )
    with experiment_errors_as_failures():
        rendered = evaluation_prompts(rows, evaluation_templates, texts)
    metadata = {
        key: {
            "generation_task_id": pair["generation_tasks"],
            "evaluation_task_id": pair["evaluation_tasks"],
            "evaluation_template_id": rows[key]["evaluation_template_id"],
            "evaluation_model_id": rows[key]["evaluation_model_id"],
            "generation_response_chars": len(texts[pair["generation_tasks"]]),
            **prompt_metadata(rendered[key]),
            "path": dg.MetadataValue.path(str(text_path(experiment_config.output_root, "evaluation_prompt", pair))),
        }
        for key, pair in pairs.items()
    }
    prompts = {key: prompt.text for key, prompt in rendered.items()}
    return partition_output(context, prompts, metadata, {key: p.sha256 for key, p in rendered.items()})


@partitioned_asset(
    group_name=GROUP,
    partitions_def=evaluation_pairs_partitions,
    io_manager_key="text_io_manager",
    ins={"evaluation_prompt": dg.AssetIn(dagster_type=PartitionText)},
    dagster_type=PartitionResponse,
    pool=LLM_POOL,
    kinds={"openai", "text"},
)
def evaluation_response(
    context: dg.AssetExecutionContext,
    config: ResponseConfig,
    evaluation_prompt: str | dict[str, str],
    evaluation_tasks: pd.DataFrame,
    experiment_config: ExperimentConfig,
    llm: LLMClientResource,
    responses: ResponseStore,
) -> dg.Output:
    """The judge model's answer to one pair's evaluation prompt, ending in a score: a paid call,
    made once and stored once, with a JSON provenance sidecar next to it."""
    pairs = pairs_of(context)
    rows = evaluation_rows(evaluation_tasks, pairs, experiment_config)
    prompts = by_partition(context, evaluation_prompt, next(iter(pairs)))
    calls = [
        Call(key=key, parts=pair, request=experiment_config.evaluation_request(rows[key], prompts[key]))
        for key, pair in pairs.items()
    ]
    with experiment_errors_as_failures():
        guard = SpendingGuard.for_run(experiment_config, config.max_cost_usd, llm.backend == "offline")
    return respond(context, llm, responses, calls, config, guard)
