"""What the calls still to make will cost: calls, input tokens, output tokens and cost per stage and
model, each as an expected figure between a low and a high bound (pure functions of tables).

No tokenizer: a prompt's tokens are its characters divided by the model's characters per token,
calibrated from the `prompt_tokens` the provider reported for stored answers (a default range
until there are any). Output tokens come from the stored answers of that model and stage, and are
never more than `max_tokens`. A judge prompt whose generation answer does not exist yet is the
template plus an answer of unknown length: as long as the stored answers of that generator
suggest, and at most its `max_tokens`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

# One row per call to make. A call with a known prompt has `prompt_chars`; a judge call whose
# generation answer is not there yet has NaN there, and its prompt is `base_chars` plus
# `repeats` times an answer of `answer_model_id` (at most `answer_max_tokens` tokens).
CALL_COLUMNS = [
    "stage",
    "model_id",
    "max_tokens",
    "prompt_chars",
    "base_chars",
    "repeats",
    "answer_model_id",
    "answer_max_tokens",
]
# One row per stored answer that calibrates the estimate (any field may be NaN).
SAMPLE_COLUMNS = ["stage", "model_id", "prompt_chars", "prompt_tokens", "completion_tokens", "answer_chars"]
STAGES = ("generation", "evaluation")
ESTIMATE_COLUMNS = [
    "stage",
    "model_id",
    "calls",
    *(f"{what}_{bound}" for what in ("input_tokens", "output_tokens", "cost_usd") for bound in ("low", "expected", "high")),
    "chars_per_token",
    "chars_per_token_basis",
    "output_basis",
]
# Chat formatting the provider counts around the prompt: a few tokens; only the high bound adds it.
MESSAGE_OVERHEAD_TOKENS = 8
# Calibrated bounds reach this fraction beyond the most extreme stored answer.
CALIBRATION_MARGIN = 0.10


@dataclass(frozen=True)
class CharsPerToken:
    """How many characters one token of a model stands for: expected, and the bounds. `samples` is
    the number of stored answers it was calibrated from (0: the default)."""

    low: float
    expected: float
    high: float
    samples: int = 0

    @property
    def basis(self) -> str:
        if not self.samples:
            return f"default {self.expected:g} ({self.low:g}-{self.high:g})"
        return f"calibrated {self.expected:.2f} ({self.low:.2f}-{self.high:.2f}) from {self.samples} answer(s)"


# English prose is about 4 characters per token with the common tokenizers; code and other
# scripts go lower, long words higher.
DEFAULT_CHARS_PER_TOKEN = CharsPerToken(low=2.0, expected=4.0, high=8.0)


def calibrate(chars: Iterable[float], tokens: Iterable[float]) -> CharsPerToken:
    """Characters per token from (characters, tokens) pairs; the default when there is no usable pair."""
    pairs = [(float(c), float(t)) for c, t in zip(chars, tokens) if _positive(c) and _positive(t)]
    if not pairs:
        return DEFAULT_CHARS_PER_TOKEN
    ratios = [c / t for c, t in pairs]
    return CharsPerToken(
        low=min(ratios) / (1 + CALIBRATION_MARGIN),
        expected=sum(c for c, _ in pairs) / sum(t for _, t in pairs),
        high=max(ratios) * (1 + CALIBRATION_MARGIN),
        samples=len(pairs),
    )


def _positive(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and float(value) > 0


def worst_case_input_tokens(prompt_chars: int, chars_per_token_low: float) -> int:
    """The most tokens a prompt of `prompt_chars` characters can count at `chars_per_token_low`."""
    return math.ceil(prompt_chars / chars_per_token_low) + MESSAGE_OVERHEAD_TOKENS


def _frame(rows, columns: list[str]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=columns)
    for column in columns:
        if column not in df.columns:
            df[column] = float("nan")
    return df


def estimate(calls: pd.DataFrame | list[dict], samples: pd.DataFrame | list[dict], prices: pd.DataFrame) -> pd.DataFrame:
    """Per stage and model: the calls, and their input tokens, output tokens and cost (low, expected,
    high). `prices` is `usage.model_prices` (NaN where a price is missing): such a model's cost is
    NaN, "unknown", never 0."""
    calls = _frame(calls, CALL_COLUMNS)
    samples = _frame(samples, SAMPLE_COLUMNS)
    if calls.empty:
        return pd.DataFrame(columns=ESTIMATE_COLUMNS)
    for column in ("prompt_chars", "prompt_tokens", "completion_tokens", "answer_chars"):
        samples[column] = pd.to_numeric(samples[column], errors="coerce")
    models = set(calls["model_id"]) | set(calls["answer_model_id"].dropna())
    prompt_ratio = {
        m: calibrate(s["prompt_chars"], s["prompt_tokens"]) for m, s in samples.groupby("model_id")
    }
    answer_ratio = {m: calibrate(s["answer_chars"], s["completion_tokens"]) for m, s in samples.groupby("model_id")}
    for m in models:
        prompt_ratio.setdefault(m, DEFAULT_CHARS_PER_TOKEN)
        answer_ratio.setdefault(m, DEFAULT_CHARS_PER_TOKEN)
    df = calls.copy()
    df["prompt_chars"] = pd.to_numeric(df["prompt_chars"], errors="coerce")
    _input_chars(df, samples, answer_ratio)
    ratio = df["model_id"].map(prompt_ratio)
    df["input_tokens_low"] = df["chars_low"] / ratio.map(lambda r: r.high)
    df["input_tokens_expected"] = df["chars_expected"] / ratio.map(lambda r: r.expected)
    df["input_tokens_high"] = df["chars_high"] / ratio.map(lambda r: r.low) + MESSAGE_OVERHEAD_TOKENS
    _output_tokens(df, samples)
    prices = prices.set_index("model_id")
    input_price = df["model_id"].map(prices["input_usd_per_mtok"])
    output_price = df["model_id"].map(prices["output_usd_per_mtok"])
    for bound in ("low", "expected", "high"):
        df[f"cost_usd_{bound}"] = (df[f"input_tokens_{bound}"] * input_price + df[f"output_tokens_{bound}"] * output_price) / 1e6
    return _per_stage_and_model(df, samples, prompt_ratio)


def _input_chars(df: pd.DataFrame, samples: pd.DataFrame, answer_ratio: dict[str, CharsPerToken]) -> None:
    """chars_low/expected/high of every call's prompt: exact when known, else template + answer bounds."""
    stored = samples[(samples["stage"] == "generation") & samples["answer_chars"].notna()].groupby("model_id")["answer_chars"]
    shortest, mean, longest = stored.min(), stored.mean(), stored.max()
    model = df["answer_model_id"]
    limit = pd.to_numeric(df["answer_max_tokens"], errors="coerce")
    ratio = model.map(answer_ratio)
    bounded = limit * ratio.map(lambda r: r.high, na_action="ignore")
    high = pd.concat([bounded, model.map(longest)], axis=1).max(axis=1)
    answer = {
        "low": model.map(shortest).fillna(1.0),
        "expected": model.map(mean).fillna(limit * ratio.map(lambda r: r.expected, na_action="ignore")),
        "high": high,
    }
    base = pd.to_numeric(df["base_chars"], errors="coerce").fillna(0)
    repeats = pd.to_numeric(df["repeats"], errors="coerce").fillna(1)
    for bound, chars in answer.items():
        df[f"chars_{bound}"] = df["prompt_chars"].fillna(base + repeats * chars)


