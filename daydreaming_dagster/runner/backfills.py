"""Submitting one Dagster backfill for exactly the valid evaluation pairs (the UI's Backfills page shows it)."""

import time
from pathlib import Path

import dagster as dg

from ..compat import PartitionBackfill, make_new_backfill_id
from ..experiment.errors import invalid_pair_message

EVALUATION_ASSETS = [dg.AssetKey("evaluation_prompt"), dg.AssetKey("evaluation_response")]


def check_pairs(requested: list[str], valid: set[str], evaluation_tasks_csv: Path | str) -> None:
    """Refuse, before anything runs, pairs the evaluation_tasks table (at `evaluation_tasks_csv`) does not list."""
    for key in requested:
        if key not in valid:
            raise ValueError(invalid_pair_message(key, evaluation_tasks_csv))


def submit_pair_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    pair_keys: list[str],
    title: str | None = None,
    run_config: dict | None = None,
) -> str:
    """Add a backfill of evaluation_prompt + evaluation_response for `pair_keys`; returns its id.

    The daemon (`dagster dev`) executes it, one run per pair, within the instance's run and pool limits."""
    if not pair_keys:
        raise ValueError("there are no pairs to backfill.")
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=defs.resolve_asset_graph(),
        partition_names=pair_keys,
        asset_selection=EVALUATION_ASSETS,
        backfill_timestamp=time.time(),
        tags={"daydream/source": "daydream backfill"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title or f"daydream: {len(pair_keys)} valid evaluation pairs",
        description="Submitted by `daydream backfill` from the evaluation_tasks table.",
        run_config=run_config,
    )
    instance.add_backfill(backfill)
    return backfill_id
