"""What `daydream run` says about money: it refuses a cap it cannot apply before anything runs,
estimates what the run is about to pay for, compares that with what it paid, and, when the
spending cap stopped it, says in one sentence what was spent, what is left and how to go on."""

from __future__ import annotations

import math

import dagster as dg
import pandas as pd

from ..analysis.budget import price_table, tokens_cost, unpriced_sentence
from ..analysis.estimate import span, text_table, tokens, usd
from ..analysis.usage import model_prices
from ..calls.guard import effective_cap
from ..experiment.batch_choice import batch_prices
from ..experiment.errors import ExperimentError
from ..resources.config import ExperimentConfig
from ..settings import Settings
from ..store.roots import data_path
from ..store.spend import PAID_ASSETS, Tally, paid_tallies
from .plan import Plan, make_plan, spent_so_far

_STAGE_OF = {asset: asset.split("_")[0] for asset in PAID_ASSETS}  # generation_response -> generation


def _per_stage_and_model(tallies: dict[tuple[str, str, str], Tally]) -> dict[tuple[str, str], Tally]:
    out: dict[tuple[str, str], Tally] = {}
    for (asset, model_id, _), tally in tallies.items():
        out.setdefault((_STAGE_OF[asset], model_id), Tally()).add(tally)
    return out


class RunCosts:
    """The money side of one `daydream run`; `max_cost_usd` is its --max-cost (None: the experiment's)."""

    def __init__(self, settings: Settings, max_cost_usd: float | None, instance: dg.DagsterInstance) -> None:
        self.settings = settings
        self.instance = instance
        self.config: ExperimentConfig | None = None
        self.plan: Plan | None = None
        self.before: dict[tuple[str, str], Tally] = {}
        self.run_cap = max_cost_usd
        self.cap: float | None = None
        self.batch = False  # a `daydream run --batch`: its plan prices batched models at their batch price

    def start(self, before: dict | None = None) -> str | None:
        """Estimate the calls this run is about to make; the sentence refusing to start, or None.
        `before`: the paid answers (store/spend.py) before the run's first call, when that came first.

        An invalid experiment gives no estimate here: the runner reports it when it loads."""
        try:
            self.config = ExperimentConfig.for_experiment(str(self.settings.data_root), str(self.settings.output_root))
            self.plan = make_plan(self.config, self.instance, batch=self.batch)
        except ExperimentError:
            return None
        self.cap = effective_cap(self.run_cap, self.config.max_cost_usd, self.settings.offline)
        if self.cap is not None:
            unpriced = self.plan.models_to_call() - set(price_table(model_prices(self.plan.llm_models)))
            if unpriced:
                return unpriced_sentence(unpriced)
        self.before = _per_stage_and_model(before if before is not None else paid_tallies(data_path(self.config.output_root)))
        return None

    def report(self) -> str:
        """The estimate made before the run next to what the run paid for, per stage and model."""
        if self.plan is None:
            return ""
        after = _per_stage_and_model(paid_tallies(data_path(self.config.output_root)))
        made = {}
        for key, tally in after.items():
            tally = tally.copy()
            if key in self.before:
                tally.add(self.before[key], -1)
            if tally.calls:
                made[key] = tally
        if not made and not self.plan.calls:
            return ""
        # Batched models at their batch price, as the plan estimated them.
        prices = price_table(batch_prices(model_prices(self.plan.llm_models), self.plan.batch))
        estimate = self.plan.table.set_index(["stage", "model_id"])
        rows = []
        for key in list(dict.fromkeys([*estimate.index, *made])):
            rows.append(_comparison_row(key, estimate.loc[key] if key in estimate.index else None, made.get(key), prices))
        lines = [
            "Estimate before the run vs what it paid for (tokens as the provider reported them; "
            "* marks a figure outside the estimate's bounds, in rows where every planned call was made):",
            text_table(pd.DataFrame(rows, columns=COMPARISON_COLUMNS)),
        ]
        return "\n".join(lines)

    def cap_stop_sentence(self) -> str:
        """One sentence: what was spent, what is left undone, and how to continue."""
        spent, unknown, _ = spent_so_far(self.config, self.plan.llm_models)
        try:
            left = make_plan(self.config, self.instance)
        except ExperimentError:
            left = None
        undone = ""
        if left is not None:
            counts = " and ".join(f"{len(s.calls)} {s.stage}" for s in left.stages if s.calls) or "no"
            undone = f"; {counts} call(s) are left undone"
            if left.calls and not left.table["cost_usd_high"].isna().any():
                t = left.table
                undone += f" ({span(t.cost_usd_low.sum(), t.cost_usd_expected.sum(), t.cost_usd_high.sum(), usd)} more)"
        flag = "--max-cost" if self.run_cap is not None else "max_cost_usd in 1_raw/experiment.toml"
        return (
            f"Stopped at the spending cap: {usd(spent)} spent under {self.config.output_root} of the "
            f"{usd(self.cap)} cap{undone}; to finish, run again with a higher cap ({flag}): the answers "
            "already paid for are reused, never paid again."
        )


COMPARISON_COLUMNS = [
    "stage", "model", "calls planned", "made",
    "input tokens estimate", "actual", "output tokens estimate", "actual",
    "cost estimate (list prices)", "actual", "provider-reported",
]  # fmt: skip


def _comparison_row(key: tuple[str, str], planned, made: Tally | None, prices: dict) -> list[str]:
    stage, model_id = key
    made = made or Tally()

    def versus(what: str, actual: float, fmt) -> list[str]:
        if planned is None:
            return ["-", fmt(actual)]
        low, expected, high = (float(planned[f"{what}_{b}"]) for b in ("low", "expected", "high"))
        # Bounds are for all the planned calls: a row the cap (or a failure) cut short is not judged.
        judged = made.calls == int(planned["calls"]) and not (math.isnan(low) or math.isnan(actual))
        outside = judged and not (low - 1e-9 <= actual <= high + 1e-9)
        return [span(low, expected, high, fmt), fmt(actual) + (" *" if outside else "")]

    price = prices.get(model_id)
    cost = tokens_cost(made.prompt_tokens, made.completion_tokens, price) if price and not made.calls_without_usage else math.nan
    return [
        stage,
        model_id,
        "-" if planned is None else f"{int(planned['calls']):,}",
        f"{made.calls:,}",
        *versus("input_tokens", made.prompt_tokens, tokens),
        *versus("output_tokens", made.completion_tokens, tokens),
        *versus("cost_usd", cost, usd),
        usd(made.provider_cost_usd) if made.calls_with_provider_cost else "-",
    ]
