"""The stages of an experiment as data: a generation stage and the evaluation stage are two
instances of one idea.

A stage has a task table (one row per task), a prompt asset and a response asset partitioned by the
task's key, and, unless it is the first, the stage whose answers its prompts quote (its parent). Its
partition key is built from the task's ids, one per partition dimension, joined the way Dagster
prints a multi-partition key (dimension names sorted, `|` between them); the dimension named after
the parent's task table holds the parent task's key. A task is ready once its parent's answer is
materialized. Every part of the project that builds, splits or schedules keys (the assets, the
runner's stream, the sensors, backfills, batch mode, the change checks) asks a Stage."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

KEY_SEPARATOR = "|"  # between the dimensions of a multi-partition key, as Dagster prints it


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its job's), task table, assets, parent stage and partition dimensions.

    `dimensions` pairs each partition dimension (a dynamic partitions name) with the task-table
    column that holds its key, in Dagster's order (sorted by dimension name)."""

    name: str
    tasks: str
    prompt: str
    response: str
    dimensions: tuple[tuple[str, str], ...]
    parent: str | None = None

    @property
    def multi(self) -> bool:
        return len(self.dimensions) > 1

    @property
    def parent_dimension(self) -> str | None:
        """The dimension whose key is the parent task's key (the parent's task table's name)."""
        return None if self.parent is None else STAGES[self.parent].tasks

    def key(self, row: Mapping) -> str:
        """The partition key of a task (a row of the task table)."""
        return KEY_SEPARATOR.join(str(row[column]) for _, column in self.dimensions)

    def keys(self, table: pd.DataFrame) -> pd.Series:
        """The partition key of every row of the task table, in table order."""
        columns = [table[column].astype(str) for _, column in self.dimensions]
        keys = columns[0]
        for column in columns[1:]:
            keys = keys + KEY_SEPARATOR + column
        return keys

    def parts(self, key: str) -> str | dict[str, str]:
        """A partition key as its parts by dimension (the key itself for a single dimension), as
        the archive and the IO managers lay out files."""
        if not self.multi:
            return key
        values = key.split(KEY_SEPARATOR, len(self.dimensions) - 1)
        return {dimension: value for (dimension, _), value in zip(self.dimensions, values)}

    def key_of(self, parts: Mapping[str, str] | str) -> str:
        """The partition key of a task given by its parts (the inverse of `parts`)."""
        if isinstance(parts, str):
            return parts
        return KEY_SEPARATOR.join(parts[dimension] for dimension, _ in self.dimensions)

    def parent_key(self, key: str) -> str | None:
        """The key of the parent task whose answer this task's prompt quotes (None for a first stage)."""
        dimension = self.parent_dimension
        return None if dimension is None else self.parts(key)[dimension]

    def select(
        self,
        table: pd.DataFrame,
        parents: Iterable[str] | None = None,
        only: Mapping[str, Iterable[str]] | None = None,
        exclude: Collection[str] = (),
    ) -> list[str]:
        """The keys of the task table's rows, in table order: those whose parent task is in
        `parents` (when given), whose column values are in `only` (column -> values), and not in
        `exclude` (e.g. the partitions already materialized). The table lists the valid tasks:
        nothing here builds a key that is not a row."""
        mask = pd.Series(True, index=table.index)
        if parents is not None:
            mask &= table[self._parent_column()].isin(set(parents))
        for column, values in (only or {}).items():
            if values is not None:
                mask &= table[column].isin(set(values))
        keys = self.keys(table[mask]).tolist()
        return [k for k in keys if k not in exclude] if exclude else keys

    def ready(self, table: pd.DataFrame, parents_done: Iterable[str], exclude: Collection[str] = ()) -> list[str]:
        """The tasks ready to run: their parent's answer is materialized (`parents_done`), and they
        are not in `exclude`. Every task of a first stage is ready."""
        if self.parent is None:
            return self.select(table, exclude=exclude)
        return self.select(table, parents=parents_done, exclude=exclude)

    def _parent_column(self) -> str:
        return dict(self.dimensions)[self.parent_dimension]


GENERATION = Stage(
    name="generation",
    tasks="generation_tasks",
    prompt="generation_prompt",
    response="generation_response",
    dimensions=(("generation_tasks", "generation_task_id"),),
)
EVALUATION = Stage(
    name="evaluation",
    tasks="evaluation_tasks",
    prompt="evaluation_prompt",
    response="evaluation_response",
    # The evaluation_tasks dimension holds evaluation *methods* (template x judge model x replicate);
    # a pair (generation task, method) is one evaluation task, and its key is "<method>|<generation>".
    dimensions=(("evaluation_tasks", "evaluation_task_id"), ("generation_tasks", "generation_task_id")),
    parent="generation",
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in (GENERATION, EVALUATION)}


def stage_of(asset: str) -> Stage:
    """The stage whose prompt or response `asset` is."""
    for stage in STAGES.values():
        if asset in (stage.prompt, stage.response):
            return stage
    raise KeyError(f"{asset} is the prompt or response of no stage")


def pair_key(generation: str, method: str) -> str:
    """The partition key of the evaluation pair (generation task, evaluation method)."""
    return EVALUATION.key_of({"generation_tasks": generation, "evaluation_tasks": method})
