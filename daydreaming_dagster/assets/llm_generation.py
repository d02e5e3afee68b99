"""Generation: one prompt and one paid response per generation task.

Both assets run for one partition or, batched, for a range of partitions in one run (see
`partition_output`); either way every partition is materialized, and re-runnable, on its own."""

import dagster as dg
import pandas as pd

from ..calls.guard import SpendingGuard
from ..experiment.prompts import CODE_VERSION as PROMPT_CODE_VERSION
from ..experiment.prompts import generation_prompts
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource
from ..resources.response_store import ResponseStore
from ..store.layout import text_path
from .common import (
    PartitionText,
    by_partition,
    experiment_errors_as_failures,
    partition_output,
    partitioned_asset,
    prompt_metadata,
    task_rows,
)
from .partitions import generation_tasks_partitions
from .responding import LLM_POOL, Call, PartitionResponse, ResponseConfig, respond

GROUP = "llm_generation"


@partitioned_asset(
    group_name=GROUP,
    partitions_def=generation_tasks_partitions,
    io_manager_key="text_io_manager",
    dagster_type=PartitionText,
    kinds={"jinja", "text"},
    code_version=PROMPT_CODE_VERSION,
)
def generation_prompt(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output:
    """The prompt sent to a generator model: the task's generation template rendered with the
    descriptions of its concepts. One text file per generation task.

    Its data version is the digest of its text (see `partition_output`), so a generation_response
    is stale in Dagster exactly when the prompt it answered has changed; `prompt_sources` in the
    metadata say which files the prompt was rendered from."""
    keys = [str(k) for k in context.partition_keys]
    tasks = task_rows(generation_tasks, "generation_task_id", keys, "generation_tasks")
    with experiment_errors_as_failures():
        rendered = generation_prompts(tasks, content_combinations, generation_templates)
    metadata = {
        key: {
            "combo_id": task["combo_id"],
            "concept_ids": task["concept_ids"],
            "template_id": task["generation_template_id"],
            **prompt_metadata(rendered[key]),
            "path": dg.MetadataValue.path(str(text_path(experiment_config.output_root, "generation_prompt", key))),
        }
        for key, task in tasks.items()
    }
    prompts = {key: prompt.text for key, prompt in rendered.items()}
    return partition_output(context, prompts, metadata, {key: p.sha256 for key, p in rendered.items()})


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
    calls = [
        Call(key=key, parts=key, request=experiment_config.generation_request(task, prompts[key]))
        for key, task in tasks.items()
    ]
    with experiment_errors_as_failures():
        guard = SpendingGuard.for_run(experiment_config, config.max_cost_usd, llm.backend == "offline")
    return respond(context, llm, responses, calls, config, guard)
