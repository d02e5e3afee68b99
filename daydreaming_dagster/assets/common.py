"""Small helpers the asset modules share: clear failures, Markdown previews, the decorator of the
batched LLM-stage assets, and the two shapes of a partitioned value (one partition, or a run over
a partition range)."""

import contextlib
import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from ..experiment.errors import ExperimentError
from ..experiment.prompts import Prompt
from ..store.csv_tables import table_digest

PREVIEW_ROWS = 10
# At most this many partitions go in one run of `daydream run`: its warm workers start a run for
# ~0.25-0.5 s of CPU, a partition inside one costs ~20 ms, and a failed batch is re-run one
# partition per run, so larger batches buy little there and cost more then.
MAX_PARTITIONS_PER_RUN = 32
# ... and in one run of a backfill (the UI's "Materialize all", `daydream backfill`, the sensor's
# large requests). The daemon starts each run as a new process that imports and loads the code
# location, ~3-6 s of CPU on 2 cores, before its first call: 2,000 pairs in runs of 32 spent more
# CPU starting runs than calling (README, "Performance"). A run of 128 still fills the machine's
# call slots alone (`parallel_calls`) and shows each partition's materialization as it lands.
BACKFILL_PARTITIONS_PER_RUN = 128
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_PARTITIONS_PER_RUN)


# Marks a Failure raised for an ExperimentError: `daydream run` ends with its sentence (worker.py).
EXPERIMENT_REFUSED = "daydream/experiment_refused"


@contextlib.contextmanager
def experiment_errors_as_failures() -> Iterator[None]:
    """Show an ExperimentError as a Dagster Failure whose description is its one sentence."""
    try:
        yield
    except ExperimentError as exc:
        raise dg.Failure(description=str(exc), metadata={EXPERIMENT_REFUSED: True}) from exc


def md_preview(df: pd.DataFrame, columns: list[str] | None = None, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    shown = df[columns] if columns else df
    text = shown.head(rows).to_markdown(index=False) if len(shown) else "_empty_"
    if len(shown) > rows:
        text += f"\n\n… {len(shown) - rows} more rows"
    return dg.MetadataValue.md(text)


def partitioned_asset(**asset_kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` for the partitioned prompt and response assets, which backfills run in batches.

    `backfill_policy` is a beta parameter in Dagster 1.13; batching is how this project runs
    partitions at scale, so its beta warning is known and silenced here, for this call only."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            return dg.asset(backfill_policy=BACKFILL_POLICY, **asset_kwargs)(fn)

    return decorate


def text_preview(text: str, chars: int = 400) -> dg.MetadataValue:
    return dg.MetadataValue.text(text if len(text) <= chars else text[:chars] + " …")


def prompt_metadata(prompt: Prompt) -> dict:
    """What a prompt's materialization records: a preview, its digest (the `prompt_sha256` its
    answer's sidecar will hold) and the digest of every part it was rendered from, by file, which
    `daydream run` compares with today's to say which file made an answer out of date."""
    return {
        "preview": text_preview(prompt.text),
        "prompt_sha256": prompt.sha256,
        "prompt_sources": dg.MetadataValue.json(prompt.sources),
    }


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
    context: dg.AssetExecutionContext,
    values: Mapping[str, Any],
    metadata: Mapping[str, dict],
    versions: Mapping[str, str] | None = None,
) -> dg.Output:
    """The step's output in the run's shape, with each partition's own metadata on its materialization.

    `versions` (a content digest per partition) become Dagster data versions, so a downstream
    partition is stale exactly when what it was built from changed. A run for one partition
    records its partition's digest. A run over a range cannot do that: Dagster 1.13 records one
    data version per output and copies it onto the materialization of every partition of the
    range (see `_get_output_asset_events` in dagster/_core/execution/plan/execute_step.py;
    `add_asset_metadata` is per partition, data versions are not). So a range records the digest
    of all its partitions' digests as their data version, and each partition's own digest in its
    metadata (`data_digest`): a partition re-made in a range looks changed to Dagster whenever
    anything in that range changed. `daydream run` re-makes only partitions whose prompt or
    answer did change (see runner/reruns/changes.py), so every new version it records is a real
    change."""
    if not context.has_partition_key_range:
        ((key, value),) = values.items()
        return versioned_output(value, metadata.get(key, {}), versions[key] if versions else None)
    for key, meta in metadata.items():
        extra = {"data_digest": versions[key]} if versions else {}
        context.add_asset_metadata({**meta, **extra}, partition_key=key)
    return versioned_output(dict(values), {}, range_digest(versions) if versions else None)


def versioned_output(value: Any, metadata: Mapping[str, Any], version: str | None) -> dg.Output:
    """`dg.Output` with a data version. `data_version` is a beta parameter in Dagster 1.13; change
    tracking rests on it, so its beta warning is known and silenced here, for this call only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, metadata=dict(metadata), data_version=dg.DataVersion(version) if version else None)


def range_digest(versions: Mapping[str, str]) -> str:
    """One digest of the digests of every partition of a range."""
    lines = "\n".join(f"{key}={versions[key]}" for key in sorted(versions))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def table_output(df: pd.DataFrame, metadata: Mapping[str, Any]) -> dg.Output:
    """A table asset's output whose data version is a digest of its content: rebuilding a table
    that comes out the same leaves everything built from it fresh in Dagster's eyes."""
    return versioned_output(df, metadata, table_digest(df))


def task_rows(table: pd.DataFrame, column: str, keys: list[str], table_name: str) -> dict[str, pd.Series]:
    """The row of every key (one index lookup for a whole batch); refuses a key the table lacks."""
    indexed = table.drop_duplicates(column).set_index(column, drop=False)
    missing = [k for k in keys if k not in indexed.index]
    if missing:
        raise dg.Failure(
            description=f"{column} '{missing[0]}' is not in {table_name}; it is a stale partition key "
            f"(rematerialize {table_name}, or see the stale-key check)."
        )
    return {k: indexed.loc[k] for k in keys}


def task_row(table: pd.DataFrame, column: str, key: str, table_name: str) -> pd.Series:
    return task_rows(table, column, [key], table_name)[key]
