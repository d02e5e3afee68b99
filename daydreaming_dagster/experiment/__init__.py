"""Reading the experiment: the folder `1_raw/` into validated tables, ids, prompt rendering in a
sandbox, the task tables, the valid evaluation pairs, and the experiment's settings with the
request each task makes.

Pure functions. May import the standard library, pandas, jinja2 and pydantic, `llm.requests` (the
request a task makes) and `store.roots` (where the folder lives); never Dagster. Every problem is an
ExperimentError with one sentence naming the file and the row."""
