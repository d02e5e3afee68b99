"""Paid calls: the one engine that turns requests into stored answers (reuse a stored answer, claim,
admit under the spending cap, call, store write-once, settle, release), the spending guard it admits
calls with, and provider batches, which submit and collect through the same claims and store.

Free of Dagster. May import the standard library, `experiment`, `llm`, `store` and `analysis`; the
response assets, `daydream run`'s head start and batch mode all call in here."""
