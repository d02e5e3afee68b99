"""`daydream run` on an s3:// data root, as real processes against the local S3 server
(tests/s3_server.py): the offline sample end to end, two runners on two
Dagster instances (two machines) sharing one bucket, and a runner SIGKILLed mid-call and run again
(the resume; tests/test_object_store.py resumes and replaces through a Dagster instance). The real
HTTP test server counts what was paid for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.experiment_factory import write_experiment
from tests.openai_server import delay
from tests.s3_server import SECRET_KEY
from tests.test_cli import DAYDREAM, explain
from tests.test_overlapping_runs import TIMEOUT, asked, clean_env, fresh_home, start  # noqa: F401 (fixture)
from tests.test_overlapping_runs import finish as finish_run

pytestmark = pytest.mark.slow
GENERATIONS = "3_generation/generation_response/"


def leftovers(s3, prefix: str) -> list[str]:
    return [k for k in s3.keys(prefix) if k.endswith((".claim.json", ".tmp"))]


def answer_of_claim(key: str) -> str:
    """The answer object a claim object stands beside: `<dir>/.<name>.claim.json` -> `<dir>/<name>.txt`."""
    folder, _, name = key.rpartition("/")
    return f"{folder}/{name[1:-len('.claim.json')]}.txt"


def answers_are_whole(s3, prefix: str) -> None:
    keys = s3.keys(prefix)
    for key in keys:
        if key.endswith(".txt") and "_response/" in key and "/_" not in key:
            record = json.loads(s3.read(key[: -len(".txt")] + ".json"))
            assert record["response_bytes"] == len(s3.read(key)), key


@pytest.fixture
def s3_env(clean_env, s3, tmp_path) -> dict[str, str]:  # noqa: F811
    return {**clean_env, **s3.env, "DAGSTER_HOME": str(fresh_home(tmp_path / "dagster_home"))}


def test_the_offline_sample_runs_on_s3_end_to_end(tmp_path, s3, s3_env):
    url = s3.upload(write_experiment(tmp_path / "data"), "sample")
    shutil.rmtree(tmp_path / "data")  # the experiment is only in the bucket now
    run = [*DAYDREAM, "run", "--offline", "--data-root", url]
    first = subprocess.run(run, env=s3_env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert first.returncode == 0, explain(first)
    assert f"report: {url}/offline/5_results/report.html" in first.stdout
    keys = s3.keys("sample/offline/")
    assert len([k for k in keys if k.startswith(f"sample/offline/{GENERATIONS}") and k.endswith(".txt")]) == 6
    assert "sample/offline/5_results/report.html" in keys and "sample/offline/5_results/score_heatmap.png" in keys
    assert not list(tmp_path.rglob("*.txt")), "nothing of the experiment is written to local disk"
    assert not leftovers(s3, "sample/")
    answers_are_whole(s3, "sample/")
    for key in s3.keys():
        assert SECRET_KEY.encode() not in s3.read(key), key
    assert SECRET_KEY not in first.stdout + first.stderr
    plan = subprocess.run([*DAYDREAM, "plan", "--offline", "--data-root", url], env=s3_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert plan.returncode == 0 and "generation" in plan.stdout, explain(plan)


def test_two_runners_on_two_instances_sharing_a_bucket_pay_once(tmp_path, s3, s3_env, openai_server):
    url = s3.upload(write_experiment(tmp_path / "data"), "shared")  # 6 generations, 12 pairs
    openai_server.latency_s = 0.5
    openai_server.default_answer = lambda body: f"An answer by {body['model']}: {body['messages'][-1]['content'][-60:]}\nSCORE: 6"
    env = {**s3_env, "OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": openai_server.base_url}
    run = [*DAYDREAM, "run", "--data-root", url, "--concurrency", "4"]
    # Two machines: each its own Dagster instance, so only the claims in the bucket keep them apart.
    runners = [start(run, {**env, "DAGSTER_HOME": str(fresh_home(tmp_path / f"home{i}"))}, tmp_path) for i in (1, 2)]
    done = [finish_run(r) for r in runners]
    for d in done:
        assert d.returncode == 0, explain(d)
    assert len(openai_server.requests) == 6 + 12
    assert max(asked(openai_server).values()) == 1
    assert not leftovers(s3, "shared/")
    answers_are_whole(s3, "shared/")


def test_a_runner_killed_mid_call_on_s3_resumes_paying_at_most_once_more(tmp_path, s3, s3_env, openai_server):
    url = s3.upload(write_experiment(tmp_path / "data"), "killed")
    openai_server.default_answer = lambda body: f"An answer by {body['model']}: {body['messages'][-1]['content'][-60:]}\nSCORE: 6"
    openai_server.behaviour_for = lambda body: delay(30) if body["model"] == "test/gen-model-2" else None
    env = {**s3_env, "OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": openai_server.base_url,
           "DAYDREAM_CLAIM_LEASE_S": "3", "DAYDREAM_CLAIM_RENEW_S": "0.5", "DAYDREAM_CLAIM_POLL_S": "0.2"}
    run = [*DAYDREAM, "run", "--data-root", url, "--concurrency", "8"]
    prefix = f"killed/{GENERATIONS}"

    def stored() -> list[str]:
        return [k for k in s3.keys(prefix) if k.endswith(".txt") and "/_" not in k[len(prefix):]]

    runner = start(run, env, tmp_path, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while len(stored()) < 3 or len(openai_server.requests) < 6:
        assert time.monotonic() < deadline and runner.poll() is None, explain(finish_run(runner))
        time.sleep(0.2)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner, its forkserver and its workers
    runner.wait(timeout=60)
    runner.stdout.close()
    runner.stderr.close()
    in_flight = {key for key, n in asked(openai_server).items() if key[0] == "test/gen-model-2"}
    assert len(in_flight) == 3 and len(stored()) == 3
    # The dead runner's claims: one per call in flight, plus any beside an answer stored just before the kill.
    claims = [k for k in s3.keys(prefix) if k.endswith(".claim.json")]
    answers = set(stored())
    beside_answers = [k for k in claims if answer_of_claim(k) in answers]
    assert len(claims) - len(beside_answers) == 3

    openai_server.behaviour_for = None
    resumed = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, explain(resumed)
    counts = asked(openai_server)
    assert len(counts) == 6 + 12
    assert {key for key, n in counts.items() if n > 1} == in_flight  # paid again: only what was in flight
    assert max(counts.values()) == 2
    assert "took over the claim of pid" in resumed.stderr
    # A runner killed between storing an answer and releasing its claim leaves that claim beside the
    # answer (judges stream behind generations, so some were answered at the kill). It is inert: a
    # stored answer is reused before any claim is read. Every other claim, and every temp object, is gone.
    keys = set(s3.keys("killed/"))
    orphaned = [k for k in leftovers(s3, "killed/") if not (k.endswith(".claim.json") and answer_of_claim(k) in keys)]
    assert not orphaned
    answers_are_whole(s3, "killed/")
    assert not [p for p in Path(tmp_path).rglob("*.claim.json")]
