"""The project's files under the output root: their layout, atomic locked writes, the write-once
archive of paid answers and its claims, what was paid and what is in flight under a spending cap,
the ledger of provider batches, and a cached CSV reader.

May import the standard library, `llm.requests` (the request an answer answers), boto3 for an
s3:// root and pandas (in `csv_tables` only); never Dagster or anything above it.
"""
