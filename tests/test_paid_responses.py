"""Paid responses end to end: the response assets on a Dagster instance against tests/openai_server.py.

Faults (empty, truncated, transient errors), provenance and key hygiene, write-once and reuse by
content, llm_usage totals, and `daydream run` through a fault-sprinkled server."""

from __future__ import annotations

import hashlib
import math

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.analysis.usage import model_prices, usage_table
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.resources.io_managers import (
    read_table,
)
from daydreaming_dagster.resources.response_store import ResponseStore
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path
from daydreaming_dagster.store.write_once import StoredResponseConflict, read_provenance, write_response_once
from tests.experiment_factory import write_experiment
from tests.openai_server import (
    drop,
    empty,
    html_200,
    null_content,
    ok,
    status,
    truncated,
)
from tests.pipeline import (
    KEY,
    REPLACE_CHANGED,
    Pipeline,
    responses_in,
)

# --------------------------------------------------------------------------- 1. empty and truncated


def test_a_truncated_generation_fails_is_kept_aside_and_a_rerun_asks_again(pipeline, openai_server):
    key = pipeline.generation_keys()[0]
    openai_server.script(truncated("The answer was cut"))

    result = pipeline.generate(key)

    assert not result.success
    message = failure_text(result)
    assert "returned a truncated answer: finish_reason is 'length'" in message
    assert "max_tokens=300" in message
    assert "_rejected" in message and "re-running the partition asks the model again" in message
    path = pipeline.response_path(key)
    assert not path.exists() and not sidecar_path(path).exists()
    [kept] = responses_in(path.parent / "_rejected")
    assert kept.name.startswith(f"{key}.")
    assert kept.read_text() == "The answer was cut"
    record = read_provenance(kept)
    assert record["finish_reason"] == "length" and "truncated" in record["rejected_because"]
    assert key not in pipeline.instance.get_materialized_partitions(dg.AssetKey("generation_response"))

    assert pipeline.generate(key).success

    assert path.read_text() == "A default answer from the fake server."
    assert len(openai_server.requests) == 2
    assert responses_in(path.parent / "_rejected") == [kept]
    assert key in pipeline.instance.get_materialized_partitions(dg.AssetKey("generation_response"))


def test_an_empty_judge_answer_fails_is_kept_aside_and_a_rerun_asks_again(pipeline, openai_server):
    pair = pipeline.pairs()[0]
    generation, method = pair.keys_by_dimension["generation_tasks"], pair.keys_by_dimension["evaluation_tasks"]
    assert pipeline.generate(generation).success
    path = text_path(pipeline.root, "evaluation_response", pair.keys_by_dimension)

    for behaviour in (empty(), null_content()):
        openai_server.script(behaviour)
        result = pipeline.evaluate(pair)
        assert not result.success
        assert "returned an empty answer" in failure_text(result)
        assert not path.exists()

    kept = responses_in(path.parent / "_rejected")
    assert len(kept) == 2
    assert all(p.name.startswith(f"{method}.") and p.read_text() == "" for p in kept)
    openai_server.script(ok("Solid idea.\nSCORE: 7"))
    assert pipeline.evaluate(pair).success
    assert path.read_text() == "Solid idea.\nSCORE: 7"
    assert len(openai_server.requests) == 4  # the generation, two empty answers, the answer


# --------------------------------------------------------------------------- 2. provenance and the key


