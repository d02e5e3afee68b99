"""`daydream run`'s head start (runner/executor/head_start.py): the generations are asked while the
command loads Dagster, then materialized by Dagster runs that reuse the stored answers. Real
`daydream run` processes against the real HTTP test server, and the real Dagster asset path for the
requests it must match."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daydreaming_dagster.analysis.budget import tokens_cost, worst_case_usd
from daydreaming_dagster.resources.io_managers import read_table
from daydreaming_dagster.runner.executor.head_start import ASKED_BY, prepared_requests
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path
from daydreaming_dagster.store.write_once import mismatched_fields
from tests import test_overlapping_runs as overlapping
from tests.experiment_factory import write_experiment
from tests.openai_server import truncated
from tests.pipeline import Pipeline
from tests.test_cli import DAYDREAM, explain
from tests.test_cost import write_prices
from tests.test_overlapping_runs import TIMEOUT, asked, fresh_home

REPO = Path(__file__).resolve().parents[1]
clean_env, paid_env = overlapping.clean_env, overlapping.paid_env  # the fixtures of those tests
# $1 in, $2 out per million tokens for every model of tests/experiment_factory.py, so that a cap can bound the calls.
PRICED = dict.fromkeys(("gen-model-1", "gen-model-2", "judge-model-1", "judge-model-2"), (1.0, 2.0))


def run(data: Path, env: dict, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [*DAYDREAM, "run", "--data-root", str(data), "--concurrency", "4", *extra]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def read_instance(home: Path, expression: str):
    """`expression` (over `instance`) evaluated in a fresh process on the instance in `home`, as JSON."""
    code = f"import json, dagster as dg\ninstance = dg.DagsterInstance.get()\nprint(json.dumps({expression}))\n"
    out = subprocess.run([sys.executable, "-c", code], env={"DAGSTER_HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def instance_runs(home: Path) -> list[dict]:
    """Every run of the instance: job, creation time, status."""
    return read_instance(home, "[dict(job=r.dagster_run.job_name, created=r.create_timestamp.timestamp(), "
                               "status=r.dagster_run.status.value) for r in instance.get_run_records()]")


def generation_metadata(home: Path) -> dict[str, dict]:
    """Some metadata of each generation_response materialization, by partition."""
    return read_instance(home, "{r.partition_key: {k: getattr(v, 'value', v) for k, v in r.asset_materialization.metadata.items()"
                               " if k in ('asked_by', 'reused', 'model_id')} for r in instance.fetch_materializations("
                               "dg.AssetKey('generation_response'), limit=1000).records}")


@pytest.mark.slow
def test_generations_are_asked_before_the_first_dagster_run_and_materialized_by_runs_that_reuse_them(
    tmp_path, paid_env, openai_server
):
    data = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs
    openai_server.latency_s = 0.3

    done = run(data, paid_env, tmp_path)

    assert done.returncode == 0, explain(done)
    counts = asked(openai_server)
    assert len(counts) == 6 + 12 and set(counts.values()) == {1}  # every answer paid once
    home = Path(paid_env["DAGSTER_HOME"])
    runs = instance_runs(home)
    assert runs and {r["status"] for r in runs} == {"SUCCESS"}
    generation_calls = [r.received_at for r in openai_server.requests if "Rate this idea" not in r.body["messages"][-1]["content"]]
    # The head start is real: generations were being asked before Dagster had created any run at all.
    assert min(generation_calls) < min(r["created"] for r in runs)
    metadata = generation_metadata(home)
    assert len(metadata) == 6 and all(m["reused"] is True and m["asked_by"] == ASKED_BY for m in metadata.values())
    for key in metadata:
        provenance = json.loads(sidecar_path(text_path(data, "generation_response", key)).read_text())
        assert provenance["asked_by"] == ASKED_BY and provenance["model_id"] == metadata[key]["model_id"]
    assert "6 asked while Dagster loaded" in done.stderr
    assert not list((data / "3_generation" / "generation_response").glob(".*.claim.json"))  # all released

    again = run(data, paid_env, tmp_path)  # a rerun: nothing to ask, nothing asked

    assert again.returncode == 0, explain(again)
    assert sum(asked(openai_server).values()) == 18
    assert "asked while Dagster loaded" not in again.stderr


@pytest.mark.slow
def test_an_answer_cut_off_in_the_head_start_is_paid_once_and_its_partition_fails_as_a_step_would(
    tmp_path, paid_env, openai_server
):
    data = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs
    openai_server.latency_s = 0.3
    cut: list[tuple[str, str]] = []  # (model, prompt)

    def cut_the_first_generation(body):
        prompt = body["messages"][-1]["content"]
        if "Rate this idea" not in prompt and not cut:
            cut.append((body["model"], prompt))
            return truncated()
        return None

    openai_server.behaviour_for = cut_the_first_generation

    done = run(data, paid_env, tmp_path)

    assert done.returncode == 1, explain(done)
    counts = asked(openai_server)
    assert set(counts.values()) == {1}  # the cut-off one was not asked again by its run
    assert counts[cut[0]] == 1 and len(counts) == 6 + 10
    kept = list((data / "3_generation" / "generation_response" / "_rejected").glob("*.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "The answer was cut"
    # The step's own sentence, from a run of the instance that failed for that partition alone.
    assert f"kept for inspection at {kept[0]}" in done.stderr and "re-running the partition asks the model again" in done.stderr
    assert "a batch of" not in done.stderr
    runs = instance_runs(Path(paid_env["DAGSTER_HOME"]))
    assert [r["status"] for r in runs].count("FAILURE") == 1
    assert len(generation_metadata(Path(paid_env["DAGSTER_HOME"]))) == 5

    again = run(data, paid_env, tmp_path)  # re-running it asks the model again, as the sentence says

    assert again.returncode == 0, explain(again)
    assert asked(openai_server)[cut[0]] == 2
    assert sum(asked(openai_server).values()) == 6 + 12 + 1


@pytest.mark.slow
def test_under_a_spending_cap_the_head_start_asks_what_the_cap_admits_and_leaves_the_rest_to_the_steps(
    tmp_path, paid_env, openai_server
):
    data = write_experiment(tmp_path / "data", generators=("gen-model-1",), judges=("judge-model-1",))  # 3 + 3 calls
    write_prices(data, PRICED)
    openai_server.latency_s = 0.5
    requests = prepared_requests(Settings(data_root=data, backend="openai", base_url=openai_server.base_url))
    worst = max(worst_case_usd(len(r.prompt), r.max_tokens, (1.0, 2.0), None) for _, r in requests)
    cap = 2.5 * worst  # two generations in flight at their worst case fit; a third waits for their answers

    done = run(data, paid_env, tmp_path, "--max-cost", f"{cap:.6f}")

    assert done.returncode == 0, explain(done)
    assert sum(asked(openai_server).values()) == 3 + 3 and set(asked(openai_server).values()) == {1}
    spent = sum(tokens_cost(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"], (1.0, 2.0)) for r in openai_server.responses)
    assert spent <= cap
    sidecars = [json.loads(p.read_text()) for p in (data / "3_generation" / "generation_response").glob("*.json")]
    # The head start asked the two the cap admitted at once; the third was left to its step, which waited.
    assert sorted("asked_by" in s for s in sidecars) == [False, True, True]
    assert "2 asked while Dagster loaded" in done.stderr


@pytest.mark.slow
def test_the_head_start_stands_aside_when_off(tmp_path, paid_env, openai_server):
    data = write_experiment(tmp_path / "data", generators=("gen-model-1",), judges=("judge-model-1",))

    done = run(data, {**paid_env, "DAYDREAM_HEAD_START": "off"}, tmp_path)

    assert done.returncode == 0, explain(done)
    assert sum(asked(openai_server).values()) == 3 + 3
    for sidecar in (data / "3_generation" / "generation_response").glob("*.json"):
        assert "asked_by" not in json.loads(sidecar.read_text())
    assert "asked while Dagster loaded" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["instance", "experiment"])
def test_a_broken_instance_or_experiment_gets_no_call(tmp_path, paid_env, openai_server, broken):
    data = write_experiment(tmp_path / "data")
    env = dict(paid_env)
    if broken == "instance":
        home = fresh_home(tmp_path / "broken_home", "run_storage:\n  module: no_such_module\n  class: Nothing\n  config: {}\n")
        env["DAGSTER_HOME"] = str(home)
    else:  # the generation side is fine; the judges' template is not: the task tables refuse it
        (data / "1_raw" / "evaluation_templates" / "judge-a.txt").write_text("Rate {{ response }} {% if %}")

    done = run(data, env, tmp_path)

    assert done.returncode != 0
    assert openai_server.requests == []
    assert not (data / "3_generation").exists() or not list((data / "3_generation").rglob("*.txt"))


@pytest.mark.parametrize("experiment_name", ["sample", "tricky"])
def test_the_head_start_builds_exactly_the_requests_the_generation_asset_sends(
    tmp_path, instance, openai_server, monkeypatch, experiment_name
):
    """Its answers are reused only if every fingerprint field matches what the asset would send."""
    data = tmp_path / "data"
    if experiment_name == "sample":
        shutil.copytree(REPO / "data" / "1_raw", data / "1_raw")
    else:  # text that a CSV round trip or a template could change, replicates, a description missing at one level
        write_experiment(data, concepts=("alpha", "beta", "gamma"), settings="generation_replicates = 2\n")
        descriptions = data / "1_raw" / "concepts" / "descriptions-paragraph"
        (descriptions / "alpha.txt").write_text('Quotes "inside", commas, and a trailing newline\n\n')
        (descriptions / "beta.txt").write_text("Ünïcödé ✓ and\r\nWindows line ends")
        (descriptions / "gamma.txt").unlink()
    monkeypatch.setenv("OPENROUTER_API_KEY", "unused")
    pipeline = Pipeline(data, instance, openai_server)
    pipeline.tables()
    keys = pipeline.generation_keys()
    assert pipeline.materialize_range(["generation_prompt"], keys).success

    requests = dict(prepared_requests(Settings(data_root=data, backend="openai", base_url=openai_server.base_url)))

    assert list(requests) == keys  # the task table's order, which the stream runs in
    tasks = read_table(table_path(data, "generation_tasks")).set_index("generation_task_id")
    config = pipeline.resources["experiment_config"]
    for key in keys:
        prompt = text_path(data, "generation_prompt", key).read_text(encoding="utf-8")
        sent_by_the_asset = config.generation_request(tasks.loc[key].to_dict(), prompt)
        assert mismatched_fields(sent_by_the_asset.fingerprint(), requests[key].fingerprint()) == [], key
    assert not openai_server.requests


@pytest.mark.slow
def test_ctrl_c_while_the_head_start_is_calling_stores_every_answer_already_paid_for(tmp_path, paid_env, openai_server):
    data = write_experiment(tmp_path / "data")
    openai_server.latency_s = 3.0  # the generations are in flight when Ctrl-C comes
    argv = [*DAYDREAM, "run", "--data-root", str(data), "--concurrency", "4"]
    runner = subprocess.Popen(argv, env=paid_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not openai_server.requests:
        assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGINT)  # as a terminal sends it: to the whole process group
    out, err = runner.communicate(timeout=TIMEOUT)

    assert runner.returncode == 130, err[-3000:]
    assert "stopped (Ctrl-C)" in err and "Traceback" not in err, err[-3000:]
    folder = data / "3_generation" / "generation_response"
    asked_models = {r.body["model"] for r in openai_server.requests}
    stored = [json.loads(p.read_text())["model"] for p in folder.glob("*.json")]
    # Every call that reached the server was paid for, and its answer is stored, whole.
    assert len(stored) == len(openai_server.requests) and set(stored) == asked_models, err[-2000:]
    assert not list(folder.glob(".*.claim.json")) and not list(folder.glob(".*.tmp"))

    openai_server.latency_s = 0.3
    resumed = run(data, paid_env, tmp_path)  # and nothing is paid twice afterwards

    assert resumed.returncode == 0, explain(resumed)
    assert len(openai_server.requests) == 6 + 12 and set(asked(openai_server).values()) == {1}


def test_a_run_told_of_a_cut_off_answer_fails_it_without_a_call_unless_its_request_changed(
    tmp_path, instance, openai_server, monkeypatch
):
    """The run config the runner gives a generation whose head-start answer was cut off
    (`ResponseConfig.asked_earlier`): the step's own failure, no second payment; a stale entry
    (the template was edited since) does not stop the new request from being asked."""
    data = write_experiment(tmp_path / "data")
    monkeypatch.setenv("OPENROUTER_API_KEY", "unused")
    pipeline = Pipeline(data, instance, openai_server)
    pipeline.tables()
    first, second = pipeline.generation_keys()[:2]
    requests = dict(prepared_requests(Settings(data_root=data, backend="openai", base_url=openai_server.base_url)))
    kept = str(tmp_path / "kept.txt")
    told = {
        first: {"request": requests[first].fingerprint_text(), "reason": "The answer was cut off.", "kept": kept},
        second: {"request": "a request made before the template changed", "reason": "Cut off.", "kept": kept},
    }
    config = {"ops": {"generation_response": {"config": {"asked_earlier": told}}}}

    failed = pipeline.materialize_range(["generation_prompt", "generation_response"], [first, second], run_config=config)

    assert not failed.success
    assert f"The answer was cut off. It is not stored as the response; it is kept for inspection at {kept}" in failure_text(failed)
    assert len(openai_server.requests) == 1  # only the second, whose request is not the one cut off
    assert text_path(data, "generation_response", second).exists()
    assert not text_path(data, "generation_response", first).exists()


def test_the_head_start_reads_the_experiment_and_builds_its_spending_guard_without_importing_dagster(tmp_path):
    """What it does before the instance has opened must not wait for Dagster's imports."""
    data = write_experiment(tmp_path / "data")
    write_prices(data, PRICED)
    code = (
        "import sys\n"
        "from daydreaming_dagster.runner.executor.head_start import _read_experiment, spending_guard\n"
        "from daydreaming_dagster.settings import Settings\n"
        f"config, requests, judges = _read_experiment(Settings(data_root={str(data)!r}, backend='openai', base_url='http://127.0.0.1:9/v1'))\n"
        "guard = spending_guard(config, 1.0, requests, judges)\n"
        "print(len(requests), type(guard).__name__, sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "SpendingGuard", "[]"]


@pytest.mark.slow
def test_two_runners_under_one_cap_at_once_never_pass_it_together_and_pay_each_call_once(tmp_path, paid_env, openai_server):
    """Both head starts and all the steps admit their calls through the same reservations."""
    data = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs
    write_prices(data, PRICED)
    openai_server.latency_s = 0.5
    requests = prepared_requests(Settings(data_root=data, backend="openai", base_url=openai_server.base_url))
    worst = min(worst_case_usd(len(r.prompt), r.max_tokens, (1.0, 2.0), None) for _, r in requests)
    openai_server.cost_for = lambda body, usage: worst / 2  # as the provider reports it: 18 calls would cost 9x worst
    cap = 4 * worst
    argv = [*DAYDREAM, "run", "--data-root", str(data), "--concurrency", "4", "--max-cost", f"{cap:.8f}"]

    runners = [overlapping.start(argv, paid_env, tmp_path), overlapping.start(argv, paid_env, tmp_path)]
    done = [overlapping.finish(r) for r in runners]

    assert {d.returncode for d in done} <= {0, 3} and 3 in {d.returncode for d in done}, [explain(d) for d in done]
    assert sum(r["usage"]["cost"] for r in openai_server.responses) <= cap
    assert set(asked(openai_server).values()) == {1}
    assert overlapping.leftovers(data) == []


@pytest.mark.slow
def test_a_capped_runner_killed_during_its_head_start_leaves_nothing_that_blocks_or_doubles_the_next_run(
    tmp_path, paid_env, openai_server
):
    """SIGKILL while the head start's admitted calls are in flight: their reservations and claims
    die with the process; the rerun under the same cap finishes within it, paying again only for
    the calls that were in flight."""
    data = write_experiment(tmp_path / "data")  # 6 generations, 12 pairs
    write_prices(data, PRICED)
    requests = prepared_requests(Settings(data_root=data, backend="openai", base_url=openai_server.base_url))
    worst = max(worst_case_usd(len(r.prompt), r.max_tokens, (1.0, 2.0), None) for _, r in requests)
    openai_server.cost_for = lambda body, usage: worst / 4
    cap = 8 * worst  # 18 calls + the 3 paid again cost ~5.3x worst; in flight at worst case, 8 at most fit
    openai_server.behaviour_for = lambda body: overlapping.delay(30) if body["model"] == "test/gen-model-2" else None
    env = {**paid_env, "DAYDREAM_CLAIM_LEASE_S": "3", "DAYDREAM_CLAIM_RENEW_S": "0.5", "DAYDREAM_CLAIM_POLL_S": "0.2"}
    argv = [*DAYDREAM, "run", "--data-root", str(data), "--concurrency", "8", "--max-cost", f"{cap:.8f}"]
    reservations = data / ".spend" / "in_flight"

    runner = overlapping.start(argv, env, tmp_path, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while sum(1 for model, _ in asked(openai_server) if model == "test/gen-model-2") < 3 or not list(reservations.glob("*")):
        assert time.monotonic() < deadline and runner.poll() is None, explain(overlapping.finish(runner))
        time.sleep(0.1)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait(timeout=60)
    runner.stdout.close(), runner.stderr.close()
    in_flight = {key for key in asked(openai_server) if key[0] == "test/gen-model-2"}
    assert list(reservations.glob("*"))  # the dead process's reservations are still on disk

    openai_server.behaviour_for = None
    resumed = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)

    assert resumed.returncode == 0, explain(resumed)
    counts = asked(openai_server)
    assert len(counts) == 6 + 12
    assert in_flight <= {key for key, n in counts.items() if n > 1}
    assert sum(n for n in counts.values() if n > 1) <= 2 * 8  # at most the calls in flight at the kill, again
    assert sum(r["usage"]["cost"] for r in openai_server.responses) <= cap
    assert not list(reservations.glob("*"))  # the dead process's reservations were dropped
    assert overlapping.leftovers_a_kill_explains_not(data) == []
