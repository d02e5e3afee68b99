"""Which models are asked through their provider's batch API, and at what price (pure; no Dagster).

Two optional columns of llm_models.csv decide it:

- `batch`: `yes` (this model's calls always go through the batch API), `no` or empty (live, unless
  the command asks for batch mode: `daydream run --batch`), `never` (its provider has no batch
  endpoint: `--batch` refuses with one sentence before anything is uploaded, so a researcher who
  expects half price is never silently charged the full price);
- `batch_discount`: the batch price as a fraction of the live price (default 0.5, the figure
  OpenAI, Anthropic and Google publish). Plan, cap and `llm_usage` price batched calls with it.

A `--batch` run batches every model except those marked `no`; a run without it batches the `yes`
ones (when there are any, the run is a batch-mode run)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .errors import ExperimentError

DEFAULT_DISCOUNT = 0.5
MODES = {"yes": "yes", "true": "yes", "no": "no", "false": "no", "": "", "never": "never", "unsupported": "never"}


@dataclass(frozen=True)
class BatchChoice:
    """The models whose calls go through the batch API in this run, and each model's batch price factor."""

    batched: frozenset[str] = frozenset()
    discounts: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.batched)

    def factor(self, model_id: str) -> float:
        """The price factor of a batched call of `model_id`."""
        return self.discounts.get(model_id, DEFAULT_DISCOUNT)


def batch_price_factor(provenance: dict) -> float:
    """The share of the list price a paid answer costs: its `batch_price_factor` when it was
    batched, else 1 (store/spend.py reads sidecars the same way; the layers keep it twice)."""
    factor = provenance.get("batch_price_factor")
    number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
    return float(factor) if number and 0 < factor <= 1 else 1.0


def batch_columns(llm_models: pd.DataFrame) -> tuple[dict[str, str], dict[str, float]]:
    """Every model's batch mode ("yes", "no", "", "never") and discount, validated."""
    ids = llm_models["id"].astype(str).tolist()
    raw_modes = llm_models["batch"] if "batch" in llm_models.columns else pd.Series([""] * len(ids))
    raw_discounts = llm_models["batch_discount"] if "batch_discount" in llm_models.columns else pd.Series([""] * len(ids))
    modes, discounts = {}, {}
    for model_id, mode, discount in zip(ids, raw_modes.tolist(), raw_discounts.tolist()):
        text = "" if mode is None or (isinstance(mode, float) and pd.isna(mode)) else str(mode).strip().lower()
        if text not in MODES:
            raise ExperimentError(
                f"llm_models.csv has batch={mode!r} for model {model_id}; write yes, no or never (its provider has no batch API)."
            )
        modes[model_id] = MODES[text]
        blank = discount is None or (isinstance(discount, float) and pd.isna(discount)) or not str(discount).strip()
        try:
            value = DEFAULT_DISCOUNT if blank else float(discount)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            raise ExperimentError(
                f"llm_models.csv has batch_discount={discount!r} for model {model_id}; write the batch price as a "
                "fraction of the live price, above 0 and at most 1 (e.g. 0.5)."
            )
        discounts[model_id] = value
    return modes, discounts


def choose(llm_models: pd.DataFrame, requested: bool, models_called: set[str] | None = None) -> BatchChoice:
    """The batch choice of a run (`requested`: --batch). Raises ExperimentError, before anything
    is uploaded, when --batch would batch a model whose provider has no batch API."""
    modes, discounts = batch_columns(llm_models)
    called = set(modes) if models_called is None else set(models_called) & set(modes)
    if requested:
        never = sorted(m for m in called if modes[m] == "never")
        if never:
            raise ExperimentError(
                f"{', '.join(never)} {'has' if len(never) == 1 else 'have'} no batch API at its provider (batch=never in "
                "llm_models.csv), so nothing was submitted; set batch=no for it to ask it live in a --batch run, or "
                "run without --batch."
            )
        batched = {m for m in called if modes[m] != "no"}
    else:
        batched = {m for m in called if modes[m] == "yes"}
    return BatchChoice(frozenset(batched), discounts)


def batch_prices(prices: pd.DataFrame, choice: BatchChoice) -> pd.DataFrame:
    """`usage.model_prices` with each batched model's prices at its batch price."""
    out = prices.copy()
    factors = out["model_id"].map(lambda m: choice.factor(m) if m in choice.batched else 1.0)
    for column in ("input_usd_per_mtok", "output_usd_per_mtok"):
        out[column] = out[column] * factors
    return out


def batch_wanted(raw_dir) -> bool:
    """Whether the experiment's llm_models.csv sends some model through its batch API even without
    --batch (decided before `daydream run` imports Dagster; a file that cannot be read says no here
    and is reported by the run itself)."""
    from .loaders import load_models

    try:
        return choose(load_models(raw_dir), False).active
    except (ExperimentError, OSError):
        return False