def test_provenance_records_what_was_sent_and_answered_and_the_key_is_nowhere(pipeline, openai_server):
    key = pipeline.generation_keys()[0]
    openai_server.latency_s = 0.05
    # The provider echoes the key in an error: it must not reach a log line or the event log.
    echo = status(500, message=f"upstream rejected Bearer {KEY} (key {KEY})")
    openai_server.script(echo, ok("Bees trade honey futures."))

    result = pipeline.generate(key)

    assert result.success
    first, sent = openai_server.requests
    assert sent.headers["authorization"] == f"Bearer {KEY}"  # the key was really used
    assert first.body == sent.body
    [answered] = openai_server.responses
    record = read_provenance(pipeline.response_path(key))
    prompt = text_path(pipeline.root, "generation_prompt", key).read_text()
    [message] = sent.body["messages"]
    assert message == {"role": "user", "content": prompt}
    expected = {
        "backend": "openai",
        "model_id": "gen-model-1",
        "model": sent.body["model"],
        "temperature": sent.body["temperature"],
        "max_tokens": sent.body["max_tokens"],
        "prompt_sha256": hashlib.sha256(message["content"].encode()).hexdigest(),
        "finish_reason": "stop",
        "generation_id": answered["id"],
        "prompt_tokens": answered["usage"]["prompt_tokens"],
        "completion_tokens": answered["usage"]["completion_tokens"],
        "total_tokens": answered["usage"]["total_tokens"],
        "attempts": 2,
    }
    assert {k: record[k] for k in expected} == expected
    assert (sent.body["model"], sent.body["temperature"], sent.body["max_tokens"]) == ("test/gen-model-1", 0.5, 300)
    assert record["latency_s"] >= 0.05
    assert pd.Timestamp(record["created_at"]).tzinfo is not None

    metadata = pipeline.response_metadata("generation_response", key)
    for field in (*expected, "latency_s", "created_at"):
        assert metadata[field] == record[field], field
    assert metadata["reused"] is False and metadata["path"] == str(pipeline.response_path(key))

    for path in pipeline.root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    logs = [dg.serialize_value(entry) for entry in pipeline.instance.all_logs(result.run_id)]
    assert any("attempt 1 of 3 failed" in line for line in logs), "the retry is logged"
    assert any("[redacted]" in line for line in logs)
    assert not [line for line in logs if KEY in line]
    run = pipeline.instance.get_run_by_id(result.run_id)
    assert KEY not in dg.serialize_value(run)
    assert KEY not in dg.serialize_value(pipeline.instance.get_job_snapshot(run.job_snapshot_id))


# --------------------------------------------------------------------------- 3. write-once, reuse by content


def test_a_stored_response_is_reused_and_a_changed_template_is_refused_until_replaced_deliberately(
    pipeline, openai_server, experiment
):
    key = pipeline.generation_keys()[0]
    openai_server.script(ok("The first answer."))
    assert pipeline.generate(key).success
    path = pipeline.response_path(key)
    stored = (path.read_bytes(), sidecar_path(path).read_bytes())
    old_record = read_provenance(path)

    # A rerun reuses the stored response: nothing is sent, nothing is written.
    assert pipeline.generate(key).success
    assert len(openai_server.requests) == 1
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == stored
    metadata = pipeline.response_metadata("generation_response", key)
    assert metadata["reused"] is True and metadata["path"] == str(path)

    # After a template change the stored response belongs to another prompt: refused, kept.
    template = experiment / "1_raw" / "generation_templates" / "gen-a.txt"
    template.write_text(template.read_text() + "Be bold.\n")
    pipeline.tables()
    refused = pipeline.generate(key)

    assert not refused.success
    message = failure_text(refused)
    assert f"generation_response partition '{key}' already has a response to another prompt" in message
    assert "it is kept and not paid for again" in message
    assert "daydream run --replace-changed" in message
    assert '{"ops": {"generation_response": {"config": {"replace_changed": true}}}}' in message
    assert len(openai_server.requests) == 1
    assert path.read_bytes() == stored[0]
    new_prompt = text_path(pipeline.root, "generation_prompt", key).read_text()
    assert new_prompt.endswith("Be bold.\n")  # the prompt itself is rewritten; only the response waits

    # Replacing deliberately, but the new call fails: the old response stays where it is.
    openai_server.script(status(401))
    failed = pipeline.generate(key, REPLACE_CHANGED)
    assert not failed.success and "HTTP 401" in failure_text(failed)
    assert path.read_bytes() == stored[0]
    assert not (path.parent / "_superseded").exists()

    # Replacing deliberately: the new answer is stored, the old one moves to _superseded/.
    openai_server.script(ok("The second answer."))
    replaced = pipeline.generate(key, REPLACE_CHANGED)

    assert replaced.success
    assert len(openai_server.requests) == 3
    assert openai_server.requests[-1].body["messages"][0]["content"] == new_prompt
    superseded = path.parent / "_superseded"
    assert sorted(p.name for p in superseded.iterdir()) == [f"{key}.1.json", f"{key}.1.txt"]
    assert (superseded / f"{key}.1.txt").read_text() == "The first answer."
    assert read_provenance(superseded / f"{key}.1.txt") == old_record
    assert path.read_text() == "The second answer."
    assert read_provenance(path)["prompt_sha256"] == hashlib.sha256(new_prompt.encode()).hexdigest()
    assert "superseded_path" in pipeline.response_metadata("generation_response", key)

    # replace_changed does not replace a response that matches: nothing is sent, nothing moves.
    assert pipeline.generate(key, REPLACE_CHANGED).success
    assert len(openai_server.requests) == 3
    assert sorted(p.name for p in superseded.iterdir()) == [f"{key}.1.json", f"{key}.1.txt"]


