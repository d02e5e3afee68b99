"""Replicates: each one its own partition and its own paid call, made once; replicate 1 is exactly
what an experiment without replicates has (ids, keys, files, request fingerprints)."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter
from pathlib import Path

import pytest

from daydreaming_dagster.experiment.errors import ExperimentError
from daydreaming_dagster.experiment.ids import (
    combo_id,
    evaluation_task_id,
    generation_task_id,
    without_replicate,
)
from daydreaming_dagster.experiment.loaders import load_concepts, load_models, load_templates
from daydreaming_dagster.experiment.tasks import (
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
)
from daydreaming_dagster.llm.offline import JUDGE_NOISE, OfflineBackend, _offline_text
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.resources.config import ExperimentConfig
from daydreaming_dagster.runner.plan import make_plan
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.write_once import mismatched_fields, read_provenance
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, Pipeline

REPLICATES = "generation_replicates = 2\nevaluation_replicates = 3\n"


def test_replicate_one_has_the_id_of_the_task_and_later_replicates_add_a_part():
    assert generation_task_id("combo-2-abc", "gen-a", "m1") == "combo-2-abc__gen-a__m1"
    assert generation_task_id("combo-2-abc", "gen-a", "m1", 1) == "combo-2-abc__gen-a__m1"
    assert generation_task_id("combo-2-abc", "gen-a", "m1", 2) == "combo-2-abc__gen-a__m1__r2"
    assert evaluation_task_id("judge-a", "j1") == evaluation_task_id("judge-a", "j1", 1) == "judge-a__j1"
    assert evaluation_task_id("judge-a", "j1", 3) == "judge-a__j1__r3"
    assert without_replicate("judge-a__j1__r3", 2) == without_replicate("judge-a__j1", 2) == "judge-a__j1"
    # A judge whose model id looks like a replicate suffix is still one method, not a replicate.
    assert without_replicate("judge-a__r2", 2) == "judge-a__r2"
    with pytest.raises(ExperimentError, match="replicate 0 must be 1 or more"):
        generation_task_id("c", "t", "m", 0)


def _tables(root: Path, generation_replicates: int = 1, evaluation_replicates: int = 1):
    raw = root / "1_raw"
    combos = build_content_combinations(load_concepts(raw), 2, "paragraph")
    models = load_models(raw)
    if generation_replicates == evaluation_replicates == 1:  # the call an experiment without replicates makes
        generation = build_generation_tasks(combos, load_templates(raw, "generation"), models)
        return generation, build_evaluation_tasks(generation, load_templates(raw, "evaluation"), models)
    generation = build_generation_tasks(combos, load_templates(raw, "generation"), models, generation_replicates)
    evaluation = build_evaluation_tasks(generation, load_templates(raw, "evaluation"), models, evaluation_replicates)
    return generation, evaluation


def test_replicates_add_rows_and_leave_the_rows_of_replicate_one_as_they_are(experiment: Path):
    today_generation, today_evaluation = _tables(experiment)
    generation, evaluation = _tables(experiment, 2, 3)

    assert len(generation) == 2 * len(today_generation) and len(evaluation) == 2 * 3 * len(today_evaluation)
    first = generation[generation["generation_replicate"] == 1].reset_index(drop=True)
    assert first.equals(today_generation)
    pairs_of_firsts = evaluation[
        (evaluation["evaluation_replicate"] == 1) & evaluation["generation_task_id"].isin(today_generation["generation_task_id"])
    ].reset_index(drop=True)
    assert pairs_of_firsts.equals(today_evaluation)
    assert sorted(evaluation["evaluation_task_id"].unique()) == sorted(
        evaluation_task_id("judge-a", judge, r) for judge in ("judge-model-1", "judge-model-2") for r in (1, 2, 3)
    )
    second = generation[generation["generation_replicate"] == 2]
    assert (second["generation_task_id"] == today_generation["generation_task_id"].to_numpy() + "__r2").all()


def test_the_fingerprint_of_replicate_one_is_todays_and_later_replicates_differ_only_by_it():
    prompt = "Rate this."
    today = {
        "model_id": "j1",
        "model": "test/j1",
        "temperature": 0.1,
        "max_tokens": 200,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
    }
    first = LLMRequest("j1", "test/j1", prompt, 0.1, 200)
    assert first.fingerprint() == today == LLMRequest("j1", "test/j1", prompt, 0.1, 200, replicate=1).fingerprint()
    third = LLMRequest("j1", "test/j1", prompt, 0.1, 200, replicate=3)
    assert third.fingerprint() == {**today, "replicate": 3}
    # A sidecar stored before replicates existed answers replicate 1 and only replicate 1.
    stored_before = {**today, "finish_reason": "stop", "response_sha256": "..."}
    assert mismatched_fields(stored_before, first.fingerprint()) == []
    assert mismatched_fields(stored_before, third.fingerprint()) == ["replicate"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("evaluation_replicates = 0", "has an invalid evaluation_replicates: Input should be greater than or equal to 1"),
        ("generation_replicates = 101", "has an invalid generation_replicates: Input should be less than or equal to 100"),
        ('evaluation_replicates = "three"', 'sets evaluation_replicates = "three", a string; evaluation_replicates must be'),
    ],
)
def test_a_bad_replicate_count_fails_naming_the_file_and_the_setting(tmp_path: Path, line: str, message: str):
    root = write_experiment(tmp_path / "data", settings=line + "\n")
    with pytest.raises(ExperimentError) as info:
        ExperimentConfig.for_experiment(str(root), str(root))
    assert str(info.value).startswith(f"{root / '1_raw' / 'experiment.toml'} {message}")


def test_offline_replicates_sample_again_and_a_judge_stays_near_its_first_verdict():
    backend = OfflineBackend()
    idea = "Combine Alpha and Beta into a feedback loop between memory and attention."
    answers = [backend.complete(LLMRequest("g1", "g1", idea, 0.8, 300, replicate=r)).text for r in (1, 2, 3)]
    assert answers[0] == _offline_text("g1", idea)  # replicate 1: the answer an experiment without replicates got
    assert len(set(answers)) == 3

    judge_prompt = f"Rate this idea from 0 to 10 and end with SCORE: <n>.\n\n{idea}\n"
    scores = [
        int(backend.complete(LLMRequest("j1", "j1", judge_prompt, 0.0, 200, replicate=r)).text.rsplit("SCORE: ", 1)[1])
        for r in range(1, 9)
    ]
    assert all(abs(s - scores[0]) <= JUDGE_NOISE for s in scores) and len(set(scores)) > 1


def _counting_answers(server) -> Counter:
    """Answer every request with a text of its own; count the requests per (model, prompt)."""
    counts: Counter = Counter()
    lock = threading.Lock()
    numbers = itertools.count(1)

    def answer(body) -> str:
        with lock:
            counts[(body["model"], body["messages"][0]["content"])] += 1
            return f"Answer {next(numbers)}.\nSCORE: 5"

    server.default_answer = answer
    return counts


def test_n_replicates_are_n_distinct_paid_calls_made_once_and_only_once(tmp_path, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data", generators=("gen-model-1",), settings=REPLICATES)
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    counts = _counting_answers(openai_server)

    today = [
        generation_task_id(combo_id(pair), "gen-a", "gen-model-1")
        for pair in itertools.combinations(["alpha", "beta", "gamma"], 2)
    ]
    assert sorted(pipe.generation_keys()) == sorted(today + [g + "__r2" for g in today])
    methods = sorted(instance.get_dynamic_partitions("evaluation_tasks"))
    assert methods == sorted(
        evaluation_task_id("judge-a", j, r) for j in ("judge-model-1", "judge-model-2") for r in (1, 2, 3)
    )
    pipe.generate_all()
    pipe.evaluate_all()

    generations, pairs = 3 * 2, 3 * 2 * (2 * 3)
    assert len(openai_server.requests) == generations + pairs == 42
    # The same prompt asked again per replicate: each generation prompt twice; each judge prompt
    # (a judge, a generation answer) three times, once per replicate of the method.
    generation_prompts = {k: n for k, n in counts.items() if k[0] == "test/gen-model-1"}
    assert len(generation_prompts) == 3 and set(generation_prompts.values()) == {2}
    judge_prompts = {k: n for k, n in counts.items() if k[0] != "test/gen-model-1"}
    assert len(judge_prompts) == 2 * 6 and set(judge_prompts.values()) == {3}

    # Replicate 1 lives where an answer without replicates lives, with today's fingerprint fields.
    for key in today:
        path = text_path(root, "generation_response", key)
        assert path.is_file() and "replicate" not in read_provenance(path)
        assert read_provenance(text_path(root, "generation_response", key + "__r2"))["replicate"] == 2
    pair = {"generation_tasks": today[0], "evaluation_tasks": "judge-a__judge-model-1__r3"}
    assert read_provenance(text_path(root, "evaluation_response", pair))["replicate"] == 3
    assert "replicate" not in read_provenance(text_path(root, "evaluation_response", {**pair, "evaluation_tasks": "judge-a__judge-model-1"}))

    # Once and only once: running everything again reuses every stored answer, and `daydream plan`
    # (here without the instance, so from the stored answers alone) finds each replicate's answer.
    pipe.generate_all()
    pipe.evaluate_all()
    assert len(openai_server.requests) == 42
    plan = make_plan(ExperimentConfig.for_experiment(str(root), str(root)), None)
    assert [(s.partitions, s.reused, len(s.calls)) for s in plan.stages] == [(6, 6, 0), (36, 36, 0)]


def test_the_plan_counts_every_replicate_as_a_call(tmp_path: Path):
    root = write_experiment(tmp_path / "data", settings=REPLICATES)  # 6 tasks, 12 pairs without replicates
    plan = make_plan(ExperimentConfig.for_experiment(str(root), str(root)), None)
    assert [(s.stage, s.partitions, len(s.calls)) for s in plan.stages] == [
        ("generation", 12, 12),
        ("evaluation", 12 * 2 * 3, 72),
    ]
