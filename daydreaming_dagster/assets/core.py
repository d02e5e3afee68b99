"""The task tables: concept combinations, generation tasks and evaluation tasks (the valid pairs).

The task assets register their keys on the dynamic partitions incrementally: they add what is
missing and never remove anything (stale keys are reported; removing them is a deliberate act)."""

import dagster as dg
import pandas as pd

from ..experiment.stages import EVALUATION
from ..experiment.tasks import (
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
    missing_generation_keys,
)
from ..resources.config import ExperimentConfig
from .common import experiment_errors_as_failures, md_preview, table_output
from .estimates import estimate_metadata, evaluation_calls, generation_calls, stage_estimate, stored_samples
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


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"})
def content_combinations(
    concepts: pd.DataFrame, experiment_config: ExperimentConfig
) -> dg.Output[pd.DataFrame]:
    """Every k-subset of the active concepts, one row per (combo_id, concept), with the description used."""
    with experiment_errors_as_failures():
        df = build_content_combinations(concepts, experiment_config.k, experiment_config.description_level)
    return table_output(
        df,
        {
            "combinations": int(df["combo_id"].nunique()),
            "k": experiment_config.k,
            "description_level": experiment_config.description_level,
            "preview": md_preview(df, ["combo_id", "position", "concept_id", "name"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"})
def generation_tasks(
    context: dg.AssetExecutionContext,
    content_combinations: pd.DataFrame,
    generation_templates: pd.DataFrame,
    llm_models: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output[pd.DataFrame]:
    """Combinations x active generation templates x generation models (x `generation_replicates`);
    registers the generation keys. Its metadata estimates the calls and cost of the generations not
    materialized yet."""
    with experiment_errors_as_failures():
        df = build_generation_tasks(
            content_combinations, generation_templates, llm_models, experiment_config.generation_replicates
        )
        done = context.instance.get_materialized_partitions(dg.AssetKey("generation_response"))
        calls = generation_calls(df, content_combinations, generation_templates, experiment_config, done)
        samples = stored_samples(experiment_config, df["generation_task_id"].tolist())
        cost = estimate_metadata(calls, stage_estimate(calls, samples, llm_models))
    registration = register_keys(
        context.instance, generation_tasks_partitions.name, df["generation_task_id"].tolist()
    )
    return table_output(
        df,
        {
            "generation_tasks": len(df),
            "generation_replicates": experiment_config.generation_replicates,
            **registration,
            **cost,
            "preview": md_preview(df, ["generation_task_id", "concept_ids", "generation_template_id", "generation_model_id"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"})
def evaluation_tasks(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    llm_models: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output[pd.DataFrame]:
    """The valid evaluation pairs: every generation task x active evaluation template x judge model
    (x `evaluation_replicates`).

    `evaluation_task_id` is the method key (template x judge, and `__r<n>` from replicate 2 on);
    (generation_task_id, evaluation_task_id) is one pair and one partition of the evaluation assets.
    Its metadata estimates the calls and cost of the pairs not materialized yet."""
    with experiment_errors_as_failures():
        df = build_evaluation_tasks(
            generation_tasks, evaluation_templates, llm_models, experiment_config.evaluation_replicates
        )
    missing = missing_generation_keys(df, context.instance.get_dynamic_partitions(generation_tasks_partitions.name))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise dg.Failure(
            description=(
                f"evaluation_tasks references {len(missing)} generation task(s) that are not registered "
                f"generation_tasks partitions ({shown}); materialize generation_tasks first."
            )
        )
    with experiment_errors_as_failures():
        done = context.instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))
        calls = evaluation_calls(df, generation_tasks, evaluation_templates, experiment_config, done)
        samples = stored_samples(experiment_config, generation_tasks["generation_task_id"].tolist(), df)
        cost = estimate_metadata(calls, stage_estimate(calls, samples, llm_models))
    methods = df["evaluation_task_id"].drop_duplicates().tolist()
    registration = register_keys(context.instance, evaluation_tasks_partitions.name, methods)
    return table_output(
        df,
        {
            "evaluation_pairs": len(df),
            "evaluation_methods": len(methods),
            "evaluation_replicates": experiment_config.evaluation_replicates,
            **registration,
            **cost,
            "preview": md_preview(df, ["generation_task_id", "evaluation_task_id", "evaluation_model_id"]),
        },
    )


def _check_result(problems: dict[str, list[str]], severity=dg.AssetCheckSeverity.ERROR, **metadata) -> dg.AssetCheckResult:
    """Passed when no rule found anything; each rule's count and first offenders go in the metadata."""
    found = {rule: values for rule, values in problems.items() if values}
    return dg.AssetCheckResult(
        passed=not found,
        severity=severity,
        description="; ".join(f"{rule}: {len(v)} ({', '.join(map(str, v[:5]))})" for rule, v in found.items()) or None,
        metadata={**{rule: len(v) for rule, v in problems.items()}, **metadata},
    )


def _duplicates(values: pd.Series) -> list[str]:
    return sorted(set(values[values.duplicated()].astype(str)))


def _not_active(referenced: pd.Series, table: pd.DataFrame, id_column: str, flag: str) -> list[str]:
    usable = set(table.loc[table[flag], id_column])
    return sorted(set(referenced) - usable)


@dg.asset_check(asset=generation_tasks, additional_ins={"generation_templates": dg.AssetIn(), "llm_models": dg.AssetIn()})
def generation_tasks_integrity(
    generation_tasks: pd.DataFrame, generation_templates: pd.DataFrame, llm_models: pd.DataFrame
) -> dg.AssetCheckResult:
    """Generation task ids are unique; every template and model they use exists and is active."""
    return _check_result(
        {
            "duplicate_ids": _duplicates(generation_tasks["generation_task_id"]),
            "inactive_or_unknown_templates": _not_active(
                generation_tasks["generation_template_id"], generation_templates, "template_id", "active"
            ),
            "unknown_or_non_generator_models": _not_active(
                generation_tasks["generation_model_id"], llm_models, "id", "for_generation"
            ),
        }
    )


@dg.asset_check(
    asset=evaluation_tasks,
    additional_ins={"generation_tasks": dg.AssetIn(), "evaluation_templates": dg.AssetIn(), "llm_models": dg.AssetIn()},
)
def evaluation_tasks_integrity(
    evaluation_tasks: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    llm_models: pd.DataFrame,
) -> dg.AssetCheckResult:
    """Pairs are unique; every generation_task_id resolves; every template and judge exists and is active."""
    return _check_result(
        {
            "duplicate_pairs": _duplicates(EVALUATION.keys(evaluation_tasks)),
            "dangling_generation_task_ids": sorted(
                set(evaluation_tasks["generation_task_id"]) - set(generation_tasks["generation_task_id"])
            ),
            "inactive_or_unknown_templates": _not_active(
                evaluation_tasks["evaluation_template_id"], evaluation_templates, "template_id", "active"
            ),
            "unknown_or_non_judge_models": _not_active(
                evaluation_tasks["evaluation_model_id"], llm_models, "id", "for_evaluation"
            ),
        }
    )


def _stale_keys_check(context: dg.AssetCheckExecutionContext, partitions_name: str, current: pd.Series) -> dg.AssetCheckResult:
    stale = sorted(set(context.instance.get_dynamic_partitions(partitions_name)) - set(current))
    return _check_result(
        {f"stale_{partitions_name}_keys": stale},
        severity=dg.AssetCheckSeverity.WARN,
        how_to_remove=dg.MetadataValue.text(
            "Stale keys are never removed automatically (their files and history stay). "
            "Remove them deliberately with `daydream prune-keys` after reviewing the list."
        ),
    )


@dg.asset_check(asset=generation_tasks)
def generation_keys_current(context: dg.AssetCheckExecutionContext, generation_tasks: pd.DataFrame) -> dg.AssetCheckResult:
    """Every registered generation_tasks key is still a row of the table (stale keys are reported)."""
    return _stale_keys_check(context, generation_tasks_partitions.name, generation_tasks["generation_task_id"])


@dg.asset_check(asset=evaluation_tasks)
def evaluation_keys_current(context: dg.AssetCheckExecutionContext, evaluation_tasks: pd.DataFrame) -> dg.AssetCheckResult:
    """Every registered evaluation method key is still used by the table (stale keys are reported)."""
    return _stale_keys_check(context, evaluation_tasks_partitions.name, evaluation_tasks["evaluation_task_id"])