def _output_tokens(df: pd.DataFrame, samples: pd.DataFrame) -> None:
    """output_tokens_low/expected/high: stored answers of the stage and model, capped by max_tokens."""
    stored = samples[samples["completion_tokens"].notna()].groupby(["stage", "model_id"])["completion_tokens"]
    key = pd.MultiIndex.from_frame(df[["stage", "model_id"]])
    shortest = pd.Series(stored.min().reindex(key).to_numpy(), index=df.index)
    mean = pd.Series(stored.mean().reindex(key).to_numpy(), index=df.index)
    limit = pd.to_numeric(df["max_tokens"], errors="coerce")
    df["output_tokens_low"] = shortest.fillna(1.0).clip(upper=limit)
    df["output_tokens_expected"] = mean.fillna(limit).clip(upper=limit)
    df["output_tokens_high"] = limit


def _per_stage_and_model(df: pd.DataFrame, samples: pd.DataFrame, prompt_ratio: dict[str, CharsPerToken]) -> pd.DataFrame:
    sums = [f"{w}_{b}" for w in ("input_tokens", "output_tokens", "cost_usd") for b in ("low", "expected", "high")]
    grouped = df.groupby(["stage", "model_id"], sort=False)
    table = grouped[sums].sum(min_count=1)
    # A model without a price has an unknown cost: NaN, even where other rows of it are summed.
    unknown_cost = grouped["cost_usd_high"].apply(lambda s: s.isna().any())
    for column in ("cost_usd_low", "cost_usd_expected", "cost_usd_high"):
        table.loc[unknown_cost, column] = float("nan")
    table.insert(0, "calls", grouped.size())
    table = table.reset_index()
    stored = samples[samples["completion_tokens"].notna()].groupby(["stage", "model_id"]).size()
    table["chars_per_token"] = table["model_id"].map(lambda m: prompt_ratio[m].expected)
    table["chars_per_token_basis"] = table["model_id"].map(lambda m: prompt_ratio[m].basis)
    table["output_basis"] = [
        f"{int(stored.get((s, m), 0))} stored answer(s)" if stored.get((s, m), 0) else "max_tokens (no stored answer)"
        for s, m in zip(table["stage"], table["model_id"])
    ]
    for column in [c for c in table.columns if c.startswith(("input_tokens", "output_tokens"))]:
        table[column] = table[column].round().astype("int64")
    table["order"] = table["stage"].map({s: i for i, s in enumerate(STAGES)}).fillna(len(STAGES))
    table = table.sort_values(["order", "model_id"], kind="stable")
    return table[ESTIMATE_COLUMNS].reset_index(drop=True)


