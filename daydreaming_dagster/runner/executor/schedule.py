"""What `daydream run` runs next: generation batches first, and the evaluation pairs of a generation
as soon as that generation is materialized (no barrier between the two stages).

Batches are partition-key ranges (see batches.py): consecutive generation keys, or one method's
pairs of consecutive generations, in the order the instance registered the generation keys. Work is
handed out lowest position first, so generations that were asked first are judged first. A batch
that failed comes back as single partitions, ahead of everything else. Pure: keys in, batches out."""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence

from ...experiment import stages
from ...experiment.stages import pair_key
from .ranges import Batch

# The jobs of the two stages (a stage's job has its name).
GENERATION = stages.GENERATION.name
EVALUATION = stages.EVALUATION.name


class _Ranges:
    """Positions ready to run under one name (a method, or the generations), taken lowest first in
    runs of consecutive positions."""

    def __init__(self) -> None:
        self._heap: list[int] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, position: int) -> None:
        heapq.heappush(self._heap, position)

    def first(self) -> int:
        return self._heap[0]

    def take(self, size: int) -> list[int]:
        run = [heapq.heappop(self._heap)]
        while self._heap and len(run) < size and self._heap[0] == run[-1] + 1:
            run.append(heapq.heappop(self._heap))
        return run


class Schedule:
    """The partitions of one `daydream run` still to hand out.

    `generations` are the generation keys to run; `pairs` the (generation, method) pairs to run,
    each released when its generation is materialized, at once for generations in `materialized`
    that are not run again. `order` is the instance's generation key order."""

    def __init__(
        self,
        order: Sequence[str],
        generations: Iterable[str],
        pairs: Iterable[tuple[str, str]],
        materialized: Iterable[str] = (),
    ) -> None:
        self._order = list(order)
        self._position = {key: i for i, key in enumerate(self._order)}
        self._retries: deque[tuple[str, Batch]] = deque()
        self._generations = _Ranges()
        self._ready: dict[str, _Ranges] = defaultdict(_Ranges)
        self._waiting: dict[str, list[str]] = defaultdict(list)
        self._unordered: deque[tuple[str, Batch]] = deque()  # keys the instance does not know: one run each
        generations = list(dict.fromkeys(generations))
        for key in generations:
            self._add(GENERATION, key)
        rerun = set(generations)
        available = set(materialized) - rerun
        for generation, method in pairs:
            if generation in available:
                self._release_pair(generation, method)
            else:
                self._waiting[generation].append(method)

    def _add(self, job: str, key: str) -> None:
        if key in self._position:
            self._generations.add(self._position[key])
        else:
            self._unordered.append((job, Batch((key,))))

    def _release_pair(self, generation: str, method: str) -> None:
        if generation in self._position:
            self._ready[method].add(self._position[generation])
        else:
            self._unordered.append((EVALUATION, Batch((pair_key(generation, method),))))

    def generation_done(self, keys: Iterable[str]) -> None:
        """These generations are materialized: their pairs may run."""
        for generation in keys:
            for method in self._waiting.pop(generation, []):
                self._release_pair(generation, method)

    def add_generation(self, key: str, alone: bool = False) -> None:
        """A generation held back until now (asked by the head start, see head_start.py) may run;
        `alone`: in a run of its own, before anything else."""
        if alone:
            self._retries.append((GENERATION, Batch((key,))))
        else:
            self._add(GENERATION, key)

    def retry_singly(self, job: str, batch: Batch) -> None:
        """Run the partitions of a failed batch again, one per run, before anything else."""
        self._retries.extendleft((job, Batch((key,))) for key in reversed(batch.keys))

    def waiting_pairs(self) -> int:
        """Pairs whose generation has not been materialized."""
        return sum(map(len, self._waiting.values()))

    def ready(self) -> tuple[str, int] | None:
        """Which job the next batch is for, and how many of its partitions are ready to run."""
        if self._retries:
            return self._retries[0][0], len(self._retries)
        if self._generations:
            return GENERATION, len(self._generations)
        pairs = sum(map(len, self._ready.values()))
        if pairs:
            return EVALUATION, pairs
        if self._unordered:
            return self._unordered[0][0], len(self._unordered)
        return None

    def next_batch(self, size_for: Callable[[int], int]) -> tuple[str, Batch] | None:
        """The next batch to run, of at most `size_for(ready partitions)` partitions; None when no
        partition is ready (all handed out, or the rest wait for their generations)."""
        ready = self.ready()
        if ready is None:
            return None
        job, count = ready
        if self._retries:
            return self._retries.popleft()
        size = max(1, size_for(count))
        if self._generations:
            return GENERATION, Batch(tuple(self._order[p] for p in self._generations.take(size)))
        methods = [m for m, r in self._ready.items() if r]
        if methods:
            method = min(methods, key=lambda m: (self._ready[m].first(), m))
            run = self._ready[method].take(size)
            return EVALUATION, Batch(tuple(pair_key(self._order[p], method) for p in run))
        return self._unordered.popleft()
