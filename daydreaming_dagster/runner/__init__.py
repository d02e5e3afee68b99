"""The runner, on top of everything: the `daydream` command line (cli), `daydream run` (live_run, and
batch_mode for provider batches), the cost commands (plan, run_costs) and backfill submission; the
fast executor that runs the code location's assets on worker processes (executor/); and what a
rerun may skip or must re-ask (reruns/).

May import every other part of the package; nothing imports it."""
