"""`daydream plan`: what the experiment will still cost, before a call is paid.

The task tables are built from `1_raw` with the same pure functions the pipeline uses, so a plan
needs no run and always describes the experiment as it is now (a changed `k` or a new judge
shows at once). What is done comes from the Dagster instance (materialized partitions) and the
response store (answers that will be reused); see assets/estimates.py and analysis/estimate.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from ..analysis.budget import price_table
from ..analysis.estimate import basis_lines, estimate, estimate_rows, text_table, totals, usd
from ..analysis.usage import model_prices
from ..assets.estimates import StageCalls, evaluation_calls, generation_calls, stored_samples
from ..calls.guard import spent_usd
from ..experiment.batch_choice import BatchChoice, batch_prices, choose
from ..experiment.loaders import load_concepts, load_models, load_templates
from ..experiment.stages import EVALUATION
from ..experiment.tasks import build_content_combinations, build_evaluation_tasks, build_generation_tasks
from ..instance.opening import open_instance
from ..resources.config import ExperimentConfig
from ..settings import Settings
from ..store.roots import data_path
from ..store.spend import paid_tallies
from .reruns.changes import ChangeCheck, change_report
from .reruns.integrity import Unverified


@dataclass
class Plan:
    """The calls each stage still has to make, and their estimate per stage and model."""

    config: ExperimentConfig
    stages: list[StageCalls]
    table: pd.DataFrame  # analysis.estimate.ESTIMATE_COLUMNS
    llm_models: pd.DataFrame
    include_all: bool
    # Stored answers to a request the experiment no longer makes (see changes.py), what `daydream
    # run` prints about them, and what re-asking them with --replace-changed would cost.
    changes: list[str] = field(default_factory=list)
    replace_calls: int = 0
    replace_table: pd.DataFrame | None = None
    batch: BatchChoice = field(default_factory=BatchChoice)  # the models priced at their batch price

    @property
    def calls(self) -> int:
        return sum(len(s.calls) for s in self.stages)

    def models_to_call(self) -> set[str]:
        return {c["model_id"] for s in self.stages for c in s.calls}


def experiment_tables(config: ExperimentConfig) -> dict[str, pd.DataFrame]:
    """The experiment's task tables, built from 1_raw as the task-table assets build them."""
    raw = config.raw_dir
    models = load_models(raw)
    generation_templates = load_templates(raw, "generation")
    combos = build_content_combinations(load_concepts(raw), config.k, config.description_level)
    generation_tasks = build_generation_tasks(combos, generation_templates, models, config.generation_replicates)
    return {
        "content_combinations": combos,
        "generation_templates": generation_templates,
        "evaluation_templates": (evaluation_templates := load_templates(raw, "evaluation")),
        "llm_models": models,
        "generation_tasks": generation_tasks,
        "evaluation_tasks": build_evaluation_tasks(
            generation_tasks, evaluation_templates, models, config.evaluation_replicates
        ),
    }


def make_plan(
    config: ExperimentConfig, instance: dg.DagsterInstance | None, include_all: bool = False, batch: bool = False
) -> Plan:
    """The calls not made yet (with `include_all`, every call of the experiment) and their estimate,
    batched models (see experiment/batch_choice.py; `batch`: --batch) at their batch price.
    Raises ExperimentError for an invalid experiment."""
    t = experiment_tables(config)
    choice = choose(t["llm_models"], batch)
    prices = batch_prices(model_prices(t["llm_models"]), choice)

    def done(asset: str) -> set[str]:
        if include_all or instance is None:
            return set()
        return instance.get_materialized_partitions(dg.AssetKey(asset))

    check = not include_all
    stages = [
        generation_calls(
            t["generation_tasks"], t["content_combinations"], t["generation_templates"], config,
            done("generation_response"), check,
        ),
        evaluation_calls(
            t["evaluation_tasks"], t["generation_tasks"], t["evaluation_templates"], config,
            done("evaluation_response"), check,
        ),
    ]
    samples = stored_samples(config, t["generation_tasks"]["generation_task_id"].tolist(), t["evaluation_tasks"])
    table = estimate([c for s in stages for c in s.calls], samples, prices)
    plan = Plan(config, stages, table, t["llm_models"], include_all, batch=choice)
    if not include_all:
        _out_of_date(plan, t, instance, samples, prices)
    return plan


