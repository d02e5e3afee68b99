"""Reading the experiment: the folder `1_raw/` into validated tables, ids, prompt rendering, the
task tables and the valid evaluation pairs.

Pure functions. May import the standard library, pandas and jinja2; never Dagster, the LLM layer
or the store. Every problem is an ExperimentError with one sentence naming the file and the row."""
