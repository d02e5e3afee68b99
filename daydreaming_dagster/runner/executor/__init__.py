"""`daydream run`'s fast executor: the head start (generations asked while Dagster loads), the stream
of partition-range runs (schedule, streaming, ranges), and the worker processes that execute them
(pool, forkserver, worker, worker_instance)."""
