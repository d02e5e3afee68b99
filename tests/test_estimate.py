"""The cost estimate's arithmetic (analysis/estimate.py) and the spending cap's (analysis/budget.py):
pure functions, checked against figures worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from daydreaming_dagster.analysis.budget import paid_cost, price_table, worst_case_usd
from daydreaming_dagster.analysis.estimate import (
    DEFAULT_CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    calibrate,
    estimate,
    estimate_rows,
    tokens,
    totals,
    usd,
)
from daydreaming_dagster.analysis.usage import model_prices

PRICES = model_prices(
    pd.DataFrame(
        {
            "id": ["gen", "judge", "free-text"],
            "input_usd_per_mtok": ["2", "10", ""],
            "output_usd_per_mtok": ["4", "20", "1"],
        }
    )
)


def row(table: pd.DataFrame, model_id: str) -> pd.Series:
    return table.set_index("model_id").loc[model_id]


def test_calibration_is_the_pooled_ratio_between_the_extremes_widened_by_a_margin():
    ratio = calibrate([400, 300, 0, 50], [100, 50, 10, None])  # 4 and 6 chars per token; the rest unusable

    assert ratio.samples == 2
    assert ratio.expected == pytest.approx(700 / 150)
    assert ratio.low == pytest.approx(4 / 1.1) and ratio.high == pytest.approx(6 * 1.1)
    assert calibrate([], []) == DEFAULT_CHARS_PER_TOKEN
    assert "calibrated 4.67 (3.64-6.60) from 2 answer(s)" == ratio.basis
    assert DEFAULT_CHARS_PER_TOKEN.basis == "default 4 (2-8)"


def test_a_known_prompt_without_stored_answers_is_bounded_by_the_default_ratio_and_max_tokens():
    calls = [{"stage": "generation", "model_id": "gen", "max_tokens": 100, "prompt_chars": 800}] * 3

    table = estimate(calls, [], PRICES)

    r = row(table, "gen")
    assert r.calls == 3
    assert (r.input_tokens_low, r.input_tokens_expected, r.input_tokens_high) == (300, 600, 3 * (400 + MESSAGE_OVERHEAD_TOKENS))
    assert (r.output_tokens_low, r.output_tokens_expected, r.output_tokens_high) == (3, 300, 300)
    assert r.cost_usd_low == pytest.approx((300 * 2 + 3 * 4) / 1e6)
    assert r.cost_usd_high == pytest.approx((3 * 408 * 2 + 300 * 4) / 1e6)
    assert r.output_basis == "max_tokens (no stored answer)"


def test_stored_answers_calibrate_the_prompt_and_bound_a_judge_prompt_still_waiting_for_its_answer():
    samples = [
        # generator answers: 500 and 700 characters for 100 tokens each; prompts at 5 chars per token
        {"stage": "generation", "model_id": "gen", "prompt_chars": 500, "prompt_tokens": 100, "completion_tokens": 100, "answer_chars": 500},
        {"stage": "generation", "model_id": "gen", "prompt_chars": 500, "prompt_tokens": 100, "completion_tokens": 100, "answer_chars": 700},
        # a judge prompt at 4 chars per token, answered in 30 tokens
        {"stage": "evaluation", "model_id": "judge", "prompt_chars": 400, "prompt_tokens": 100, "completion_tokens": 30, "answer_chars": 90},
    ]  # fmt: skip
    waiting = {
        "stage": "evaluation", "model_id": "judge", "max_tokens": 50, "base_chars": 100, "repeats": 1,
        "answer_model_id": "gen", "answer_max_tokens": 200,
    }  # fmt: skip

    table = estimate([waiting], samples, PRICES)

    r = row(table, "judge")
    judge = calibrate([400], [100])  # 4 +- 10%
    answer_high = 200 * 7 * 1.1  # max_tokens at the generator's highest answer ratio (7) + 10%
    assert r.input_tokens_low == round((100 + 500) / judge.high)  # the shortest stored answer
    assert r.input_tokens_expected == round((100 + 600) / judge.expected)  # the mean one
    assert r.input_tokens_high == round((100 + answer_high) / judge.low + MESSAGE_OVERHEAD_TOKENS)
    assert (r.output_tokens_low, r.output_tokens_expected, r.output_tokens_high) == (30, 30, 50)
    assert r.output_basis == "1 stored answer(s)"
    assert r.chars_per_token_basis.startswith("calibrated 4.00")


def test_a_model_without_a_price_has_an_unknown_cost_that_is_never_added_as_zero():
    calls = [
        {"stage": "generation", "model_id": "gen", "max_tokens": 10, "prompt_chars": 40},
        {"stage": "evaluation", "model_id": "free-text", "max_tokens": 10, "prompt_chars": 40},
    ]

    table = estimate(calls, [], PRICES)

    assert math.isnan(row(table, "free-text").cost_usd_expected)
    t = totals(table)
    assert t["unpriced_models"] == ["free-text"] and t["cost_usd_high"] == pytest.approx(row(table, "gen").cost_usd_high)
    shown = estimate_rows(table).set_index("stage")
    assert shown.loc["evaluation", "cost USD"] == "unknown (no price)"
    assert shown.loc["total", "cost USD"].endswith("+ unknown for free-text")


@pytest.mark.parametrize(
    "value, text",
    [(0.0, "$0"), (0.000123456, "$0.000123"), (0.0421, "$0.0421"), (0.5, "$0.500"), (3.256, "$3.26"), (1234.5, "$1,234"), (float("nan"), "unknown")],
)
def test_dollars_read_with_three_significant_digits(value, text):
    assert usd(value) == text


@pytest.mark.parametrize("value, text", [(9999, "9,999"), (12_345, "12.3k"), (890_000, "890k"), (1_890_000, "1.9M")])
def test_token_counts_read_short(value, text):
    assert tokens(value) == text


def test_what_paid_answers_cost_prefers_the_providers_figure_and_is_unknown_without_a_price():
    prices = price_table(PRICES)
    assert set(prices) == {"gen", "judge"}  # free-text lacks its input price
    # 2 answers reported $0.5 in all; 1 did not: 1000 prompt + 500 completion tokens at gen's prices.
    assert paid_cost("gen", "openai", 0.5, 1, 1000, 500, 0, prices) == pytest.approx(0.5 + (1000 * 2 + 500 * 4) / 1e6)
    assert paid_cost("free-text", "openai", 0.5, 0, 0, 0, 0, prices) == 0.5  # all reported: no price needed
    assert paid_cost("free-text", "openai", 0.0, 1, 10, 10, 0, prices) is None
    assert paid_cost("gen", "openai", 0.0, 1, 0, 0, 1, prices) is None  # an answer without usage
    assert paid_cost("free-text", "offline", 0.0, 3, 10, 10, 0, prices) == 0.0


def test_a_calls_worst_case_is_its_prompt_at_the_densest_tokenization_seen_and_a_full_answer():
    price = (2.0, 4.0)
    assert worst_case_usd(1000, 100, price, None) == pytest.approx(((500 + MESSAGE_OVERHEAD_TOKENS) * 2 + 100 * 4) / 1e6)
    # a stored answer at 1.1 chars per token (denser than the default floor of 2) lowers the floor
    dense = worst_case_usd(1000, 100, price, 1.1)
    assert dense == pytest.approx(((1000 + MESSAGE_OVERHEAD_TOKENS) * 2 + 100 * 4) / 1e6)
    # a sparse tokenizer never raises it above the default floor
    assert worst_case_usd(1000, 100, price, 9.0) == worst_case_usd(1000, 100, price, None)
