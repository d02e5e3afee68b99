"""Knowing the cost before paying and capping it while paying: `daydream plan`, the estimate on the
task tables, `--max-cost` / max_cost_usd, and provider-reported costs, against the real
OpenAI-protocol test server (which counts words as tokens and reports a cost when asked)."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.analysis.estimate import usd
from daydreaming_dagster.resources.config import ExperimentConfig
from daydreaming_dagster.runner.cli import INSTANCE_TEMPLATE
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.plan import make_plan
from daydreaming_dagster.store.layout import table_path
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, Pipeline

# USD per million tokens (input, output). The server counts a word as a token, so one call costs a
# few cents here and max_tokens (300 generation, 200 evaluation) bounds its answer at about $1.
PRICES = {
    "gen-model-1": (2000.0, 4000.0),
    "gen-model-2": (1000.0, 3000.0),
    "judge-model-1": (500.0, 2000.0),
    "judge-model-2": (3000.0, 1000.0),
}
# The provider's own figure differs from the list prices (as OpenRouter's may), so it can be told apart.
PROVIDER_MARKUP = 1.25
SENTENCES = [
    "Incubation lets a half-formed idea settle while attention wanders elsewhere.",
    "The combination suggests a search that pauses on purpose.",
    "A constraint removes the obvious paths and leaves the interesting ones.",
    "Measuring it would need a diary of when ideas arrive.",
    "The mechanism is a loop between noticing and testing.",
]


def write_prices(root: Path, prices: dict[str, tuple[float, float] | None]) -> None:
    """Add the price columns to the experiment's llm_models.csv (an empty price for None)."""
    path = root / "1_raw" / "llm_models.csv"
    lines = [",".join(line.split(",")[:6]) for line in path.read_text().splitlines()]  # without earlier prices
    out = [lines[0] + ",input_usd_per_mtok,output_usd_per_mtok"]
    for line in lines[1:]:
        price = prices.get(line.split(",", 1)[0])
        out.append(line + (f",{price[0]},{price[1]}" if price else ",,"))
    path.write_text("\n".join(out) + "\n")


def list_cost(model: str, usage: dict) -> float:
    input_price, output_price = PRICES[model.removeprefix("test/")]
    return (usage["prompt_tokens"] * input_price + usage["completion_tokens"] * output_price) / 1e6


def answer(body) -> str:
    """A generation of 2 to 5 sentences, named by a digest of model and prompt (so every judge prompt
    differs), or a judge's short verdict."""
    prompt = body["messages"][-1]["content"]
    digest = hashlib.sha256(f"{body['model']} {prompt}".encode()).hexdigest()
    n = 2 + int(digest[:2], 16) % 4
    if "SCORE" in prompt:
        return " ".join(SENTENCES[: n - 1]) + f"\nSCORE: {n + 3}"
    return f"Idea {digest[:8]}. " + " ".join(SENTENCES[:n])


