"""The partition definitions, nothing else (see DESIGN.md, "Partitions")."""

import dagster as dg

generation_tasks_partitions = dg.DynamicPartitionsDefinition(name="generation_tasks")
# The evaluation_tasks dimension holds evaluation *methods* (template x judge model); a pair of
# (generation task, method) is one evaluation task, and the multi-partition key is that pair.
evaluation_tasks_partitions = dg.DynamicPartitionsDefinition(name="evaluation_tasks")

evaluation_pairs_partitions = dg.MultiPartitionsDefinition(
    {
        "generation_tasks": generation_tasks_partitions,
        "evaluation_tasks": evaluation_tasks_partitions,
    }
)
