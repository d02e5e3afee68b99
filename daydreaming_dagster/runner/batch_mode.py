"""`daydream run --batch [--wait]` and `daydream batches`: the experiment through provider batch APIs.

A batch-mode run goes in rounds. Each round: look at the open batches and store the answers of
those that finished (batch_collect.py); submit the generations still missing (batch_submit.py);
materialize every generation that is not in an open batch (a stored batch answer is reused
without a call; a model not batched is asked live); then the same for the evaluation pairs whose
generation is materialized. Without --wait that is one round: the batches answer later, and the
`batches_collect` sensor or the next `daydream run --batch` picks them up. With --wait it prints
progress while batches are open and goes round again as each finishes, so an experiment is two
rounds (generations, then their evaluations) plus any re-asks, then builds the results."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..analysis.budget import price_table
from ..analysis.estimate import usd
from ..analysis.usage import model_prices
from ..calls.batch_collect import cancel, look
from ..calls.batch_submit import BatchRefused, Submitter, evaluation_asks, generation_asks
from ..calls.guard import effective_cap
from ..experiment.batch_choice import BatchChoice, choose
from ..experiment.errors import ExperimentError
from ..experiment.loaders import load_models
from ..experiment.stages import EVALUATION, STAGES
from ..llm.batch_backend import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE, OpenAIBatchBackend
from ..llm.requests import LLMError
from ..resources.config import ExperimentConfig
from ..settings import Settings
from ..store.archive import Archive
from ..store.batch_ledger import BatchLedger
from ..store.csv_tables import read_table
from ..store.layout import table_path
from .executor.runner import Runner, StageReport, default_workers, print_progress
from .executor.worker import load_worker
from .reruns.freshness import (
    TABLES_FINGERPRINT_TAG,
    UNVERIFIED_TAG,
    results_current,
    tables_current,
    tables_fingerprint,
)
from .reruns.integrity import Unverified
from .run_costs import RunCosts

DEFAULT_POLL_S = 30.0


def poll_s() -> float:
    """Seconds between two looks at the open batches (DAYDREAM_BATCH_POLL_S; tests shorten it)."""
    return float(os.environ.get("DAYDREAM_BATCH_POLL_S") or DEFAULT_POLL_S)



def batch_backend(settings: Settings) -> OpenAIBatchBackend:
    """The batch client for the API live calls use (same base URL and key); file limits may be
    lowered with DAYDREAM_BATCH_MAX_REQUESTS / DAYDREAM_BATCH_MAX_BYTES."""
    return OpenAIBatchBackend(
        os.environ.get("OPENROUTER_API_KEY"),
        settings.base_url,
        max_requests=int(os.environ.get("DAYDREAM_BATCH_MAX_REQUESTS", MAX_REQUESTS_PER_FILE)),
        max_bytes=int(os.environ.get("DAYDREAM_BATCH_MAX_BYTES", MAX_BYTES_PER_FILE)),
    )


def run_batch(args: argparse.Namespace, settings: Settings, pool=None) -> int:
    """`daydream run` in batch mode, on the command's worker `pool` if it started one; the exit status."""

    if settings.offline:
        print("the offline backend has no batch API; run --offline without --batch.", file=sys.stderr)
        return 2
    if args.replace_changed:
        print("--replace-changed asks live; run it without --batch (batch mode never replaces a stored answer).",
              file=sys.stderr)
        return 2
    try:
        config = ExperimentConfig.for_experiment(str(settings.data_root), str(settings.output_root))
        models = load_models(config.raw_dir)
        called = set(models.loc[models["for_generation"] | models["for_evaluation"], "id"])
        choice = choose(models, args.batch, called)
        prices = price_table(model_prices(models))
    except ExperimentError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    backend = batch_backend(settings)
    try:
        backend.check_ready()
    except LLMError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print_progress(f"batch mode: {', '.join(sorted(choice.batched))} through {settings.base_url}/batches; "
                   f"Dagster instance {os.environ['DAGSTER_HOME']}")
    runner = Runner(
        settings.output_root, args.concurrency, False, print_progress,
        workers=args.workers or default_workers(args.concurrency, settings.offline),
        max_batch=args.batch_size, data_root=settings.data_root, max_cost_usd=args.max_cost, pool=pool,
    )
    costs = RunCosts(settings, args.max_cost, runner.instance)
    costs.batch = args.batch
    try:
        refusal = costs.start()
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
        store = Archive.at(str(settings.output_root))
        cap = effective_cap(args.max_cost, config.max_cost_usd)
        submitter = Submitter(backend, store, choice, prices, cap, print_progress)
        if not args.wait:
            submitter.then_evaluate = {"judges": sorted(choice.batched), "discounts": choice.discounts}
        rounds = Rounds(runner, config, submitter, store, choice, args.retry_live)
        reports = rounds.run(args.wait)
    except (BatchRefused, LLMError, ExperimentError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        runner.close()
        backend.close()
    failed = [r for r in reports if r.failures]
    for report in failed:
        for key, error in list(report.failures.items())[:20]:
            print(f"{report.name} {key}: {error}", file=sys.stderr)
    if summary := ", ".join(r.summary() for r in reports if r.total):
        print(summary)
    open_now = BatchLedger(settings.output_root).open_records()
    if not open_now and (comparison := costs.report()):  # while batches are open it would compare with nothing
        print(comparison)
    if open_now:
        print(f"{len(open_now)} batch(es) still open: `daydream batches` lists them; the batches_collect sensor "
              "or `daydream run --batch` collects them when they finish.")
    elif not failed:
        print(f"results: {settings.output_root / '5_results'}")
    return 1 if failed else 0


class Rounds:
    """The rounds of one batch-mode run (see the module docstring)."""

    def __init__(self, runner, config: ExperimentConfig, submitter: Submitter, store: Archive,
                 choice: BatchChoice, retry_live: bool) -> None:
        self.runner, self.config, self.submitter, self.store = runner, config, submitter, store
        self.choice = choice
        self.retry_live = retry_live
        self.live_again: dict[str, set[str]] = {"generation_response": set(), "evaluation_response": set()}
        self.ledger = BatchLedger(store.base_path)
        self.stages = {}

    def run(self, wait: bool) -> list:
        runner = self.runner
        fingerprint = tables_fingerprint(runner.data_root)
        reports = []
        if not tables_current(runner.instance, fingerprint):
            load_worker()
            reports.append(runner.run_single("task_tables", {TABLES_FINGERPRINT_TAG: fingerprint},
                                             lambda: tables_current(runner.instance, fingerprint)))
            if reports[-1].failures:
                return reports
        # Before anything is decided; batch mode never replaces a stored answer, so the set stays.
        left_out = self.unverified().fingerprint()
        while True:
            seen = look(self.submitter.backend, self.store, runner.progress)
            if self.retry_live:
                for asset, keys in seen.again.items():
                    self.live_again[asset] |= set(keys)
            self.round()
            if not wait or not self.ledger.open_records():
                break
            self.wait_for_one()
        reports += [r for r in self.stages.values()]
        if not self.ledger.open_records():
            if results_current(runner.instance, left_out):
                reports.append(StageReport("results", total=1, skipped=1))
            else:
                reports.append(runner.run_single("results", {UNVERIFIED_TAG: left_out},
                                                 lambda: results_current(runner.instance, left_out)))
        return reports

    def unverified(self) -> Unverified:
        """The stored answers that do not match their sidecars (integrity.py), each said in the run's output."""
        root = Path(self.config.output_root)
        keys = read_table(table_path(root, "generation_tasks"))["generation_task_id"].tolist()
        found = Unverified.scan(root, keys, EVALUATION.select(read_table(table_path(root, "evaluation_tasks"))))
        for line in found.report():
            self.runner.progress(line)
        return found

    def round(self) -> None:
        runner, root = self.runner, Path(self.config.output_root)
        keys = read_table(table_path(root, "generation_tasks"))["generation_task_id"].tolist()
        done = runner.materialized("generation_response")
        missing = [k for k in keys if k not in done]
        again = self.live_again["generation_response"]
        self.submitter.submit("generation_response", [a for a in generation_asks(self.config, missing) if a.key not in again])
        self._materialize("generation", missing, done)

        pairs = read_table(table_path(root, "evaluation_tasks"))
        generated = runner.materialized("generation_response")
        pair_done = runner.materialized("evaluation_response")
        ready_keys = EVALUATION.ready(pairs, generated, exclude=pair_done)
        ready = pairs[EVALUATION.keys(pairs).isin(set(ready_keys))]
        again = self.live_again["evaluation_response"]
        asks = [a for a in evaluation_asks(self.config, ready) if a.key not in again]
        self.submitter.submit("evaluation_response", asks)
        self._materialize("evaluation", ready_keys, pair_done)

    def _materialize(self, job: str, keys: list[str], done: set[str]) -> None:
        """Run the stage over `keys` that no open batch holds: stored answers are reused, models
        not batched (and --retry-live re-asks) are asked live."""
        held = BatchLedger(self.config.output_root).held_keys(STAGES[job].response)
        todo = [k for k in keys if k not in held and k not in done]
        if not todo:
            return
        report = self.runner.run_partitions(job, todo, done)
        total = self.stages.setdefault(job, type(report)(job))
        total.total += report.total
        total.succeeded += report.succeeded
        total.failures.update(report.failures)
        total.seconds += report.seconds
        total.left += report.left

    def wait_for_one(self) -> None:
        """Poll until a batch finishes (or none is open), printing progress while batches are open."""
        last = ""
        while True:
            time.sleep(poll_s())
            seen = look(self.submitter.backend, self.store, self.runner.progress)
            if seen.finished or not seen.open:
                if self.retry_live:
                    for asset, keys in seen.again.items():
                        self.live_again[asset] |= set(keys)
                return
            done, total = seen.requests_open
            line = f"batches: {len(seen.open)} open, {done}/{total} request(s) done"
            if line != last:
                self.runner.progress(line)
                last = line


def list_batches(settings: Settings, cancel_id: str | None, show_all: bool) -> int:
    """`daydream batches`: the open batches (every batch with --all), or cancel one."""
    store = Archive.at(str(settings.output_root))
    backend = batch_backend(settings)
    try:
        if cancel_id:
            print(cancel(backend, store, cancel_id))
            return 0
        seen = look(backend, store, lambda line: print(line, file=sys.stderr))
        rows = [(r, s) for r, s in seen.open]
        if show_all:
            opened = {r["submission"] for r, _ in rows}
            rows += [(r, None) for r in BatchLedger(store.base_path).records() if r["submission"] not in opened]
        print(format_batches(rows))
    except LLMError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        backend.close()
    return 0


def format_batches(rows) -> str:
    """One line per batch: id, asset, model, requests done/failed/total, age, state, cost at worst case."""
    if not rows:
        return "no open batch."
    lines = [f"{'batch':<34} {'asset':<20} {'model':<18} {'done/failed/total':>17} {'age':>7}  {'state':<10} cost (worst case)"]
    now = time.time()
    for record, state in rows:
        total = len(record.get("items", {}))
        if state is not None:
            done, failed = state.completed, state.failed
        else:
            failed = len(record.get("errors", {}))
            done = record.get("answered", 0)
        age = _age(now - float(record.get("submitted") or record.get("created") or now))
        worst = record.get("worst_usd")
        lines.append(
            f"{record.get('batch_id') or record['submission']:<34} {record['asset']:<20} {record['model_id']:<18} "
            f"{f'{done}/{failed}/{total}':>17} {age:>7}  {(state.status if state else record['state']):<10} "
            f"{usd(worst) if worst is not None else 'unknown (no price)'}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