def paid_by_model(server) -> dict[str, dict]:
    """What the server answered (= what was paid), per model id: calls, tokens, list and reported cost."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for body in server.responses:
        row = out[body["model"].removeprefix("test/")]
        row["calls"] += 1
        row["input_tokens"] += body["usage"]["prompt_tokens"]
        row["output_tokens"] += body["usage"]["completion_tokens"]
        row["cost_usd"] += list_cost(body["model"], body["usage"])
        row["provider_cost_usd"] += body["usage"].get("cost", 0.0)
    return out


def assert_within(plan_table: pd.DataFrame, paid: dict[str, dict]) -> None:
    """Every stage-model row, and the totals, hold what was paid between their low and high bounds."""
    assert set(plan_table["model_id"]) == set(paid)
    for row in plan_table.itertuples():
        made = paid[row.model_id]
        assert row.calls == made["calls"], row.model_id
        for what in ("input_tokens", "output_tokens", "cost_usd"):
            low, high = getattr(row, f"{what}_low"), getattr(row, f"{what}_high")
            assert low <= made[what] <= high, (row.model_id, what, low, made[what], high)
    for what in ("input_tokens", "output_tokens", "cost_usd"):
        total = sum(m[what] for m in paid.values())
        assert plan_table[f"{what}_low"].sum() <= total <= plan_table[f"{what}_high"].sum(), what


@pytest.fixture
def priced(tmp_path, monkeypatch, openai_server) -> Path:
    """The tiny experiment (6 generations, 12 pairs) with prices, for `daydream` in this process
    against the test server, which reports a cost for every call."""
    experiment = write_experiment(tmp_path / "data")
    write_prices(experiment, PRICES)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(experiment))
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    openai_server.default_answer = answer
    openai_server.cost_for = lambda body, usage: list_cost(body["model"], usage) * PROVIDER_MARKUP
    return experiment


def config_of(experiment: Path) -> ExperimentConfig:
    return ExperimentConfig.for_experiment(str(experiment), str(experiment))


RUN = ["run", "--workers", "1", "--concurrency", "2"]


# --------------------------------------------------------------------------- plan, then run


@pytest.mark.slow
def test_the_plan_counts_every_call_and_its_bounds_hold_what_the_run_then_pays(priced, openai_server, capsys):
    assert daydream(["plan"]) == 0  # no run before: the tables come from 1_raw
    out = capsys.readouterr().out
    assert "generation: 6 tasks -> 6 call(s)" in out
    assert "evaluation: 12 pairs -> 12 call(s); 12 judge prompt(s) wait for their generation answer" in out
    assert "characters per token default 4 (2-8)" in out and "from max_tokens (no stored answer)" in out
    assert openai_server.requests == []
    plan = make_plan(config_of(priced), dg.DagsterInstance.get())

    assert daydream(RUN) == 0, capsys.readouterr().err

    out = capsys.readouterr().out
    paid = paid_by_model(openai_server)
    assert sum(m["calls"] for m in paid.values()) == 6 + 12
    assert_within(plan.table, paid)
    table = out.split("Estimate before the run vs what it paid for")[1].splitlines()[1:]
    assert len(table) >= 5 and not any("*" in line for line in table)  # nothing outside its bounds

    # The provider's figure and the list price side by side in llm_usage.
    usage = pd.read_csv(table_path(priced, "llm_usage", "results")).set_index("model_id")
    for model_id, made in paid.items():
        assert usage.loc[model_id, "cost_usd"] == pytest.approx(made["cost_usd"])
        assert usage.loc[model_id, "provider_cost_usd"] == pytest.approx(made["provider_cost_usd"])
        assert usage.loc[model_id, "calls_with_provider_cost"] == made["calls"]

    # Afterwards nothing is left, and the whole experiment's plan is calibrated from the answers.
    assert daydream(["plan"]) == 0
    assert "Nothing to pay for" in capsys.readouterr().out
    assert daydream(["plan", "--all"]) == 0
    out = capsys.readouterr().out
    assert "generation: 6 tasks -> 6 call(s)" in out and "evaluation: 12 pairs -> 12 call(s)" in out
    assert "calibrated" in out and "from 3 stored answer(s)" in out and "default" not in out


# --------------------------------------------------------------------------- the cap


@pytest.mark.slow
def test_a_cap_stops_the_run_before_it_is_passed_and_a_higher_one_finishes_without_paying_twice(
    priced, openai_server, capsys
):
    # Room for a few calls at their worst case (an answer of max_tokens: about $1 each here), not
    # for all 18 (about $3.70 as the provider reports it).
    cap = 3.0

    assert daydream([*RUN, "--max-cost", str(cap)]) == 3

    out, err = capsys.readouterr()
    first = paid_by_model(openai_server)
    spent = sum(m["provider_cost_usd"] for m in first.values())
    made = sum(m["calls"] for m in first.values())
    assert 0 < made < 18
    assert spent <= cap
    sentence = err.strip().splitlines()[-1]
    assert sentence.startswith(f"Stopped at the spending cap: {usd(spent)} spent under {priced} of the $3.00 cap; ")
    asked = len({(r.body["model"], r.body["messages"][-1]["content"]) for r in openai_server.requests})
    undone = re.search(r"; (?:(\d+) generation and )?(\d+) evaluation call\(s\) are left undone \(≈\$", sentence)
    assert undone and sum(int(n or 0) for n in undone.groups()) == 18 - asked
    assert "higher cap (--max-cost)" in sentence and "never paid again" in sentence
    assert "spending cap reached" in err  # the stage's own line says why
    # The plan of what is left counts exactly the calls still to make, with calibrated bounds.
    left = make_plan(config_of(priced), dg.DagsterInstance.get())
    assert left.calls == 18 - asked
    before = len(openai_server.responses)

    assert daydream([*RUN, "--max-cost", "100"]) == 0, capsys.readouterr().err

    sent = [(r.body["model"], r.body["messages"][-1]["content"]) for r in openai_server.requests]
    assert len(sent) == len(set(sent)) == 18  # every call once, across both runs
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("generation_response"))) == 6
    assert len(instance.get_materialized_partitions(dg.AssetKey("evaluation_response"))) == 12
    second = type(openai_server)()  # the second run's calls alone, summed the same way
    second.responses = openai_server.responses[before:]
    assert_within(left.table, paid_by_model(second))


def test_a_ui_backfill_of_evaluation_pairs_respects_the_experiments_cap(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data")
    write_prices(root, PRICES)
    cap = 0.5
    with (root / "1_raw" / "experiment.toml").open("a") as toml:
        toml.write(f"max_cost_usd = {cap}\n")
    openai_server.default_answer = answer
    openai_server.cost_for = lambda body, usage: list_cost(body["model"], usage)
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    # Generations under a run-config cap that overrides the experiment's (as `--max-cost` does).
    allow = {"ops": {"generation_response": {"config": {"max_cost_usd": 100.0}}}}
    assert pipe.materialize_range(["generation_prompt", "generation_response"], pipe.generation_keys(), allow).success
    spent_on_generations = sum(r["usage"]["cost"] for r in openai_server.responses)
    assert spent_on_generations > cap  # the experiment's cap is already passed ...
    method = instance.get_dynamic_partitions("evaluation_tasks")[0]
    pairs = [f"{method}|{g}" for g in instance.get_dynamic_partitions("generation_tasks")]

    result = pipe.materialize_range(["evaluation_prompt", "evaluation_response"], pairs)  # ... so no judge is asked

    assert not result.success
    [failure] = [e for e in result.get_step_failure_events() if e.step_key == "evaluation_response"]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("spending cap reached: $")
    assert "could pass the $0.500 cap, so it was not started" in description
    assert "6 evaluation_response partition(s) of this run were not asked" in description
    assert "max_cost_usd in 1_raw/experiment.toml" in description
    assert len(openai_server.responses) == 6  # generations only


def test_calls_of_a_model_without_a_price_are_refused_under_a_cap_before_any_call(priced, openai_server, capsys):
    write_prices(priced, {**PRICES, "judge-model-2": None})

    assert daydream([*RUN, "--max-cost", "50"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "judge-model-2 has no price in llm_models.csv (input_usd_per_mtok and output_usd_per_mtok), so a "
        "spending cap cannot bound the cost of its calls; add both prices, or run without a cap."
    )
    assert openai_server.requests == []
    # Without a cap the same experiment runs, and the plan calls that model's cost unknown, never 0.
    assert daydream(["plan"]) == 0
    out = capsys.readouterr().out
    assert "unknown (no price)" in out and "+ unknown for judge-model-2" in out


def test_the_asset_refuses_an_unpriced_model_under_the_experiments_cap(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data")
    write_prices(root, {**PRICES, "gen-model-2": None})
    with (root / "1_raw" / "experiment.toml").open("a") as toml:
        toml.write("max_cost_usd = 10\n")
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    key = next(k for k in pipe.generation_keys() if k.endswith("gen-model-2"))

    result = pipe.generate(key)

    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.description.startswith("gen-model-2 has no price in llm_models.csv")
    assert openai_server.requests == []


# --------------------------------------------------------------------------- the estimate in the UI


def test_the_task_tables_show_the_calls_and_cost_still_to_pay_for(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data")
    write_prices(root, PRICES)
    openai_server.default_answer = answer
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()

    def shown(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}

    generation, evaluation = shown("generation_tasks"), shown("evaluation_tasks")
    assert generation["generation_calls_to_make"] == 6 and evaluation["evaluation_calls_to_make"] == 12
    assert generation["estimated_cost_usd"] > 0 and evaluation["estimated_cost_usd"] > 0
    assert "gen-model-1" in generation["cost_estimate"] and "judge-model-2" in evaluation["cost_estimate"]
    assert generation["estimated_cost_range_usd"].startswith("$")

    keys = pipe.generation_keys()
    assert pipe.materialize_range(["generation_prompt", "generation_response"], keys[:2]).success
    pipe.tables()

    assert shown("generation_tasks")["generation_calls_to_make"] == 4
    assert shown("evaluation_tasks")["evaluation_calls_to_make"] == 12  # judges have not run yet
    assert shown("generation_tasks")["estimated_cost_usd"] < generation["estimated_cost_usd"]


def test_a_model_without_a_price_shows_an_unknown_cost_on_the_task_table(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data")
    write_prices(root, {**PRICES, "gen-model-1": None})
    Pipeline(root, instance, openai_server).tables()
    event = instance.get_latest_materialization_event(dg.AssetKey("generation_tasks"))
    cost = event.asset_materialization.metadata["estimated_cost_usd"].value
    assert cost == "unknown: no price for gen-model-1 in llm_models.csv"
    assert not math.isnan(event.asset_materialization.metadata["generation_calls_to_make"].value)


def test_near_the_cap_calls_wait_for_the_ones_in_flight_instead_of_stopping(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data")
    write_prices(root, PRICES)
    openai_server.default_answer = lambda body: "Fine."
    openai_server.latency_s = 0.3
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    # A generation call may cost up to $1.31 (gen-model-1) or $0.96 (gen-model-2): under a $2 cap two
    # never fit in flight together, while all six, at about $0.04 each, fit one after the other.
    config = {"ops": {"generation_response": {"config": {"max_cost_usd": 2.0, "parallel_calls": 4}}}}

    result = pipe.materialize_range(["generation_prompt", "generation_response"], pipe.generation_keys(), config)

    assert result.success
    assert len(openai_server.responses) == 6
    arrivals = sorted(r.received_at for r in openai_server.requests)
    assert all(later - earlier >= 0.3 for earlier, later in zip(arrivals, arrivals[1:]))  # one call at a time
