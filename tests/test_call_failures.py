"""How `daydream run` ends when calls fail: each request is asked once per command (the head start
and the step share one retry budget), a refused key or an API that never answers stops everything
at once, a call ends within its deadline, an answer far over its token limit is paid but never
judged, and the spending cap counts what answers really cost. Real `daydream run` processes against
the real HTTP test server."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from daydreaming_dagster.analysis.budget import price_table
from daydreaming_dagster.calls.guard import SpendingCapReached, SpendingGuard
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.spend import paid_tallies
from daydreaming_dagster.store.write_once import write_response_once
from tests import test_overlapping_runs as overlapping
from tests.experiment_factory import write_experiment
from tests.openai_server import delay, ok, status
from tests.test_cli import DAYDREAM, explain
from tests.test_overlapping_runs import TIMEOUT, asked

pytestmark = pytest.mark.slow
clean_env, paid_env = overlapping.clean_env, overlapping.paid_env  # the fixtures of those tests

JUDGE_MARK = "Rate this idea"  # in every judge prompt of tests/experiment_factory.py


def run(data: Path, env: dict, cwd: Path, *extra: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    argv = [*DAYDREAM, "run", "--data-root", str(data), "--concurrency", "4", *extra]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def judge_calls(server) -> int:
    return sum(1 for r in server.requests if isinstance(r.body, dict) and JUDGE_MARK in r.body["messages"][-1]["content"])


@pytest.mark.parametrize("head_start", ["on", "off"])
def test_a_refused_key_asks_each_request_at_most_once_and_stops_the_whole_run(
    tmp_path, paid_env, openai_server, head_start
):
    """HTTP 401: no other call gets past it. Before, every generation was asked twice (the head
    start, then its step) and the run went on to the next ones."""
    data = write_experiment(tmp_path / "data", concepts=("alpha", "beta", "gamma", "delta", "epsilon"))  # 20 generations
    openai_server.behaviour_for = lambda body: status(401)

    done = run(data, {**paid_env, "DAYDREAM_HEAD_START": head_start}, tmp_path)

    assert done.returncode == 1, explain(done)
    counts = asked(openai_server)
    assert counts and set(counts.values()) == {1}, counts  # no request asked twice
    assert judge_calls(openai_server) == 0
    # At most what two runs of --concurrency 4 calls each had started or queued when the first
    # refusal came back; the other generations are never asked.
    assert len(counts) <= 8, len(counts)
    line = last_line(done.stderr)
    assert "401" in line and "nothing more was asked" in line, explain(done)


def test_a_failed_call_of_the_head_start_is_not_asked_again_by_its_run(tmp_path, paid_env, openai_server):
    """One command asks one request once: the step fails the generation in the head start's words."""
    data = write_experiment(tmp_path / "data")
    refused_prompt = "Alpha"  # the first combination's prompts (alpha + beta, alpha + gamma)
    openai_server.behaviour_for = lambda body: (
        status(400, message="this prompt is refused") if refused_prompt in body["messages"][-1]["content"]
        and JUDGE_MARK not in body["messages"][-1]["content"] else None
    )

    done = run(data, paid_env, tmp_path)

    assert done.returncode == 1, explain(done)
    counts = asked(openai_server)
    assert set(counts.values()) == {1}, ([k for k, v in counts.items() if v > 1], explain(done))  # each once
    refused = [k for k in counts if refused_prompt in k[1] and JUDGE_MARK not in k[1]]
    assert len(refused) == 4  # two combinations with alpha x two generators, each asked once
    assert "this prompt is refused" in done.stderr


def test_a_server_that_never_answers_ends_the_run_within_a_call_deadline(tmp_path, paid_env, openai_server):
    data = write_experiment(tmp_path / "data")
    openai_server.behaviour_for = lambda body: delay(120)
    env = {**paid_env, "DAYDREAM_REQUEST_TIMEOUT_S": "1", "DAYDREAM_CALL_DEADLINE_S": "2.5"}

    started = time.monotonic()
    done = run(data, env, tmp_path, timeout=120)
    elapsed = time.monotonic() - started

    assert done.returncode == 1, explain(done)
    assert elapsed < 60, elapsed  # a deadline, not 6 attempts of 120 s for each of the 6 generations
    counts = asked(openai_server)
    assert judge_calls(openai_server) == 0
    assert max(counts.values()) <= 3, counts  # one call's attempts within its deadline, never a second call
    line = last_line(done.stderr)
    assert "gave no answer" in line and "DAYDREAM_CALL_DEADLINE_S" in line, explain(done)


def test_an_answer_far_over_its_token_limit_is_paid_kept_aside_and_never_judged(tmp_path, paid_env, openai_server):
    """A provider that ignored max_tokens (300 here) sent a 5,000-word answer for one generation."""
    data = write_experiment(tmp_path / "data")
    huge = "word " * 5_000
    openai_server.behaviour_for = lambda body: ok(huge) if "Alpha" in body["messages"][-1]["content"] and (
        "Beta" in body["messages"][-1]["content"]) and body["model"] == "test/gen-model-1" else None

    done = run(data, paid_env, tmp_path)

    assert done.returncode == 1, explain(done)
    assert "far over its token limit: 5,000 completion tokens reported against max_tokens=300" in done.stderr
    judge_prompts = [r.body["messages"][-1]["content"] for r in openai_server.requests if JUDGE_MARK in r.body["messages"][-1]["content"]]
    assert judge_prompts and not any(huge in p for p in judge_prompts)
    assert len(judge_prompts) == 5 * 2  # every other generation x 2 judges
    rejected = list((data / "3_generation" / "generation_response" / "_rejected").glob("*.txt"))
    assert len(rejected) == 1 and rejected[0].read_text() == huge
    tallies = paid_tallies(data)
    generation_calls = sum(t.calls for (asset, _, _), t in tallies.items() if asset == "generation_response")
    assert generation_calls == 6  # the rejected answer counts in what was paid


def test_an_answer_that_cost_more_than_its_worst_case_counts_against_the_cap(tmp_path):
    """The cap bounds calls by their worst case; a provider that billed past it (here a reported cost
    far above the prices' worst case) must still stop the calls once the actual spend passes the cap."""
    data = write_experiment(tmp_path / "data")
    prices = price_table_of({"gen-model-1": (1.0, 2.0)})
    guard = SpendingGuard(cap_usd=1.0, output_root=data, prices=prices)
    request = LLMRequest("gen-model-1", "test/gen-model-1", "A short prompt.", 0.5, 300)

    guard.admit("first", request)
    path = text_path(data, "generation_response", "first")
    path.parent.mkdir(parents=True, exist_ok=True)
    provenance = {**request.fingerprint(), "backend": "openai", "prompt_tokens": 4, "completion_tokens": 10,
                  "provider_cost_usd": 2.5}
    write_response_once(path, "An answer.", provenance)
    guard.settle("first", provenance)

    with pytest.raises(SpendingCapReached) as refused:
        guard.admit("second", request)
    assert "spending cap reached: $2.50 spent" in str(refused.value)
    assert not refused.value.temporary


def price_table_of(prices: dict[str, tuple[float, float]]):
    table = pd.DataFrame(
        [{"model_id": m, "input_usd_per_mtok": i, "output_usd_per_mtok": o} for m, (i, o) in prices.items()]
    )
    return price_table(table)
