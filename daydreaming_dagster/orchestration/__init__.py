"""Orchestration: running the assets on a Dagster instance. `daydream run`'s stage loop, worker pool,
freshness checks and out-of-date answers (`changes`), batches of partitions, backfill submission,
the sensor, and the instance's pooled SQLite storage.

The top layer: may import every other package and `definitions`. Only here and in `compat` does
the project touch Dagster's instance and run machinery beyond assets and resources."""
