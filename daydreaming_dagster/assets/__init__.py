"""The assets, one module per asset group: `raw_data`, `core` (group `task_definitions`),
`llm_generation`, `llm_evaluation`, `results` (and, in the same group, `reliability`, the replicate
tables, and `report`, the HTML report); `partitions` holds the partition definitions, and `common`
and `responding` the helpers they share.

Thin: each asset fetches its inputs, calls pure functions of `experiment`, `analysis` and `report`,
and returns the value with metadata. May import every layer below it (experiment, llm, store,
analysis, report) and `resources`; never `orchestration`."""
