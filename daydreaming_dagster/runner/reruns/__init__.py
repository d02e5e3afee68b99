"""What a rerun of `daydream run` may skip and what it must re-ask: freshness of the task tables and
results, stored answers gone out of date (changes) or no longer matching their sidecars (integrity),
and the partitions other runs are materializing right now (overlap)."""
