"""IO managers: one per format, text files and CSV tables, each under a base path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from ..llm.requests import LLMResponse
from ..store.archive import mismatch_message
from ..store.csv_tables import read_table
from ..store.files import atomic_write_bytes, atomic_write_text
from ..store.layout import table_path, text_path
from ..store.roots import data_path
from ..store.write_once import read_stored, write_response_once

# The paid answers: their text is checked against its sidecar whenever it is loaded.
RESPONSE_ASSETS = frozenset({"generation_response", "evaluation_response"})


@dataclass(frozen=True)
class Mismatch:
    """A stored response that does not match its sidecar, and why."""

    reason: str


def partition_parts(context: dg.InputContext | dg.OutputContext) -> dict[str, str] | str | None:
    """The partition of the asset being stored or loaded: None, a key, or keys by dimension."""
    if not context.has_asset_partitions:
        return None
    key = context.asset_partition_key
    partitions_def = context.asset_partitions_def
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension
    return str(key)


def _loads_many(context: dg.InputContext) -> bool:
    """A step that is not for one partition (an unpartitioned reader, or a run over a partition
    range) gets its upstream partitions as a dict keyed by partition key, even if there is only one
    (or none yet)."""
    return context.has_asset_partitions and (not context.has_partition_key or len(context.asset_partition_keys) != 1)


def _stores_many(context: dg.OutputContext) -> bool:
    """A run over a partition range hands over a dict of values keyed by partition key."""
    return context.has_asset_partitions and not context.has_partition_key


def _values_by_partition(context: dg.OutputContext, obj: Any) -> dict[str, Any]:
    """The value of every partition of the range; a range step must return each of them."""
    keys = [str(k) for k in context.asset_partition_keys]
    if not isinstance(obj, dict):
        raise TypeError(f"{_asset_name(context)}: a partition-range run must return a dict keyed by partition key.")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{_asset_name(context)} returned no value for partition {missing[0]} of its range.")
    return {k: obj[k] for k in keys}


def _asset_name(context: dg.InputContext | dg.OutputContext) -> str:
    return context.asset_key.path[-1]


class TextIOManager(dg.ConfigurableIOManager):
    """One UTF-8 text file per partition under `base_path`; LLM responses are written once, with a sidecar.

    Loading several partitions (a downstream asset that reads all of them) returns a dict keyed by
    partition key holding only the partitions that have a file. A stored response is handed over
    only when it matches its sidecar (store/write_once.py, read_stored): loading one that does not
    fails with one sentence; loading several leaves it out."""

    base_path: str

    def _path(self, asset_name: str, parts) -> Path:
        return text_path(data_path(self.base_path), asset_name, parts)

    def handle_output(self, context: dg.OutputContext, obj: str | LLMResponse | dict) -> None:
        name = _asset_name(context)
        if not _stores_many(context):
            path = self._path(name, partition_parts(context))
            self._write(path, obj)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})
            return
        # No output metadata here: Dagster would show it on every partition of the range. Each
        # partition's own metadata (its path among it) comes from the asset.
        partitions_def = context.asset_partitions_def
        multi = isinstance(partitions_def, dg.MultiPartitionsDefinition)
        for key, value in _values_by_partition(context, obj).items():
            parts = partitions_def.get_partition_key_from_str(key).keys_by_dimension if multi else key
            self._write(self._path(name, parts), value)

    @staticmethod
    def _write(path: Path, obj: str | LLMResponse) -> None:
        if isinstance(obj, LLMResponse):
            # Usually already stored by the asset as the answer arrived; then this writes nothing.
            write_response_once(path, obj.text, obj.provenance)
        elif isinstance(obj, str):
            atomic_write_text(path, obj)
        else:
            raise TypeError(f"TextIOManager stores str or LLMResponse, not {type(obj).__name__}.")

    def load_input(self, context: dg.InputContext) -> str | dict[str, str]:
        name = _asset_name(context)
        if _loads_many(context):
            return self._load_many(context, name)
        partition = str(context.asset_partition_key) if context.has_asset_partitions else "(none)"
        path = self._path(name, partition_parts(context))
        text = self._read(name, path)
        if text is None:
            raise FileNotFoundError(f"{name} has no stored text for partition {partition} at {path}; materialize it first.")
        if isinstance(text, Mismatch):
            raise dg.Failure(description=mismatch_message(name, partition, path, text.reason))
        return text

    def _load_many(self, context: dg.InputContext, name: str) -> dict[str, str]:
        """The text of every partition that has one; a response that does not match its sidecar is
        left out (parsed_scores says why for its pair)."""
        partitions_def = context.asset_partitions_def
        multi = isinstance(partitions_def, dg.MultiPartitionsDefinition)
        found, unverified = {}, []
        for key in context.asset_partition_keys:
            parts = partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension if multi else str(key)
            path = self._path(name, parts)
            text = self._read(name, path)
            if isinstance(text, Mismatch):
                unverified.append(path)
            elif text is not None:
                found[str(key)] = text
        if unverified:
            context.log.info(
                f"{name}: {len(unverified)} stored answer(s) left out because they do not match their sidecars "
                f"(first {unverified[0]}); re-ask them with `daydream run --replace-changed`, or restore the files."
            )
        return found

    @staticmethod
    def _read(name: str, path: Path) -> str | Mismatch | None:
        """The text at `path` (None: none); a response is checked against its sidecar first."""
        if name not in RESPONSE_ASSETS:
            return path.read_text(encoding="utf-8") if path.is_file() else None
        stored = read_stored(path)
        if stored is None:
            return None
        if stored.mismatch is not None:
            return Mismatch(stored.mismatch)
        return stored.data.decode("utf-8")


class TableIOManager(dg.ConfigurableIOManager):
    """One CSV file per (unpartitioned) table asset under `base_path`, written atomically."""

    base_path: str

    def _path(self, context: dg.InputContext | dg.OutputContext) -> Path:
        group = context.definition_metadata.get("daydream/group") if context.definition_metadata else None
        if isinstance(context, dg.InputContext) and context.upstream_output is not None:
            group = (context.upstream_output.definition_metadata or {}).get("daydream/group")
        return table_path(data_path(self.base_path), _asset_name(context), group)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        path = self._path(context)
        atomic_write_bytes(path, obj.to_csv(index=False).encode("utf-8"))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": len(obj)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        path = self._path(context)
        if not path.is_file():
            raise FileNotFoundError(f"{_asset_name(context)} has no stored table at {path}; materialize it first.")
        return read_table(path)
