"""Batch mode when things go wrong: a runner killed (SIGKILL, real subprocess) while batches are
open, a submitter that died between creating a batch and recording it, a live run beside an open
batch, the spending cap counting a submitted batch at its worst case, and two batch runs at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import dagster as dg
import pytest

from daydreaming_dagster.llm.batch_backend import jsonl_line
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.store.batch_ledger import BatchLedger, file_digest
from daydreaming_dagster.store.reservations import in_flight
from tests.batch_fixtures import RUN, batch_asked, materialization_counts
from tests.pipeline import Pipeline
from tests.test_cli import DAYDREAM


@pytest.mark.slow
def test_a_runner_killed_while_batches_are_open_resubmits_nothing_and_collects_everything(
    batched, openai_server, tmp_path, capsys
):
    openai_server.batches.delay_s = 3600  # the generation batches stay open until the runner is killed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runner = subprocess.Popen([*DAYDREAM, *RUN, "--batch", "--wait"], env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = BatchLedger(batched)
    deadline = time.monotonic() + 300
    while len([r for r in ledger.records() if r["state"] == "submitted"]) < 2 or openai_server.batches.polls < 1:
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.1)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait(timeout=60)
    assert len(list(batched.rglob(".*.claim.json"))) == 6  # every generation is held by its batch

    openai_server.batches.delay_s = 0.2
    assert daydream([*RUN, "--batch", "--wait"]) == 0, capsys.readouterr().err

    assert openai_server.batches.created == 4  # the two open ones were picked up, not submitted again
    assert set(batch_asked(openai_server).values()) == {1} and len(batch_asked(openai_server)) == 18
    assert openai_server.requests == []
    assert len(materialization_counts("evaluation_response")) == 12
    assert list(batched.rglob(".*.claim.json")) == []


def test_a_batch_created_but_not_recorded_is_adopted_not_submitted_again(batched, openai_server, capsys):
    # What a submitter killed between "batch created" and "batch recorded" leaves: an intended record
    # older than a claim lease, and a batch at the provider whose metadata names it.
    assert daydream([*RUN, "--batch"]) == 0  # submits both generation batches
    ledger = BatchLedger(batched)
    record = next(r for r in ledger.records() if r["model_id"] == "gen-model-1")
    requests = {k: LLMRequest(**item["request"]) for k, item in record["items"].items()}
    assert file_digest(b"".join(jsonl_line(k, r) for k, r in requests.items())) == record["file_sha256"]
    ledger.write({**{k: v for k, v in record.items() if k not in ("batch_id", "submitted")},
                  "state": "intended", "created": time.time() - 3600})
    created = openai_server.batches.created

    assert daydream([*RUN, "--batch", "--wait"]) == 0, capsys.readouterr().err

    assert openai_server.batches.created == created + 2  # only the two judge batches
    assert ledger.read(record["submission"])["batch_id"] == record["batch_id"]
    assert len(batch_asked(openai_server)) == 18 and set(batch_asked(openai_server).values()) == {1}


def test_a_live_run_leaves_the_partitions_an_open_batch_holds_to_it(batched, openai_server, instance, capsys):
    openai_server.batches.delay_s = 3600
    assert daydream([*RUN, "--batch"]) == 0
    capsys.readouterr()

    assert daydream(RUN) == 0  # a plain live run of the same experiment
    err = capsys.readouterr().err
    assert openai_server.requests == []  # nothing asked live: every generation is in an open batch
    assert "6 left to another run (batch batch_" in err

    assert daydream(["batches"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:3] == ["batch", "asset", "model"] and len(listed) == 3
    assert all(" generation_response " in line and " 0/0/3 " in line and "in_progress" in line for line in listed[1:])

    pipeline = Pipeline(batched, instance, openai_server)  # and a plain Dagster run of one partition
    pipeline.tables()
    key = pipeline.generation_keys()[0]
    result = pipeline.generate(key)
    assert not result.success and openai_server.requests == []
    assert f"generation_response partition '{key}' is in provider batch batch_" in failure_text(result)
    assert key not in instance.get_materialized_partitions(dg.AssetKey("generation_response"))


def test_a_submitted_batch_counts_against_the_cap_at_its_worst_case(batched, openai_server, capsys):
    openai_server.batches.delay_s = 3600
    assert daydream([*RUN, "--batch", "--max-cost", "0.5"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("spending cap reached: $0 spent, and a batch of 3 gen-model-1 call(s) may cost up to")
    assert "at the batch price" in last and "so nothing was submitted" in last
    assert openai_server.batches.files_uploaded == 0 and list(batched.rglob(".*.claim.json")) == []

    assert daydream([*RUN, "--batch", "--max-cost", "100"]) == 0
    flights = in_flight(batched)
    assert len(flights) == 2 and all(f.worst_usd > 0 for f in flights)
    assert {f.what for f in flights} == {f"batch {r['submission']}" for r in BatchLedger(batched).open_records()}

    capsys.readouterr()
    for record in BatchLedger(batched).open_records():
        assert daydream(["batches", "--cancel", record["batch_id"]]) == 0
        assert capsys.readouterr().out.startswith(f"batch {record['batch_id']}: cancelled")
    assert in_flight(batched) == [] and list(batched.rglob(".*.claim.json")) == []  # nothing holds or counts any more
    assert {r["provider_state"] for r in BatchLedger(batched).records()} == {"cancelled"}


@pytest.mark.slow
def test_two_batch_runs_started_together_submit_each_request_once(batched, openai_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [*DAYDREAM, *RUN, "--batch", "--wait"]
    runners = [subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    done = [(r.wait(timeout=600), *r.communicate()) for r in runners]

    assert [code for code, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    assert set(batch_asked(openai_server).values()) == {1} and len(batch_asked(openai_server)) == 18
    assert openai_server.requests == []  # nothing asked live
    assert openai_server.batches.created == 4  # one per model: the second runner found the requests claimed
    for asset, partitions in (("generation_response", 6), ("evaluation_response", 12)):
        counts = materialization_counts(asset)
        assert len(counts) == partitions and set(counts.values()) == {1}, (asset, counts)
    assert list(batched.rglob(".*.claim.json")) == []