def _out_of_date(
    plan: Plan, t: dict[str, pd.DataFrame], instance: dg.DagsterInstance | None, samples: list, prices: pd.DataFrame
) -> None:
    """The out-of-date answers `daydream run` would report, and the calls re-asking them would make:
    each out-of-date generation and pair, and every pair of those generations (their judge prompts
    quote the new answer; estimated from the stored one)."""
    config = plan.config
    checker = ChangeCheck(data_path(config.output_root), config, instance, tables=t)
    generations, evaluations = checker.generations(), checker.evaluations()
    unverified = Unverified.scan(checker.root, t["generation_tasks"]["generation_task_id"], EVALUATION.select(t["evaluation_tasks"]))
    plan.changes = unverified.report() + change_report(generations, evaluations, t["evaluation_tasks"], replace_changed=False)
    if not plan.changes:
        return
    tasks, pairs = t["generation_tasks"], t["evaluation_tasks"]
    keys = EVALUATION.keys(pairs)
    pairs = pairs[keys.isin(evaluations.keys()) | pairs["generation_task_id"].isin(generations.keys())]
    calls = [
        *generation_calls(
            tasks[tasks["generation_task_id"].isin(generations.keys())], t["content_combinations"],
            t["generation_templates"], config, check_stored=False,
        ).calls,
        *evaluation_calls(pairs, tasks, t["evaluation_templates"], config, check_stored=False).calls,
    ]
    plan.replace_calls = len(calls)
    plan.replace_table = estimate(calls, samples, prices)


def spent_so_far(config: ExperimentConfig, llm_models: pd.DataFrame) -> tuple[float, list[str], int]:
    """What every paid answer under the output root cost, the models whose cost is unknown, and
    how many answers were paid."""
    tallies = paid_tallies(data_path(config.output_root))
    total, unknown = spent_usd(tallies, price_table(model_prices(llm_models)))
    return total, unknown, sum(t.calls for t in tallies.values())


def format_plan(plan: Plan, offline: bool) -> str:
    """The plan as `daydream plan` prints it."""
    config = plan.config
    scope = "every call of the experiment" if plan.include_all else "the partitions not materialized yet"
    lines = [f"Plan for {config.data_root} ({scope}; outputs in {config.output_root}):"]
    for stage in plan.stages:
        what = "pairs" if stage.stage == "evaluation" else "tasks"
        line = f"  {stage.stage}: {stage.partitions} {what} -> {len(stage.calls)} call(s)"
        if stage.reused:
            line += f", {stage.reused} stored answer(s) reused at no cost"
        if stage.waiting:
            line += f"; {stage.waiting} judge prompt(s) wait for their generation answer"
        lines.append(line)
    lines += [f"  {line}" for line in plan.changes]
    if plan.replace_calls:
        lines.append(f"  --replace-changed would make {plan.replace_calls} more call(s): {_cost(plan.replace_table)}")
    if not plan.calls:
        lines.append("Nothing to pay for: every call is made (or its stored answer is reused).")
    else:
        lines += ["", text_table(estimate_rows(plan.table)), ""]
        lines.append("Each figure: expected, then (low-high). What they rest on:")
        lines += [f"  {line}" for line in basis_lines(plan.table)]
        if any(s.waiting for s in plan.stages):
            lines.append(
                "  Judge prompts whose generation answer does not exist yet: the template plus an answer as long "
                f"as that generator's stored answers, at most generation_max_tokens ({config.generation_max_tokens})."
            )
    if plan.batch.active:
        batched = ", ".join(f"{m} x{plan.batch.factor(m):g}" for m in sorted(plan.batch.batched))
        lines.append(f"Batch mode: {batched} priced at the batch price (list price x batch_discount).")
    if offline:
        lines.append("Offline backend: these calls are free; the costs are what they would cost against the API.")
    spent, unknown, answers = spent_so_far(config, plan.llm_models)
    if answers:
        known = usd(spent) + (f" + unknown for {', '.join(sorted(set(unknown)))}" if unknown else "")
        lines.append(f"Paid so far under {config.output_root}: {known} for {answers} answer(s).")
    if config.max_cost_usd is not None:
        lines.append(f"Spending cap (max_cost_usd in experiment.toml): {usd(config.max_cost_usd)}.")
    return "\n".join(lines)


def _cost(table: pd.DataFrame) -> str:
    """An estimate's total cost in words: expected (low to high), or why it is unknown."""
    t = totals(table)
    if t["unpriced_models"]:
        return f"cost unknown (no price for {', '.join(t['unpriced_models'])} in llm_models.csv)"
    return f"{usd(t['cost_usd_expected'])} expected ({usd(t['cost_usd_low'])} to {usd(t['cost_usd_high'])})"


def run_plan(settings: Settings, include_all: bool, batch: bool = False) -> str:
    """The text of `daydream plan` for the settings in the environment (DAGSTER_HOME's instance)."""
    config = ExperimentConfig.for_experiment(str(settings.data_root), str(settings.output_root))
    instance = open_instance() if os.environ.get("DAGSTER_HOME") else None
    return format_plan(make_plan(config, instance, include_all, batch), settings.offline)
