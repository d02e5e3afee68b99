"""Batch mode end to end: `daydream run --batch` against the test server's batch protocol (a batch
answers after a short delay), on a real Dagster instance with real files."""

from __future__ import annotations

import collections
import json

import pandas as pd
import pytest

from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.store.batch_ledger import BatchLedger
from daydreaming_dagster.store.layout import table_path
from tests.batch_fixtures import RUN, batch_asked, materialization_counts, set_batch_columns
from tests.test_cost import PRICES


def test_the_whole_experiment_in_batch_mode_pays_each_request_once_at_the_batch_price(batched, openai_server, capsys):
    # Long enough that a poll sees each batch open (and prints its progress) on a loaded machine.
    openai_server.batches.delay_s = 1.5
    assert daydream([*RUN, "--batch", "--wait"]) == 0, capsys.readouterr().err
    out = capsys.readouterr()

    assert openai_server.requests == []  # nothing was asked live
    asked = batch_asked(openai_server)
    assert len(asked) == 6 + 12 and set(asked.values()) == {1}
    assert openai_server.batches.files_uploaded == 4  # one file per model: 2 generators, then 2 judges
    assert "batches: " in out.err and "request(s) done" in out.err
    gen, pairs = materialization_counts("generation_response"), materialization_counts("evaluation_response")
    assert len(gen) == 6 and len(pairs) == 12 and set(gen.values()) | set(pairs.values()) == {1}
    for sidecar in (batched / "4_evaluation" / "evaluation_response").rglob("*.json"):
        provenance = json.loads(sidecar.read_text())
        assert provenance["backend"] == "openai-batch" and provenance["batch_id"].startswith("batch_")
        assert provenance["batch_price_factor"] == 0.5
    assert all(r["state"] == "collected" for r in BatchLedger(batched).records())
    assert list(batched.rglob(".*.claim.json")) == []
    assert not list((batched / ".spend" / "batched").glob("*.json"))

    usage = pd.read_csv(table_path(batched, "llm_usage", "results"))
    paid = collections.defaultdict(float)
    for body in openai_server.batches.responses:
        model = body["model"].removeprefix("test/")
        paid[model] += (body["usage"]["prompt_tokens"] * PRICES[model][0] + body["usage"]["completion_tokens"] * PRICES[model][1]) / 1e6
    for row in usage.itertuples():
        assert row.cost_usd == pytest.approx(0.5 * paid[row.model_id])  # the batch price, not the list price
    assert (batched / "5_results" / "parsed_scores.csv").is_file()


def test_without_wait_it_submits_and_returns_and_the_next_run_collects(batched, openai_server, capsys):
    openai_server.batches.delay_s = 0
    assert daydream([*RUN, "--batch"]) == 0
    assert openai_server.batches.requests_answered == 0 and openai_server.batches.created == 2
    assert "2 batch(es) still open" in capsys.readouterr().out
    assert daydream(["batches"]) == 0
    listed = capsys.readouterr()
    assert listed.out.strip() == "no open batch."  # they finished meanwhile, and listing collected them
    assert listed.err.count("3 answer(s) stored") == 2

    assert daydream([*RUN, "--batch"]) == 0  # materializes the generations, submits their evaluations
    assert len(materialization_counts("generation_response")) == 6
    assert openai_server.batches.created == 4
    assert daydream([*RUN, "--batch"]) == 0
    assert len(materialization_counts("evaluation_response")) == 12
    assert openai_server.requests == [] and set(batch_asked(openai_server).values()) == {1}


