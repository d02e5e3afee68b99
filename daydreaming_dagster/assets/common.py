"""Small helpers the asset modules share: clear failures, Markdown previews, and the two shapes of
a partitioned value (one partition, or a run over a partition range)."""

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from ..errors import ExperimentError

PREVIEW_ROWS = 10


@contextlib.contextmanager
def experiment_errors_as_failures() -> Iterator[None]:
    """Show an ExperimentError as a Dagster Failure whose description is its one sentence."""
    try:
        yield
    except ExperimentError as exc:
        raise dg.Failure(description=str(exc)) from exc


def md_preview(df: pd.DataFrame, columns: list[str] | None = None, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    shown = df[columns] if columns else df
    text = shown.head(rows).to_markdown(index=False) if len(shown) else "_empty_"
    if len(shown) > rows:
        text += f"\n\n… {len(shown) - rows} more rows"
    return dg.MetadataValue.md(text)


def text_preview(text: str, chars: int = 400) -> dg.MetadataValue:
    return dg.MetadataValue.text(text if len(text) <= chars else text[:chars] + " …")


def table_metadata(df: pd.DataFrame, columns: list[str] | None = None) -> dict:
    return {"rows": len(df), "preview": md_preview(df, columns)}


# A partitioned asset's step sees either one partition (a run for one key) or several (a run over a
# partition range, which is how `daydream run` and backfills batch many partitions into one run).
# Inputs and outputs follow Dagster's convention for ranges: the value of one partition, or a dict
# of those values keyed by partition key.


def per_partition_type(name: str, item: type) -> dg.DagsterType:
    """A Dagster type for "one `item`, or a dict of `item` by partition key (a partition-range run)"."""

    def check(_context, value: Any) -> bool:
        if isinstance(value, Mapping):
            return all(isinstance(k, str) and isinstance(v, item) for k, v in value.items())
        return isinstance(value, item)

    return dg.DagsterType(
        name=name,
        type_check_fn=check,
        description=f"One partition's {item.__name__}, or, in a run over a partition range, "
        f"a dict of {item.__name__} keyed by partition key.",
    )


PartitionText = per_partition_type("PartitionText", str)


def by_partition(context: dg.AssetExecutionContext, value: Any, single_key: str) -> Mapping[str, Any]:
    """An input as a dict keyed by upstream partition key, whichever shape the run gave it."""
    return value if context.has_partition_key_range else {single_key: value}


def partition_output(
    context: dg.AssetExecutionContext, values: Mapping[str, Any], metadata: Mapping[str, dict]
) -> dg.Output:
    """The step's output in the run's shape, with each partition's own metadata on its materialization."""
    if not context.has_partition_key_range:
        ((key, value),) = values.items()
        return dg.Output(value, metadata=metadata.get(key, {}))
    for key, meta in metadata.items():
        context.add_asset_metadata(meta, partition_key=key)
    return dg.Output(dict(values))
