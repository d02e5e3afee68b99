"""A test-only IO manager that keeps values in memory across runs, with the project's two shapes of a
partitioned value (one partition, or a dict over a partition range)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from daydreaming_dagster.llm.requests import LLMResponse
from daydreaming_dagster.resources.io_managers import _loads_many, _stores_many, _values_by_partition

# Values kept for the life of the process, across runs, per named store.
_MEMORY: dict[str, dict[tuple, Any]] = {}


class MemoryIOManager(dg.ConfigurableIOManager):
    """Keeps every output in process memory across runs; `store` names the space. Unlike Dagster's
    InMemoryIOManager it keeps values across runs, so an evaluation run can load a generation's
    output from an earlier run."""

    store: str = "default"

    def _space(self) -> dict[tuple, Any]:
        return _MEMORY.setdefault(self.store, {})

    @staticmethod
    def _key(context, partition_key) -> tuple:
        return (tuple(context.asset_key.path), None if partition_key is None else str(partition_key))

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        def plain(value: Any) -> Any:
            return value.text if isinstance(value, LLMResponse) else value

        if _stores_many(context):
            for key, value in _values_by_partition(context, obj).items():
                self._space()[self._key(context, key)] = plain(value)
            return
        key = context.asset_partition_key if context.has_asset_partitions else None
        self._space()[self._key(context, key)] = plain(obj)

    def load_input(self, context: dg.InputContext) -> Any:
        space = self._space()
        if not context.has_asset_partitions:
            return space[self._key(context, None)]
        keys = context.asset_partition_keys
        if not _loads_many(context):
            return space[self._key(context, keys[0])]
        return {str(k): space[self._key(context, k)] for k in keys if self._key(context, k) in space}

    @classmethod
    def clear(cls, store: str) -> None:
        _MEMORY.pop(store, None)
