"""The task tables: concept combinations, generation tasks and evaluation tasks (the valid pairs).

The task assets register their keys on the dynamic partitions incrementally: they add what is
missing and never remove anything (stale keys are reported; removing them is a deliberate act)."""

import dagster as dg
import pandas as pd

from ..resources.config import ExperimentConfig
from ..tasks import (
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
    missing_generation_keys,
)
from .common import experiment_errors_as_failures, md_preview
from .partitions import evaluation_tasks_partitions, generation_tasks_partitions

GROUP = "task_definitions"
REGISTER_CHUNK = 5_000


def register_keys(instance: dg.DagsterInstance, partitions_name: str, keys: list[str]) -> dict:
    """Add the keys the instance lacks (in table order); report how many were new and which are stale."""
    registered = instance.get_dynamic_partitions(partitions_name)
    known = set(registered)
    new = [k for k in dict.fromkeys(keys) if k not in known]
    # Chunks keep each insert under SQLite's bound-variable limit on large experiments.
    for start in range(0, len(new), REGISTER_CHUNK):
        instance.add_dynamic_partitions(partitions_name, new[start : start + REGISTER_CHUNK])
    wanted = set(keys)
    stale = [k for k in registered if k not in wanted]
    return {
        f"{partitions_name}_keys_added": len(new),
        f"{partitions_name}_keys_stale": len(stale),
        **({f"{partitions_name}_stale_sample": dg.MetadataValue.json(stale[:20])} if stale else {}),
    }


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager")
def content_combinations(
    concepts: pd.DataFrame, experiment_config: ExperimentConfig
) -> dg.Output[pd.DataFrame]:
    """Every k-subset of the active concepts, one row per (combo_id, concept), with the description used."""
    with experiment_errors_as_failures():
        df = build_content_combinations(concepts, experiment_config.k, experiment_config.description_level)
    return dg.Output(
        df,
        metadata={
            "combinations": int(df["combo_id"].nunique()),
            "k": experiment_config.k,
            "description_level": experiment_config.description_level,
            "preview": md_preview(df, ["combo_id", "position", "concept_id", "name"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager")
def generation_tasks(
    context: dg.AssetExecutionContext,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
    llm_models: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Combinations x active generation templates x generation models; registers the generation keys."""
    with experiment_errors_as_failures():
        df = build_generation_tasks(content_combinations, generation_templates, llm_models)
    registration = register_keys(
        context.instance, generation_tasks_partitions.name, df["generation_task_id"].tolist()
    )
    return dg.Output(
        df,
        metadata={
            "generation_tasks": len(df),
            **registration,
            "preview": md_preview(df, ["generation_task_id", "concept_ids", "generation_template_id", "generation_model_id"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager")
def evaluation_tasks(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    llm_models: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The valid evaluation pairs: every generation task x active evaluation template x judge model.

    `evaluation_task_id` is the method key (template x judge); (generation_task_id,
    evaluation_task_id) is one pair and one partition of the evaluation assets."""
    with experiment_errors_as_failures():
        df = build_evaluation_tasks(generation_tasks, evaluation_templates, llm_models)
    missing = missing_generation_keys(df, context.instance.get_dynamic_partitions(generation_tasks_partitions.name))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise dg.Failure(
            description=(
                f"evaluation_tasks references {len(missing)} generation task(s) that are not registered "
                f"generation_tasks partitions ({shown}); materialize generation_tasks first."
            )
        )
    methods = df["evaluation_task_id"].drop_duplicates().tolist()
    registration = register_keys(context.instance, evaluation_tasks_partitions.name, methods)
    return dg.Output(
        df,
        metadata={
            "evaluation_pairs": len(df),
            "evaluation_methods": len(methods),
            **registration,
            "preview": md_preview(df, ["generation_task_id", "evaluation_task_id", "evaluation_model_id"]),
        },
    )
