"""The valid evaluation pairs as partition keys, from the evaluation_tasks table (never the cross product)."""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pandas as pd


def pair_keys(table: pd.DataFrame) -> pd.Series:
    """The `"<evaluation_task_id>|<generation_task_id>"` key of every row of an evaluation_tasks table."""
    return table["evaluation_task_id"] + "|" + table["generation_task_id"]


def _filtered(
    evaluation_tasks: pd.DataFrame,
    generation_task: Iterable[str] | None,
    evaluation_task: Iterable[str] | None,
) -> pd.DataFrame:
    table = evaluation_tasks
    if generation_task is not None:
        table = table[table["generation_task_id"].isin(list(generation_task))]
    if evaluation_task is not None:
        table = table[table["evaluation_task_id"].isin(list(evaluation_task))]
    return table


def valid_pair_keys(
    evaluation_tasks: pd.DataFrame,
    generation_task: Iterable[str] | None = None,
    evaluation_task: Iterable[str] | None = None,
    exclude: Collection[str] = (),
) -> list[str]:
    """The pairs the table lists as `"<evaluation_task_id>|<generation_task_id>"` strings, in table order.

    Optionally only those of some generation tasks / evaluation methods, and without the keys in
    `exclude` (e.g. the partitions already materialized)."""
    table = _filtered(evaluation_tasks, generation_task, evaluation_task)
    keys = pair_keys(table).tolist()
    if exclude:
        keys = [k for k in keys if k not in exclude]
    return keys

