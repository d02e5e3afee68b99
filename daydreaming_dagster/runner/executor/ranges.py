"""How `daydream run` groups the partitions it has to run into batches, one Dagster run each.

A batch is a partition-key range: keys that are consecutive in the order the instance registered
them (for pairs: one evaluation method, consecutive generation keys), so one run covers it and
Dagster still records a materialization for every partition in it. Nothing here looks at keys
that were not asked for: the cost follows the partitions to run, not the size of the key space."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ...assets.common import MAX_PARTITIONS_PER_RUN
from ...experiment.stages import pair_key

__all__ = ["MAX_PARTITIONS_PER_RUN", "Batch", "batch_size", "key_batches", "pair_batches"]


@dataclass(frozen=True)
class Batch:
    """Partition keys (as strings) of one run, in range order; one key means a plain partition run."""

    keys: tuple[str, ...]

    @property
    def start(self) -> str:
        return self.keys[0]

    @property
    def end(self) -> str:
        return self.keys[-1]


def batch_size(todo: int, workers: int, max_size: int) -> int:
    """The size that splits `todo` partitions into as few batches of at most `max_size` as possible,
    in a multiple of `workers` batches so that every worker gets an equal share."""
    if todo <= 0:
        return max(1, max_size)
    count = max(workers, math.ceil(todo / max(1, max_size)))
    count = math.ceil(count / max(1, workers)) * max(1, workers)
    return max(1, math.ceil(todo / count))


def _consecutive(positions: Sequence[tuple[int, str]]) -> list[list[str]]:
    """Split (position, key) pairs into runs of consecutive positions."""
    runs: list[list[str]] = []
    last = None
    for position, key in sorted(positions):
        if last is None or position != last + 1:
            runs.append([])
        runs[-1].append(key)
        last = position
    return runs


def _chunks(run: list[str], size: int) -> list[tuple[str, ...]]:
    """A run cut into pieces of at most `size`, as equal as possible."""
    count = math.ceil(len(run) / size)
    base, extra = divmod(len(run), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append(tuple(run[start:end]))
        start = end
    return out


def _positions(order: Sequence[str]) -> dict[str, int]:
    return {key: i for i, key in enumerate(order)}


def key_batches(order: Sequence[str], todo: Iterable[str], size: int) -> list[Batch]:
    """Batches of single-dimension keys; `order` is the dimension's key order in the instance."""
    position = _positions(order)
    todo = list(todo)
    unknown = [k for k in todo if k not in position]
    runs = _consecutive([(position[k], k) for k in todo if k in position])
    return [Batch(c) for run in runs for c in _chunks(run, size)] + [Batch((k,)) for k in unknown]


def pair_batches(generation_order: Sequence[str], todo: Iterable[tuple[str, str]], size: int) -> list[Batch]:
    """Batches of (generation_task_id, evaluation_task_id) pairs: one method, consecutive generations."""
    position = _positions(generation_order)
    by_method: dict[str, list[tuple[int, str]]] = defaultdict(list)
    unknown = []
    for generation, method in todo:
        if generation in position:
            by_method[method].append((position[generation], generation))
        else:
            unknown.append(pair_key(generation, method))
    batches = []
    for method in sorted(by_method):
        for run in _consecutive(by_method[method]):
            for chunk in _chunks(run, size):
                batches.append(Batch(tuple(pair_key(g, method) for g in chunk)))
    return batches + [Batch((k,)) for k in unknown]
