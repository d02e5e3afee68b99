"""The replicate results: spread per generation and method, each judge's test-retest reliability and
the variance decomposition, on experiments whose judges have a known noise."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from daydreaming_dagster.analysis.reliability import judge_reliability, replicate_scores, variance_components
from daydreaming_dagster.analysis.tables import judge_agreement_table
from daydreaming_dagster.experiment.ids import evaluation_task_id
from daydreaming_dagster.store.csv_tables import read_table
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, Pipeline


def synthetic_scores(noise: dict[str, float], generations: int = 300, replicates: int = 3, seed: int = 7) -> pd.DataFrame:
    """Parsed scores of generations whose true quality has sd 2; judge j adds noise of sd noise[j]."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(generations):
        truth = rng.normal(5.0, 2.0)
        for judge, sd in noise.items():
            for r in range(1, replicates + 1):
                rows.append(
                    {
                        "generation_task_id": f"combo-{g}__tmpl__gen",
                        "evaluation_task_id": evaluation_task_id("rubric", judge, r),
                        "combo_id": f"combo-{g}",
                        "generation_template_id": "tmpl",
                        "generation_model_id": "gen",
                        "evaluation_template_id": "rubric",
                        "evaluation_model_id": judge,
                        "evaluation_replicate": r,
                        "score": truth + rng.normal(0.0, sd),
                    }
                )
    return pd.DataFrame(rows)


def test_reliability_of_judges_with_known_noise_comes_out_as_expected():
    scores = synthetic_scores({"steady": 0.5, "noisy": 2.0})
    table = judge_reliability(scores).set_index("evaluation_method_id")

    steady, noisy = table.loc["rubric__steady"], table.loc["rubric__noisy"]
    assert steady["n_replicates"] == noisy["n_replicates"] == 3 and steady["n_items"] == 300
    # Test-retest reliability of one verdict: true variance / (true + noise variance).
    assert steady["krippendorff_alpha"] == pytest.approx(4 / (4 + 0.25), abs=0.03)
    assert noisy["krippendorff_alpha"] == pytest.approx(4 / (4 + 4), abs=0.08)
    assert steady["noise_std"] == pytest.approx(0.5, rel=0.1)
    assert noisy["noise_std"] == pytest.approx(2.0, rel=0.1)
    assert steady["between_std"] == pytest.approx(2.0, rel=0.15)

    components = variance_components(scores).set_index("component")
    noise = components.loc["judge noise (between evaluation replicates)"]
    per_score = float(re.search(r"noise variance of one score ([\d.]+)", noise["note"]).group(1))
    assert per_score == pytest.approx((0.25 + 4.0) / 2, rel=0.1)
    # A complete design: the parts add up to the whole, and what is constant explains nothing.
    assert components.drop(index="total")["sum_of_squares"].sum() == pytest.approx(components.loc["total", "sum_of_squares"], rel=1e-3)
    assert components.loc["generation template", "share"] == components.loc["generation model", "share"] == 0
    assert components.loc["concept combination", "share"] > 0.5
    assert components.loc["generation sampling (between generation replicates)", "note"] == "needs generation_replicates >= 2"


def test_a_judge_without_replicates_has_no_reliability_and_no_noise_share():
    scores = synthetic_scores({"once": 1.0}, generations=20, replicates=1)
    (row,) = judge_reliability(scores).to_dict("records")
    assert row["n_replicates"] == 1 and row["n_items"] == 0
    assert np.isnan(row["krippendorff_alpha"]) and np.isnan(row["noise_std"])
    noise = variance_components(scores).set_index("component").loc["judge noise (between evaluation replicates)"]
    assert noise["sum_of_squares"] == 0 and noise["note"] == "needs evaluation_replicates >= 2"


def test_replicate_scores_and_agreement_bring_a_methods_replicates_together():
    scores = synthetic_scores({"a": 1.0, "b": 1.0}, generations=10)
    spread = replicate_scores(scores)
    assert len(spread) == 10 * 2 and (spread["n_replicates"] == 3).all() and (spread["n_scored"] == 3).all()
    one = scores[(scores["generation_task_id"] == "combo-0__tmpl__gen") & (scores["evaluation_model_id"] == "a")]
    row = spread[(spread["generation_task_id"] == "combo-0__tmpl__gen") & (spread["evaluation_method_id"] == "rubric__a")]
    assert row["mean"].item() == pytest.approx(one["score"].mean(), abs=1e-3)
    assert row["std"].item() == pytest.approx(one["score"].std(), abs=1e-3)
    agreement, overall = judge_agreement_table(scores)
    assert agreement["judge_a"].tolist() == ["rubric__a", "all judges"] and overall["n_judges"] == 2


def test_the_reliability_tables_of_a_run_against_the_server_show_the_judge_that_disagrees_with_itself(
    tmp_path, instance, openai_server, monkeypatch
):
    """Judge 1 always repeats its verdict; judge 2 answers the same prompt 3 points lower, the same,
    then 3 points higher: its noise is exactly sqrt(9) = 3 points per generation."""
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    root = write_experiment(tmp_path / "data", generators=("gen-model-1",), settings="evaluation_replicates = 3\n")
    pipe = Pipeline(root, instance, openai_server)
    pipe.tables()
    seen: Counter = Counter()
    lock = threading.Lock()

    def answer(body) -> str:
        prompt = body["messages"][0]["content"]
        number = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        if body["model"] == "test/gen-model-1":
            return f"Idea number {number}."
        quality = 3 + number % 5  # 3..7, from the generation the judge reads
        with lock:
            seen[(body["model"], prompt)] += 1
            nth = seen[(body["model"], prompt)]
        offset = 0 if body["model"] == "test/judge-model-1" else (-3, 0, 3)[nth - 1]
        return f"Judged.\nSCORE: {quality + offset}"

    openai_server.default_answer = answer
    pipe.generate_all()
    pipe.evaluate_all()
    assert pipe.materialize(dg.AssetSelection.groups("results")).success

    results = root / "5_results"
    reliability = read_table(results / "judge_reliability.csv").set_index("evaluation_method_id")
    steady, noisy = reliability.loc["judge-a__judge-model-1"], reliability.loc["judge-a__judge-model-2"]
    assert (steady["n_items"], steady["noise_std"], steady["exact_agreement"]) == (3, 0.0, 1.0)
    assert steady["krippendorff_alpha"] == 1.0
    assert (noisy["n_items"], noisy["noise_std"], noisy["exact_agreement"]) == (3, 3.0, 0.0)
    assert noisy["krippendorff_alpha"] < 0.5
    spread = read_table(results / "replicate_scores.csv")
    assert len(spread) == 3 * 2 and (spread["n_scored"] == 3).all()
    assert sorted(spread["std"].unique()) == [0.0, 3.0]
    variance = read_table(results / "score_variance.csv").set_index("component")
    assert variance.loc["judge noise (between evaluation replicates)", "share"] > 0
    assert "noise variance of one score 4.5" in variance.loc["judge noise (between evaluation replicates)", "note"]
