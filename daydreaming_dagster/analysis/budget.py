"""The spending cap's arithmetic and wording: what paid answers cost, the worst case of a call about
to start, and the sentences a cap refuses with (pure functions of numbers and the price table).

A paid answer costs what the provider reported for it (OpenRouter's `usage.cost`) when it did,
else its tokens at the llm_models.csv prices; the offline backend costs nothing. A model without
both prices has an unknown cost, never 0, and a cap cannot bound its calls."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from .estimate import CALIBRATION_MARGIN, DEFAULT_CHARS_PER_TOKEN, usd, worst_case_input_tokens

Price = tuple[float, float]  # USD per million input tokens, per million output tokens


def price_table(prices: pd.DataFrame) -> dict[str, Price]:
    """The models of `usage.model_prices` that have both prices."""
    known = prices.dropna(subset=["input_usd_per_mtok", "output_usd_per_mtok"])
    return {
        str(m): (float(i), float(o))
        for m, i, o in zip(known["model_id"], known["input_usd_per_mtok"], known["output_usd_per_mtok"])
    }


def tokens_cost(prompt_tokens: float, completion_tokens: float, price: Price) -> float:
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def paid_cost(
    model_id: str,
    backend: str,
    provider_cost_usd: float,
    unreported_calls: int,
    unreported_prompt_tokens: int,
    unreported_completion_tokens: int,
    unreported_without_usage: int,
    prices: dict[str, Price],
) -> float | None:
    """What some paid answers of one model cost: the provider-reported part, plus the answers whose
    provider reported no cost at the table's prices. None when that part cannot be known (the
    model has no price, or an answer has no token usage)."""
    if backend == "offline":
        return 0.0
    if not unreported_calls:
        return provider_cost_usd
    price = prices.get(model_id)
    if price is None or unreported_without_usage:
        return None
    return provider_cost_usd + tokens_cost(unreported_prompt_tokens, unreported_completion_tokens, price)


def answer_cost(provenance: dict, price: Price | None) -> float | None:
    """What one paid answer cost: the provider-reported cost when there is one, else its tokens at
    `price` (None when neither is known)."""
    reported = provenance.get("provider_cost_usd")
    if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported >= 0:
        return float(reported)
    prompt, completion = provenance.get("prompt_tokens"), provenance.get("completion_tokens")
    if price is None or not all(isinstance(t, int) and not isinstance(t, bool) for t in (prompt, completion)):
        return None
    return tokens_cost(prompt, completion, price)


def worst_case_usd(prompt_chars: int, max_tokens: int, price: Price, min_chars_per_token: float | None) -> float:
    """The most a call can cost at the table's prices: its prompt at the fewest characters per token
    seen for the model (or the default floor, whichever is lower) and an answer of `max_tokens`."""
    floor = DEFAULT_CHARS_PER_TOKEN.low
    if min_chars_per_token:
        floor = min(floor, min_chars_per_token / (1 + CALIBRATION_MARGIN))
    return tokens_cost(worst_case_input_tokens(prompt_chars, floor), max_tokens, price)


def _names(models: Iterable[str]) -> str:
    models = sorted(set(models))
    return ", ".join(models[:5]) + (f" and {len(models) - 5} more" if len(models) > 5 else "")


HOW_TO_RAISE = (
    "raise the cap to continue (`daydream run --max-cost USD`, max_cost_usd in 1_raw/experiment.toml, "
    "or max_cost_usd in the response asset's run config)"
)


def unpriced_sentence(models: Iterable[str]) -> str:
    """The cap refuses calls of models whose cost it cannot bound."""
    models = sorted(set(models))
    have = "has" if len(models) == 1 else "have"
    return (
        f"{_names(models)} {have} no price in llm_models.csv (input_usd_per_mtok and output_usd_per_mtok), "
        "so a spending cap cannot bound the cost of its calls; add both prices, or run without a cap."
    )


def unknown_spend_sentence(models: Iterable[str], cap: float) -> str:
    """Paid answers whose cost is unknown make the spent total unknown."""
    return (
        f"paid answers of {_names(models)} have no known cost (no price in llm_models.csv and none "
        f"reported by the provider), so what was spent cannot be checked against the {usd(cap)} cap; "
        "add the price(s) to llm_models.csv, or run without a cap."
    )


def cap_sentence(model_id: str, worst: float, spent: float, in_flight: float, cap: float) -> str:
    """A call is not started: its worst case on top of the spent total and the calls in flight would
    pass the cap."""
    flight = f" and {usd(in_flight)} in flight at worst case" if in_flight > 0 else ""
    return (
        f"spending cap reached: {usd(spent)} spent{flight}, and a {model_id} call may cost up to "
        f"{usd(worst)}, which could pass the {usd(cap)} cap, so it was not started; {HOW_TO_RAISE}."
    )