def totals(table: pd.DataFrame) -> dict:
    """Calls, tokens and cost over every row; cost over the priced models, with the unpriced named."""
    unpriced = sorted(set(table.loc[table["cost_usd_high"].isna(), "model_id"]))
    out = {"calls": int(table["calls"].sum()), "unpriced_models": unpriced}
    for column in ESTIMATE_COLUMNS[3:12]:
        out[column] = float(table[column].sum()) if column.startswith("cost") else int(table[column].sum())
    return out


# --------------------------------------------------------------------------- how figures read


def usd(value: float | None) -> str:
    """Dollars with three significant digits (no exponent), `unknown` for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"${value:.{decimals}f}"


def tokens(value: float) -> str:
    """A token count: exact below 10,000, then in k, M or G with three significant digits."""
    value = float(value)
    if abs(value) < 1e4:
        return f"{value:,.0f}"
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= unit:
            scaled = value / unit
            return f"{scaled:.1f}{suffix}" if abs(scaled) < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:,.0f}"


def span(low: float, expected: float, high: float, fmt=tokens) -> str:
    """`≈expected (low-high)` in the given format; `unknown` when the figures are unknown."""
    if any(isinstance(v, float) and math.isnan(v) for v in (low, expected, high)):
        return "unknown (no price)"
    return f"≈{fmt(expected)} ({fmt(low)}-{fmt(high)})"


def estimate_rows(table: pd.DataFrame, with_total: bool = True) -> pd.DataFrame:
    """The estimate as a person reads it: one row per stage and model (and a total), figures as text."""
    rows = [
        {
            "stage": r.stage,
            "model": r.model_id,
            "calls": f"{r.calls:,}",
            "input tokens": span(r.input_tokens_low, r.input_tokens_expected, r.input_tokens_high),
            "output tokens": span(r.output_tokens_low, r.output_tokens_expected, r.output_tokens_high),
            "cost USD": span(r.cost_usd_low, r.cost_usd_expected, r.cost_usd_high, usd),
        }
        for r in table.itertuples()
    ]
    if with_total and len(table):
        t = totals(table)
        cost = span(t["cost_usd_low"], t["cost_usd_expected"], t["cost_usd_high"], usd)
        if t["unpriced_models"]:
            cost += f" + unknown for {', '.join(t['unpriced_models'])}"
        rows.append(
            {
                "stage": "total",
                "model": "",
                "calls": f"{t['calls']:,}",
                "input tokens": span(t["input_tokens_low"], t["input_tokens_expected"], t["input_tokens_high"]),
                "output tokens": span(t["output_tokens_low"], t["output_tokens_expected"], t["output_tokens_high"]),
                "cost USD": cost,
            }
        )
    return pd.DataFrame(rows, columns=["stage", "model", "calls", "input tokens", "output tokens", "cost USD"])


def text_table(df: pd.DataFrame, left: int = 2) -> str:
    """A plain-text table: the first `left` columns aligned left (names), the others right (figures)."""
    cells = [list(map(str, df.columns))] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    )


def basis_lines(table: pd.DataFrame) -> list[str]:
    """Which figures are calibrated from stored answers and which are defaults, one line per model."""
    lines = []
    for model_id, rows in table.groupby("model_id", sort=False):
        outputs = "; ".join(f"{r.stage} output tokens from {r.output_basis}" for r in rows.itertuples())
        lines.append(f"{model_id}: characters per token {rows['chars_per_token_basis'].iloc[0]}; {outputs}.")
    return lines
