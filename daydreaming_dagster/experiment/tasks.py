"""Building the task tables from an experiment: pure functions over DataFrames."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from math import comb

import pandas as pd

from .errors import ExperimentError
from .ids import combo_id, evaluation_task_id, generation_task_id
from .loaders import concept_content, concept_content_source

COMBINATION_COLUMNS = ["combo_id", "position", "concept_id", "name", "content", "description_level", "content_source"]
GENERATION_TASK_COLUMNS = [
    "generation_task_id",
    "combo_id",
    "concept_ids",
    "generation_template_id",
    "generation_model_id",
    "generation_model",
    "generation_replicate",
]
EVALUATION_TASK_COLUMNS = [
    "generation_task_id",
    "evaluation_task_id",
    "evaluation_template_id",
    "evaluation_model_id",
    "evaluation_model",
    "evaluation_replicate",
]
# Above this many combinations the experiment is almost certainly a mistake in k, not a plan.
MAX_COMBINATIONS = 100_000


def build_content_combinations(concepts: pd.DataFrame, k: int, level: str) -> pd.DataFrame:
    """Every k-subset of the active concepts, one row per (combination, concept), in a stable order."""
    # astype(bool): a table read back with no row has an object column, which pandas would take
    # as a list of column names to select rather than a mask.
    active = concepts[concepts["active"].astype(bool)].sort_values("concept_id")
    n = len(active)
    if not 1 <= k <= n:
        raise ExperimentError(f"k={k} must be between 1 and the number of active concepts ({n}).")
    if comb(n, k) > MAX_COMBINATIONS:
        raise ExperimentError(
            f"k={k} of {n} active concepts makes {comb(n, k)} combinations, more than {MAX_COMBINATIONS}."
        )
    records = active.to_dict("records")
    rows = []
    for members in combinations(records, k):
        cid = combo_id(m["concept_id"] for m in members)
        for position, member in enumerate(members):
            rows.append(
                {
                    "combo_id": cid,
                    "position": position,
                    "concept_id": member["concept_id"],
                    "name": member["name"],
                    "content": concept_content(member, level),
                    "description_level": level,
                    "content_source": concept_content_source(member, level),
                }
            )
    return pd.DataFrame(rows, columns=COMBINATION_COLUMNS)


def build_generation_tasks(
    combos: pd.DataFrame, templates: pd.DataFrame, models: pd.DataFrame, replicates: int = 1
) -> pd.DataFrame:
    """Combinations x active generation templates x generation models x replicates (each replicate
    its own task and its own paid call; replicate 1 keeps the id a task has without replicates)."""
    concept_ids = combos.groupby("combo_id", sort=True)["concept_id"].agg(",".join)
    active_templates = sorted(templates.loc[templates["active"].astype(bool), "template_id"])
    generators = models[models["for_generation"].astype(bool)].sort_values("id")
    _require(active_templates, "active generation template")
    _require(list(generators["id"]), "generation model")
    rows = [
        {
            "generation_task_id": generation_task_id(cid, template_id, model.id, replicate),
            "combo_id": cid,
            "concept_ids": ids,
            "generation_template_id": template_id,
            "generation_model_id": model.id,
            "generation_model": model.model,
            "generation_replicate": replicate,
        }
        for cid, ids in concept_ids.items()
        for template_id in active_templates
        for model in generators.itertuples()
        for replicate in range(1, replicates + 1)
    ]
    return pd.DataFrame(rows, columns=GENERATION_TASK_COLUMNS)


def build_evaluation_tasks(
    generation_tasks: pd.DataFrame, templates: pd.DataFrame, models: pd.DataFrame, replicates: int = 1
) -> pd.DataFrame:
    """Every generation task x active evaluation templates x judge models x replicates: one row per
    valid pair. A replicate of a method is a method key of its own (see ids.replicate_suffix)."""
    active_templates = sorted(templates.loc[templates["active"].astype(bool), "template_id"])
    judges = models[models["for_evaluation"].astype(bool)].sort_values("id")
    _require(active_templates, "active evaluation template")
    _require(list(judges["id"]), "evaluation model")
    methods = pd.DataFrame(
        [
            {
                "evaluation_task_id": evaluation_task_id(template_id, judge.id, replicate),
                "evaluation_template_id": template_id,
                "evaluation_model_id": judge.id,
                "evaluation_model": judge.model,
                "evaluation_replicate": replicate,
            }
            for template_id in active_templates
            for judge in judges.itertuples()
            for replicate in range(1, replicates + 1)
        ]
    )
    pairs = generation_tasks[["generation_task_id"]].merge(methods, how="cross")
    return pairs[EVALUATION_TASK_COLUMNS].reset_index(drop=True)


def missing_generation_keys(evaluation_tasks: pd.DataFrame, registered: Iterable[str]) -> list[str]:
    """The generation_task_id values the evaluation table references that are not registered."""
    referenced = set(evaluation_tasks["generation_task_id"])
    return sorted(referenced - set(registered))


def _require(values: list, what: str) -> None:
    if not values:
        raise ExperimentError(f"the experiment has no {what}; mark at least one active.")
