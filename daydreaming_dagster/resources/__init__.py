"""Dagster resources: the typed experiment config, the LLM client, the paid-response archive and the
two IO managers (text files and CSV tables). Thin wrappers over `llm` and `store`; may import
those and `experiment`, never `assets` or `orchestration`."""