def test_a_provider_without_batch_api_is_refused_before_anything_is_uploaded(batched, openai_server, capsys):
    openai_server.batches.supported = False
    assert daydream([*RUN, "--batch"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no batch endpoint" in err and len(err.splitlines()) == 1
    assert openai_server.batches.files_uploaded == 0 and openai_server.requests == []


def test_a_model_marked_never_is_refused_in_one_sentence(batched, openai_server, capsys):
    set_batch_columns(batched, {"batch": {"judge-model-2": "never"}})
    assert daydream([*RUN, "--batch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("judge-model-2 has no batch API") and len(err.splitlines()) == 1
    assert openai_server.batches.files_uploaded == 0 and openai_server.requests == []


def test_failed_and_expired_requests_are_asked_again_and_only_those(batched, openai_server, capsys):
    failing = {"first": True}

    def fail_once(line) -> bool:  # the first generation of gen-model-1 fails in its first batch
        if line["body"]["model"] == "test/gen-model-1" and failing["first"]:
            failing["first"] = False
            return True
        return False

    openai_server.batches.fail_when = fail_once
    expiring = {"left": 1}

    def expire_first_judge_batch(batch) -> bool:  # the first judge-model-1 batch answers 2 requests, then expires
        first = json.loads(openai_server.batches.files[batch["input_file_id"]]["data"].splitlines()[0])
        if first["body"]["model"] == "test/judge-model-1" and expiring["left"]:
            expiring["left"] = 0
            return True
        return False

    openai_server.batches.expire_when = expire_first_judge_batch
    openai_server.batches.expire_keep = 2

    assert daydream([*RUN, "--batch", "--wait"]) == 0, capsys.readouterr().err

    asked = batch_asked(openai_server)
    assert len(asked) == 18 and max(asked.values()) == 1  # a failed or expired request is never answered twice
    records = list(BatchLedger(batched).records())
    [expired] = [r for r in records if r.get("provider_state") == "expired"]
    appearances = collections.Counter(key for r in records for key in r["items"])
    errored = {key for r in records for key in r.get("errors", {})}
    assert len(errored) == 1 + (len(expired["items"]) - 2)  # the failed generation and the expired judge requests
    assert {key for key, n in appearances.items() if n > 1} == errored  # asked again: exactly those
    assert max(appearances.values()) == 2
    assert len(materialization_counts("evaluation_response")) == 12 and openai_server.requests == []


def test_retry_live_asks_the_failed_requests_live(batched, openai_server, capsys):
    openai_server.batches.fail_when = lambda line: line["custom_id"].endswith("gen-model-2") and "alpha" in line["body"]["messages"][0]["content"]
    assert daydream([*RUN, "--batch", "--wait", "--retry-live"]) == 0, capsys.readouterr().err
    live = [r.body["model"] for r in openai_server.requests]
    assert live and set(live) == {"test/gen-model-2"}
    assert openai_server.batches.created == 4
    assert len(materialization_counts("evaluation_response")) == 12


def test_the_plan_prices_batched_models_at_their_batch_price(batched, capsys):
    assert daydream(["plan"]) == 0
    live = capsys.readouterr().out
    assert daydream(["plan", "--batch"]) == 0
    batch = capsys.readouterr().out
    set_batch_columns(batched, {"batch": {m: "yes" for m in PRICES}, "batch_discount": {m: "0.25" for m in PRICES}})
    assert daydream(["plan"]) == 0
    quarter = capsys.readouterr().out

    def total(text: str) -> float:
        line = next(line for line in text.splitlines() if line.lstrip().startswith("total"))
        return float(line.split("$")[-1].split()[0].replace(",", "").rstrip(")"))

    assert "Batch mode: gen-model-1 x0.5" in batch and "Batch mode" not in live
    assert total(batch) == pytest.approx(total(live) / 2, rel=0.01)
    assert total(quarter) == pytest.approx(total(live) / 4, rel=0.01)


def test_a_file_over_the_providers_request_limit_is_split(batched, openai_server, monkeypatch):
    monkeypatch.setenv("DAYDREAM_BATCH_MAX_REQUESTS", "2")
    openai_server.batches.delay_s = 3600
    assert daydream([*RUN, "--batch"]) == 0
    records = list(BatchLedger(batched).records())
    assert sorted(len(r["items"]) for r in records) == [1, 1, 2, 2]  # 3 generations per model: 2 + 1
    assert len({r["model_id"] for r in records}) == 2 and openai_server.batches.created == 4


def test_an_offline_run_ignores_the_batch_column(batched, openai_server, capsys):
    set_batch_columns(batched, {"batch": {m: "yes" for m in PRICES}})
    assert daydream([*RUN, "--offline"]) == 0, capsys.readouterr().err
    assert openai_server.batches.created == 0 and openai_server.requests == []
