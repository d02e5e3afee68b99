"""The project's files under the output root: their layout, atomic locked writes, the write-once
archive of paid responses, and a cached CSV reader.

May import the standard library (and pandas, in `tables` only); never Dagster or the LLM layer."""