def test_a_stored_response_edited_by_hand_is_not_reused(tmp_path):
    store = ResponseStore(base_path=str(tmp_path)).archive()
    request = LLMRequest(model_id="m", model="x/m", prompt="Combine bees and markets.", temperature=0.5, max_tokens=9)
    path = store.path("generation_response", "task-1")
    write_response_once(path, "The answer.", {**request.fingerprint(), "backend": "openai"})
    assert store.reusable("generation_response", "task-1", request, replace_changed=False).text == "The answer."

    path.write_text("The answer, improved by hand.")

    with pytest.raises(StoredResponseConflict, match="no longer matches the digest in its sidecar"):
        store.reusable("generation_response", "task-1", request, replace_changed=False)
    assert store.reusable("generation_response", "task-1", request, replace_changed=True) is None


# --------------------------------------------------------------------------- 5. llm_usage


PRICED_MODELS = (
    "id,model,provider,display_name,for_generation,for_evaluation,input_usd_per_mtok,output_usd_per_mtok\n"
    "gen-model-1,test/gen-model-1,test,gen-model-1,true,false,1.5,2\n"
    "gen-model-2,test/gen-model-2,test,gen-model-2,true,false,,\n"
    "judge-model-1,test/judge-model-1,test,judge-model-1,false,true,0.5,4\n"
)


