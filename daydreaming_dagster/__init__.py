"""daydreaming_dagster: a Dagster code location that runs LLM concept-combination experiments as
partitioned, lineage-tracked assets. `definitions.defs` is the code location; `cli` is `daydream`."""
