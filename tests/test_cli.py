"""The command lines, as a researcher uses them: `daydream run/keys/score` and `dagster asset materialize`.

One offline run of the tiny experiment (module-scoped) serves the end-to-end, keys and dagster-CLI
tests. Every process runs with its working directory, DAGSTER_HOME and data root under tmp paths."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from daydreaming_dagster.experiment.ids import combo_id, evaluation_task_id, generation_task_id
from tests.experiment_factory import write_experiment

REPO = Path(__file__).resolve().parents[1]
DAYDREAM = [sys.executable, "-m", "daydreaming_dagster.runner.cli"]
DAGSTER = [str(Path(sys.executable).with_name("dagster"))]
TIMEOUT = 600

GENERATION_IDS = sorted(
    generation_task_id(combo_id(pair), "gen-a", model)
    for pair in itertools.combinations(["alpha", "beta", "gamma"], 2)
    for model in ("gen-model-1", "gen-model-2")
)
METHOD_IDS = [evaluation_task_id("judge-a", judge) for judge in ("judge-model-1", "judge-model-2")]
VALID_PAIRS = sorted(f"{m}|{g}" for g in GENERATION_IDS for m in METHOD_IDS)


def bytecode_cache(tmp_path_factory) -> Path:
    """Where the CLI processes keep compiled bytecode.

    The sandbox sets PYTHONDONTWRITEBYTECODE, so every process (the CLI, each runner worker, the
    dagster CLI) would compile Dagster and pandas from source: ~15 s of a cold offline run. With
    PYTHONPYCACHEPREFIX the .pyc files go to one folder in pytest's temporary root (next to the
    per-session folders, so later sessions reuse it); never into the repo or the venv. A .pyc is
    used only while its source's mtime and size match, so the cache cannot go stale."""
    basetemp = tmp_path_factory.getbasetemp()
    if basetemp.parent.name.startswith("pytest-of-"):  # pytest's default temporary root
        cache = basetemp.parent / "daydream-pycache"
        cache.mkdir(exist_ok=True)
        return cache
    return tmp_path_factory.mktemp("pycache")  # a custom --basetemp: stay inside it


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> dict[str, str]:
    """The environment minus every setting the CLI reads (key, backend, data root, instance)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAYDREAM_", "DAGSTER_", "OPENROUTER_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache(tmp_path_factory))
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


@dataclass
class OfflineRun:
    base: Path  # the working directory
    data: Path  # the data root (experiment in 1_raw)
    home: Path  # DAGSTER_HOME given to `daydream`
    env: dict[str, str]
    proc: subprocess.CompletedProcess

    @property
    def out(self) -> Path:
        return self.data / "offline"

    def generation_responses(self) -> list[Path]:
        return sorted((self.out / "3_generation" / "generation_response").glob("*.txt"))

    def evaluation_responses(self) -> list[Path]:
        return sorted((self.out / "4_evaluation" / "evaluation_response").glob("*/*.txt"))


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, base_env) -> OfflineRun:
    base = tmp_path_factory.mktemp("cli")
    data = write_experiment(base / "data")
    home = base / "dagster_home"
    home.mkdir()
    # the instance configuration the project ships (consolidated SQLite event log, pool limits)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**base_env, "DAGSTER_HOME": str(home)}
    proc = run_cli([*DAYDREAM, "run", "--offline", "--concurrency", "2", "--data-root", str(data)], env, base)
    return OfflineRun(base, data, home, env, proc)


def dagster_env(run: OfflineRun) -> dict[str, str]:
    return {
        **run.env,
        "DAGSTER_HOME": str(run.home / "offline"),
        "DAYDREAM_BACKEND": "offline",
        "DAYDREAM_DATA_ROOT": str(run.data),
    }


# --------------------------------------------------------------------------- a. offline end-to-end


@pytest.mark.slow
def test_offline_run_materializes_everything(offline_run: OfflineRun):
    run = offline_run
    assert run.proc.returncode == 0, explain(run.proc)

    generations = run.generation_responses()
    assert sorted(p.stem for p in generations) == GENERATION_IDS
    evaluations = run.evaluation_responses()
    assert sorted(f"{p.stem}|{p.parent.name}" for p in evaluations) == VALID_PAIRS
    for path in generations + evaluations:
        assert path.read_text().strip(), path
        assert path.with_suffix(".json").is_file(), f"no provenance sidecar for {path}"

    parsed = pd.read_csv(run.out / "5_results" / "parsed_scores.csv", dtype={"score": float})
    assert len(parsed) == 12
    assert sorted(parsed["evaluation_task_id"] + "|" + parsed["generation_task_id"]) == VALID_PAIRS
    assert parsed["score"].notna().all()
    assert parsed["score"].between(0, 10).all()
    assert (run.out / "5_results" / "evaluation_summary.csv").is_file()

    # the dry run wrote nothing where real results go, and used its own instance
    assert sorted(p.name for p in run.data.iterdir()) == ["1_raw", "offline"]
    assert (run.home / "offline").is_dir()
    # it says where the results are
    assert str(run.out / "5_results") in run.proc.stdout
    assert f"report: {run.out / '5_results' / 'report.html'}" in run.proc.stdout
    assert (run.out / "5_results" / "report.html").read_text().startswith("<!doctype html>")
    assert "generation: 6 ran" in run.proc.stdout and "evaluation: 12 ran" in run.proc.stdout


# --------------------------------------------------------------------------- b. no key


def test_run_without_key_stops_before_any_work(tmp_path: Path, base_env):
    data = write_experiment(tmp_path / "data")
    env = {**base_env, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    proc = run_cli([*DAYDREAM, "run", "--data-root", str(data)], env, tmp_path)
    assert proc.returncode != 0
    assert "OPENROUTER_API_KEY" in proc.stderr and "--offline" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in data.iterdir()) == ["1_raw"]
    assert not (tmp_path / "dagster_home" / "storage").exists()


# --------------------------------------------------------------------------- a. (second run), d. keys, c. dagster CLI

UNKNOWN_METHOD = "nope__judge"


def response_state(run: OfflineRun) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.generation_responses() + run.evaluation_responses()}


@dataclass
class AfterRun:
    again: subprocess.CompletedProcess  # a second `daydream run --offline`
    keys: subprocess.CompletedProcess  # `daydream keys --offline`
    valid: subprocess.CompletedProcess  # `dagster asset materialize` of a valid pair
    invalid: subprocess.CompletedProcess  # ... of a pair whose method key is not registered
    responses_before: dict[Path, tuple[int, bytes]]
    valid_key: str
    invalid_key: str
    prompt: Path  # the evaluation_prompt file of the valid pair (deleted before materializing)


@pytest.fixture(scope="module")
def after_run(offline_run: OfflineRun) -> AfterRun:
    """After the first run, side by side: a second run, `daydream keys`, and two `dagster asset
    materialize` runs. Each process spends most of its time loading the code location, so starting
    them together saves time; none of them writes what another reads (the second run rewrites the
    task tables with the same content, atomically, and the results)."""
    run = offline_run
    assert run.proc.returncode == 0, explain(run.proc)
    responses_before = response_state(run)
    valid_key = VALID_PAIRS[-1]
    method, g = valid_key.split("|")
    invalid_key = f"{UNKNOWN_METHOD}|{g}"
    prompt = run.out / "4_evaluation" / "evaluation_prompt" / g / f"{method}.txt"
    assert prompt.is_file()
    prompt.unlink()  # so that the file proves the dagster CLI wrote it

    materialize = [*DAGSTER, "asset", "materialize", "-m", "daydreaming_dagster.definitions", "--select", "evaluation_prompt"]
    commands = {
        "again": ([*DAYDREAM, "run", "--offline", "--concurrency", "2", "--data-root", str(run.data)], run.env),
        "keys": ([*DAYDREAM, "keys", "--offline", "--data-root", str(run.data)], run.env),
        # No executor config: the code location's own executor is in-process (definitions.py), and
        # the multiprocess executor's `in_process` selector is not valid config for it.
        "valid": ([*materialize, "--partition", valid_key], dagster_env(run)),
        "invalid": ([*materialize, "--partition", invalid_key], dagster_env(run)),
    }
    procs = {
        name: subprocess.Popen(args, env=env, cwd=run.base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (args, env) in commands.items()
    }
    done = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=TIMEOUT)
        done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return AfterRun(**done, responses_before=responses_before, valid_key=valid_key, invalid_key=invalid_key, prompt=prompt)


@pytest.mark.slow
def test_second_offline_run_calls_no_llm(offline_run: OfflineRun, after_run: AfterRun):
    again = after_run.again
    assert again.returncode == 0, explain(again)
    assert "generation: 0 ran, 6 skipped, 0 failed" in again.stdout
    assert "evaluation: 0 ran, 12 skipped, 0 failed" in again.stdout
    # nothing they are built from changed: neither the task tables nor the results are rebuilt
    assert "task_tables: 0 ran, 1 skipped" in again.stdout and "results: 0 ran, 1 skipped" in again.stdout
    # every paid response is the same file, untouched
    assert response_state(offline_run) == after_run.responses_before


@pytest.mark.slow
def test_keys_prints_exactly_the_valid_pairs(after_run: AfterRun):
    proc = after_run.keys
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert sorted(lines) == VALID_PAIRS
    assert len(lines) == len(set(lines)) == 12


@pytest.mark.slow
def test_keys_filters_by_generation_task(offline_run: OfflineRun, monkeypatch, capsys):
    from daydreaming_dagster.runner import cli

    # `keys` exports its settings into os.environ and reads ./.env: pin both to this test
    monkeypatch.chdir(offline_run.base)
    for name in ("DAYDREAM_DATA_ROOT", "DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "OPENROUTER_API_KEY"):
        monkeypatch.setenv(name, "placeholder")  # records the original value for teardown
        monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(offline_run.home))
    g = GENERATION_IDS[2]
    assert cli.main(["keys", "--offline", "--data-root", str(offline_run.data), "--generation-task", g]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [f"{m}|{g}" for m in METHOD_IDS]
    assert cli.main(["keys", "--offline", "--data-root", str(offline_run.data), "--evaluation-task", METHOD_IDS[0]]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [f"{METHOD_IDS[0]}|{g}" for g in GENERATION_IDS]


@pytest.mark.slow
def test_dagster_cli_materializes_a_printed_pair(offline_run: OfflineRun, after_run: AfterRun):
    assert after_run.valid_key in after_run.keys.stdout.splitlines()
    assert after_run.valid.returncode == 0, explain(after_run.valid)
    g = after_run.valid_key.split("|")[1]
    generation_text = (offline_run.out / "3_generation" / "generation_response" / f"{g}.txt").read_text()
    assert generation_text in after_run.prompt.read_text()


@pytest.mark.slow
def test_dagster_cli_refuses_an_unknown_pair(offline_run: OfflineRun, after_run: AfterRun):
    proc = after_run.invalid
    assert proc.returncode != 0, explain(proc)
    assert after_run.invalid_key in proc.stdout + proc.stderr
    g = after_run.invalid_key.split("|")[1]
    assert not (offline_run.out / "4_evaluation" / "evaluation_prompt" / g / f"{UNKNOWN_METHOD}.txt").exists()


# --------------------------------------------------------------------------- e. score


def test_score_prints_file_tab_score(tmp_path: Path, base_env):
    scored = tmp_path / "scored.txt"
    scored.write_text("The idea is coherent and specific.\nSCORE: 7\n")
    unscored = tmp_path / "unscored.txt"
    unscored.write_text("I cannot decide on a verdict for this one.\n")
    proc = run_cli([*DAYDREAM, "score", str(scored), str(unscored)], base_env, tmp_path)
    assert proc.returncode == 0, explain(proc)
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines[0] == [str(scored), "7"]
    # the second field is "unparsed", possibly followed by the reason in parentheses
    assert lines[1][0] == str(unscored) and len(lines[1]) == 2
    assert re.fullmatch(r"unparsed( \(.+\))?", lines[1][1])
    assert len(lines) == 2