def test_llm_usage_adds_up_every_paid_call_per_stage_and_model(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data", concepts=("alpha", "beta"), judges=("judge-model-1",))
    (root / "1_raw" / "llm_models.csv").write_text(PRICED_MODELS)
    openai_server.default_answer = lambda body: (
        "Clear and specific.\nSCORE: 7" if "judge" in body["model"] else "Bees trade honey futures at dawn."
    )
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    keys = pipe.generation_keys()
    assert len(keys) == 2 and len(pipe.pairs()) == 2
    openai_server.script(truncated("cut short"))  # paid for, rejected, then asked again
    assert not pipe.generate(keys[0]).success
    for key in keys:
        assert pipe.generate(key).success
    for pair in pipe.pairs():
        assert pipe.evaluate(pair).success

    assert pipe.materialize(["llm_usage"]).success

    table = read_table(table_path(root, "llm_usage", "results"))
    # What the server answered is what was paid for: sum its usage by model.
    answered = pd.DataFrame([{"model": r["model"], "calls": 1, **r["usage"]} for r in openai_server.responses])
    sent = answered.groupby("model").sum()
    assert len(openai_server.responses) == 5
    rows = table.set_index("model")
    assert list(table["stage"]) == ["generation", "generation", "evaluation"]
    assert list(table["model_id"]) == ["gen-model-1", "gen-model-2", "judge-model-1"]
    for column in ("calls", "prompt_tokens", "completion_tokens", "total_tokens"):
        assert rows[column].to_dict() == sent[column].to_dict(), column
    assert rows["responses"].to_dict() == {"test/gen-model-1": 1, "test/gen-model-2": 1, "test/judge-model-1": 2}
    assert rows["rejected"].to_dict() == {"test/gen-model-1": 1, "test/gen-model-2": 0, "test/judge-model-1": 0}
    assert rows["superseded"].sum() == 0 and rows["calls_without_usage"].sum() == 0
    g1, judge = sent.loc["test/gen-model-1"], sent.loc["test/judge-model-1"]
    g1_cost = (g1.prompt_tokens * 1.5 + g1.completion_tokens * 2) / 1e6
    judge_cost = (judge.prompt_tokens * 0.5 + judge.completion_tokens * 4) / 1e6
    assert rows.loc["test/gen-model-1", "cost_usd"] == pytest.approx(g1_cost)
    assert rows.loc["test/judge-model-1", "cost_usd"] == pytest.approx(judge_cost)
    assert math.isnan(rows.loc["test/gen-model-2", "cost_usd"])  # no price given
    event = instance.get_latest_materialization_event(dg.AssetKey("llm_usage"))
    metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    assert metadata["calls"] == 5 and metadata["responses"] == 4
    assert metadata["total_tokens"] == int(sent["total_tokens"].sum())
    assert metadata["models_without_price"] == "gen-model-2"


def test_usage_table_counts_superseded_and_rejected_calls_and_prices_per_model():
    def call(stage, status, model_id, p, c, backend="openai"):
        return {"stage": stage, "status": status, "model_id": model_id, "model": f"x/{model_id}",
                "backend": backend, "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    calls = [
        call("evaluation", "stored", "judge", 100, 10),
        call("generation", "stored", "gen", 10, 200),
        call("generation", "superseded", "gen", 12, 180),
        call("generation", "rejected", "gen", 10, 0),
        {**call("generation", "stored", "gen", 0, 0), **dict.fromkeys(["prompt_tokens", "completion_tokens", "total_tokens"])},
        call("generation", "stored", "offline-gen", 5, 5, backend="offline"),
    ]
    prices = model_prices(pd.DataFrame({"id": ["gen", "judge", "offline-gen"], "input_usd_per_mtok": ["2", "", "1"],
                                        "output_usd_per_mtok": [10.0, 3.0, 1.0]}))

    table = usage_table(calls, prices).set_index("model_id")

    assert list(table.index) == ["gen", "offline-gen", "judge"]
    gen = table.loc["gen"]
    assert (gen.calls, gen.responses, gen.superseded, gen.rejected, gen.calls_without_usage) == (4, 2, 1, 1, 1)
    assert (gen.prompt_tokens, gen.completion_tokens, gen.total_tokens) == (32, 380, 412)
    assert gen.cost_usd == pytest.approx((32 * 2 + 380 * 10) / 1e6)
    assert math.isnan(table.loc["judge", "cost_usd"])  # only one of the two prices
    assert table.loc["offline-gen", "cost_usd"] == 0.0


@pytest.mark.parametrize("value", ["cheap", "-1"])
def test_an_invalid_price_names_the_model(value):
    models = pd.DataFrame({"id": ["gen"], "input_usd_per_mtok": [value], "output_usd_per_mtok": ["1"]})
    with pytest.raises(ValueError, match="invalid input_usd_per_mtok for model\\(s\\) gen"):
        model_prices(models)


# --------------------------------------------------------------------------- 6. daydream run through faults


@pytest.mark.slow
def test_daydream_run_survives_transient_faults_stores_each_response_once_and_reruns_for_free(
    openai_server, tmp_path, monkeypatch, capsys
):
    # 3 combinations x 1 generator = 3 generations; x 1 judge = 3 evaluation pairs.
    experiment = write_experiment(tmp_path / "data", generators=("gen-model-1",), judges=("judge-model-1",))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(experiment))
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    openai_server.default_answer = lambda body: "A thoughtful combination of the ideas.\nSCORE: 6"
    # Every other request fails until each kind of transient fault has happened once. Only the
    # 429 says when to come back; the others wait for the client's backoff (1-2 s each).
    faults = [status(429, retry_after=1), status(500), html_200(), drop()]
    openai_server.script(*[b for fault in faults for b in (ok(), fault)])
    argv = ["run", "--data-root", str(experiment), "--concurrency", "1"]

    assert daydream(argv) == 0, capsys.readouterr().err

    partitions = 3 + 3
    generations = responses_in(experiment / "3_generation" / "generation_response")
    evaluations = sorted((experiment / "4_evaluation" / "evaluation_response").glob("*/*.txt"))
    assert (len(generations), len(evaluations)) == (3, 3)
    for path in generations + evaluations:
        record = read_provenance(path)
        assert record["response_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(openai_server.responses) == partitions  # one paid completion per partition
    assert len(openai_server.requests) == partitions + 4  # and a retry after each of the four faults
    for i in (1, 3, 5, 7):  # requests 2, 4, 6, 8: the fault, then the same request again
        assert openai_server.requests[i].body == openai_server.requests[i + 1].body
    attempts = [read_provenance(p)["attempts"] for p in generations + evaluations]
    assert sorted(attempts) == [1] * (partitions - 4) + [2] * 4
    leftovers = [p for p in experiment.rglob("*") if p.name.endswith(".tmp") or p.name in ("_rejected", "_superseded")]
    assert leftovers == []
    assert (experiment / "5_results" / "llm_usage.csv").is_file()

    assert daydream(argv) == 0, capsys.readouterr().err
    assert len(openai_server.requests) == partitions + 4  # the second run sends nothing

    for path in experiment.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    instance = dg.DagsterInstance.get()
    for run in instance.get_runs():
        assert not [e for e in instance.all_logs(run.run_id) if KEY in dg.serialize_value(e)]
