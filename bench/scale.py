"""Benchmark 3 (scale): task tables + key registration, listing valid pairs, one sensor tick,
submitting the valid-pairs backfill, and loading Definitions, at ~2,000 x 6 and ~10,000 x 10.

Each operation runs in a fresh process; the figures are the operation's own wall time and the
process's peak RSS (which includes ~250 MB for importing Dagster and pandas).

    uv run python bench/scale.py [--sizes small,large]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import fresh_home, machine, run_measured, write_synthetic_experiment

# (concepts, k, generation templates, generators, evaluation templates, judges)
SIZES = {
    "small": (64, 2, 1, 1, 2, 3),  # C(64,2)=2,016 generation tasks x 6 methods = 12,096 pairs
    "large": (142, 2, 1, 1, 2, 5),  # C(142,2)=10,011 generation tasks x 10 methods = 100,110 pairs
}

PRELUDE = """
import os, time
import dagster as dg
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.settings import Settings
settings = Settings.from_env()
defs = build_definitions(settings)
instance = dg.DagsterInstance.get()
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import table_path
"""

OPERATIONS = {
    "load Definitions": """
t = time.perf_counter()
import daydreaming_dagster.definitions as d
d.defs().resolve_asset_graph()
RESULT = {"op_s": time.perf_counter() - t}
""",
    "task tables + register keys": PRELUDE
    + """
t = time.perf_counter()
result = defs.resolve_job_def("task_tables").execute_in_process(instance=instance, run_config=quiet)
assert result.success
RESULT = {"op_s": time.perf_counter() - t,
          "generation_keys": len(instance.get_dynamic_partitions("generation_tasks")),
          "method_keys": len(instance.get_dynamic_partitions("evaluation_tasks"))}
""",
    "list valid pairs": PRELUDE
    + """
from daydreaming_dagster.experiment.stages import EVALUATION
t = time.perf_counter()
keys = EVALUATION.select(read_table(table_path(settings.output_root, "evaluation_tasks")),
                       exclude=instance.get_materialized_partitions(dg.AssetKey("evaluation_response")))
RESULT = {"op_s": time.perf_counter() - t, "pairs": len(keys)}
""",
    "one sensor tick (all generations new)": PRELUDE
    + """
from daydreaming_dagster.compat import CachingDynamicPartitionsLoader
sensor = defs.resolve_sensor_def("evaluations_follow_generations")
t = time.perf_counter()
with dg.build_sensor_context(instance=instance, resources={"experiment_config": defs.resources["experiment_config"]},
                             repository_def=defs.get_repository_def()) as context:
    # The code server evaluates ticks with a caching loader over the instance (instance_ref set).
    with dg.partition_loading_context(dynamic_partitions_store=CachingDynamicPartitionsLoader(instance)):
        tick = sensor.evaluate_tick(context)
RESULT = {"op_s": time.perf_counter() - t, "run_requests": len(tick.run_requests or [])}
""",
    "submit valid-pairs backfill": PRELUDE
    + """
from daydreaming_dagster.runner.backfills import submit_pair_backfill
from daydreaming_dagster.experiment.stages import EVALUATION
keys = EVALUATION.select(read_table(table_path(settings.output_root, "evaluation_tasks")))
t = time.perf_counter()
backfill_id = submit_pair_backfill(instance, defs, keys)
RESULT = {"op_s": time.perf_counter() - t, "pairs": len(keys)}
""",
}

MARK_GENERATIONS = PRELUDE + """
keys = read_table(table_path(settings.output_root, "generation_tasks"))["generation_task_id"].tolist()
for k in keys:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="generation_response", partition=k))
RESULT = {"marked": len(keys)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="small,large")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            root = write_synthetic_experiment(Path(tmp) / "data", *SIZES[size])
            home = fresh_home(Path(tmp) / "home")
            env = {"DAGSTER_HOME": str(home), "DAYDREAM_DATA_ROOT": str(root), "DAYDREAM_BACKEND": "offline"}
            print(f"\n{size}:")
            for name, code in OPERATIONS.items():
                if name.startswith("one sensor tick"):
                    run_measured(MARK_GENERATIONS, env)  # setup, not measured: every generation materialized
                r = run_measured(code, env)
                extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in {"op_s", "process_wall_s", "cpu_s", "peak_rss_mb", "outer_wall_s"})
                print(f"  {name:40s} {r['op_s']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   {extra}", flush=True)


if __name__ == "__main__":
    main()
