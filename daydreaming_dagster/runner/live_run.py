"""`daydream run` (`run_command`): batch mode, or the live run (`run_live`): the experiment's calls
made live, streamed through the command's worker pool (runner.py), then the run's summary, its
cost against the estimate, and where the results are."""

from __future__ import annotations

import argparse
import os
import sys

from ..experiment.errors import ExperimentError
from ..instance.opening import open_instance
from ..settings import Settings
from .executor.head_start import HeadStart, wanted
from .executor.pool import WorkerPool


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """`daydream run` once its settings are checked: batch mode or a live run, on a worker pool
    (and, live against an API, after a head start), each started before anything heavy is imported."""
    from ..experiment.batch_choice import batch_wanted
    from ..llm.slots import share_call_slots
    from .executor.pool import default_workers, start_pool

    workers = args.workers or default_workers(args.concurrency, settings.offline)
    batch = args.batch or (not settings.offline and batch_wanted(settings.data_root / "1_raw"))
    head_start = HeadStart(settings, args.concurrency, args.max_cost) if not batch and wanted(settings, args.replace_changed) else None
    # Started before this process imports anything heavy (Dagster, pandas, the batch client): the
    # workers load the code location meanwhile, batch mode's as well as a live run's.
    pool = start_pool(workers, args.concurrency, settings.offline) if workers > 1 else None
    if head_start is not None:
        # Its calls take the call slots the workers share (see llm/slots.py).
        share_call_slots(pool.initargs[0] if pool is not None else None)
        head_start.start()
    try:
        if batch:
            from .batch_mode import run_batch

            return run_batch(args, settings, pool)
        return run_live(args, settings, workers, pool, head_start)
    finally:
        if head_start is not None:
            head_start.close()  # its calls in flight are paid for: their answers are stored first
        if pool is not None:
            pool.close()  # the runner closed it already, unless the command stopped before it started


def run_live(
    args: argparse.Namespace, settings: Settings, workers: int, pool: WorkerPool | None, head_start: HeadStart | None = None
) -> int:
    """The live run on `pool` (None: one process), after `head_start` when there is one; the exit
    status (0, 1 when a partition failed, 2 refused, 3 stopped by the spending cap)."""
    backend = "offline backend" if settings.offline else f"{settings.base_url}"
    print(
        f"experiment {settings.data_root} -> {settings.output_root} ({backend}); "
        f"Dagster instance {os.environ['DAGSTER_HOME']}",
        file=sys.stderr,
        flush=True,
    )
    # The instance before the rest of Dagster's machinery: once it has opened (a misconfigured one
    # fails here, before any call), the head start may call.
    instance = open_instance()
    if head_start is not None:
        head_start.go()
    from .executor.runner import Runner, print_progress
    from .run_costs import RunCosts

    runner = Runner(
        settings.output_root,
        args.concurrency,
        args.replace_changed,
        print_progress,
        workers=workers,
        max_batch=args.batch_size,
        data_root=settings.data_root,
        max_cost_usd=args.max_cost,
        offline=settings.offline,
        pool=pool,
        head_start=head_start,
        instance=instance,
    )
    costs = RunCosts(settings, args.max_cost, runner.instance)
    refusal = costs.start(head_start.paid_before() if head_start is not None else None)
    if refusal:
        runner.close()
        print(refusal, file=sys.stderr)
        return 2
    invalid = None
    try:
        reports = runner.run()
    except ExperimentError as exc:  # the experiment config, found invalid when the code location loads
        invalid = str(exc)
    finally:
        runner.close()
    if invalid:
        print(invalid, file=sys.stderr)  # after what closing the runner prints: the sentence ends the output
        return 2
    # The summary and the money first; what went wrong last, so a failed run ends with its sentence.
    print(", ".join(r.summary() for r in reports))
    if comparison := costs.report():
        print(comparison)
    sys.stdout.flush()
    failures = [(report.name, key, error) for report in reports for key, error in report.failures.items()]
    for name, key, error in failures[:20]:
        print(f"{name} {key}: {error}", file=sys.stderr)
    if len(failures) > 20:
        print(f"... and {len(failures) - 20} more failed partitions (the Dagster UI shows each).", file=sys.stderr)
    stopped = next((r.stopped for r in reports if r.stopped), None)
    if stopped:
        print(f"{stopped.rstrip('.')}; so nothing more was asked, and a rerun once that is fixed reuses "
              "every answer stored.", file=sys.stderr)
        return 1
    if invalid := next((r.invalid for r in reports if r.invalid), None):
        # An invalid experiment, found inside a run (a table, a template): its sentence ends the output.
        print(invalid, file=sys.stderr)
        return 2
    if any(r.cap_reached for r in reports):
        print(costs.cap_stop_sentence(), file=sys.stderr)
        return 3
    if not failures:
        print(f"results: {settings.output_root / '5_results'}")
        print(f"report: {settings.output_root / '5_results' / 'report.html'} (open it in a browser)")
    return 1 if failures else 0
