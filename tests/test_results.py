"""Results: parsed scores, summaries, top generations, judge agreement, the parse-rate check and the heatmap."""

import io
import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from daydreaming_dagster.analysis.figures import heatmap_png
from daydreaming_dagster.analysis.tables import (
    ALL_JUDGES,
    NO_RESPONSE,
    PARSED_SCORE_COLUMNS,
    judge_agreement_table,
    mean_score_matrix,
    parse_rates,
    parse_scores,
    summarize,
    top_generations_table,
)
from daydreaming_dagster.assets.results import parse_rate_per_method
from daydreaming_dagster.runner.executor.worker import QUIET
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path
from daydreaming_dagster.store.write_once import content_digest
from tests.experiment_factory import write_experiment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scores_table(rows: list[tuple]) -> pd.DataFrame:
    """(generation, method, score or None, parse_error or None) -> a parsed_scores table.

    g1, g2 combine a,b with template t1; g3 combines a,c with t2. g1, g3 come from model m1, g2 from m2."""
    gens = {
        "g1": ("c-ab", "a,b", "t1", "m1"),
        "g2": ("c-ab", "a,b", "t1", "m2"),
        "g3": ("c-ac", "a,c", "t2", "m1"),
    }
    records = []
    for gen, method, score, error in rows:
        combo, concepts, template, model = gens[gen]
        records.append(
            {
                "generation_task_id": gen,
                "evaluation_task_id": method,
                "combo_id": combo,
                "concept_ids": concepts,
                "generation_template_id": template,
                "generation_model_id": model,
                "evaluation_template_id": method.split("__")[0],
                "evaluation_model_id": method.split("__")[1],
                "score": score,
                "parse_error": error,
                "response_path": f"/x/{gen}/{method}.txt",
            }
        )
    df = pd.DataFrame(records, columns=PARSED_SCORE_COLUMNS)
    df["score"] = df["score"].astype("float64")
    return df


E1, E2 = "rubric__judge-1", "rubric__judge-2"
# g1: 8 and 6; g2: 4 and a parse failure; g3: 4 and 4.
EXAMPLE = scores_table(
    [
        ("g1", E1, 8, None),
        ("g1", E2, 6, None),
        ("g2", E1, 4, None),
        ("g2", E2, None, "no score statement found"),
        ("g3", E1, 4, None),
        ("g3", E2, 4, None),
    ]
)


def records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


# ----------------------------------------------------------------------------- parsing


def test_parse_failures_are_counted_never_scored():
    evaluation_tasks = pd.DataFrame(
        {
            "generation_task_id": ["g1", "g1", "g1", "g1", "g1"],
            "evaluation_task_id": ["r__a", "r__b", "r__c", "r__d", "r__e"],
            "evaluation_template_id": ["r"] * 5,
            "evaluation_model_id": ["a", "b", "c", "d", "e"],
        }
    )
    generation_tasks = pd.DataFrame(
        [{"generation_task_id": "g1", "combo_id": "c1", "concept_ids": "x,y", "generation_template_id": "t", "generation_model_id": "m"}]
    )
    templates = pd.DataFrame({"template_id": ["r"], "score_min": [0.0], "score_max": [10.0]})
    answers = {
        "r__a|g1": "Solid.\nSCORE: 7",
        "r__b|g1": "I liked it a lot, but I will not give a number.",
        "r__c|g1": "SCORE: 11",  # off the scale: a failure, not a clamped 10
        "r__d|g1": "   ",
        # r__e has no stored answer
    }
    df = parse_scores(evaluation_tasks, generation_tasks, templates, answers, lambda g, e: Path("/r") / g / f"{e}.txt")
    assert list(df.columns) == PARSED_SCORE_COLUMNS
    assert records(df[["evaluation_task_id", "score", "parse_error"]]) == [
        {"evaluation_task_id": "r__a", "score": 7.0, "parse_error": None},
        {"evaluation_task_id": "r__b", "score": None, "parse_error": "no score statement found"},
        {"evaluation_task_id": "r__c", "score": None, "parse_error": "score 11 is outside 0-10"},
        {"evaluation_task_id": "r__d", "score": None, "parse_error": "empty response"},
        {"evaluation_task_id": "r__e", "score": None, "parse_error": NO_RESPONSE},
    ]
    assert df["concept_ids"].tolist() == ["x,y"] * 5
    # The line (1-based) each verdict, or rejected statement, was read from; none without one.
    assert df["score_line"].tolist() == [2, pd.NA, 1, pd.NA, pd.NA]
    assert df["response_path"].iloc[0] == str(Path("/r/g1/r__a.txt"))
    # A row has a score or a reason, never both and never neither.
    assert (df["score"].notna() ^ df["parse_error"].notna()).all()


def test_parse_scores_uses_each_templates_scale():
    evaluation_tasks = pd.DataFrame(
        {"generation_task_id": ["g1"], "evaluation_task_id": ["five__a"], "evaluation_template_id": ["five"], "evaluation_model_id": ["a"]}
    )
    generation_tasks = pd.DataFrame(
        [{"generation_task_id": "g1", "combo_id": "c1", "concept_ids": "x", "generation_template_id": "t", "generation_model_id": "m"}]
    )
    templates = pd.DataFrame({"template_id": ["five"], "score_min": [1.0], "score_max": [5.0]})
    df = parse_scores(evaluation_tasks, generation_tasks, templates, {"five__a|g1": "SCORE: 7"}, lambda g, e: "p")
    assert math.isnan(df["score"].iloc[0])
    assert df["parse_error"].iloc[0] == "score 7 is outside 1-5"


# ----------------------------------------------------------------------------- parse-rate check


def rate_table(parsed: int, failed: int, unanswered: int = 0, method: str = E1) -> pd.DataFrame:
    rows = [("g1", method, 5.0, None)] * parsed + [("g1", method, None, "no score statement found")] * failed
    rows += [("g1", method, None, NO_RESPONSE)] * unanswered
    return scores_table(rows)


@pytest.mark.parametrize(
    ("parsed", "failed", "unanswered", "passes"),
    [
        (19, 1, 0, True),  # exactly 95%
        (19, 1, 7, True),  # unanswered pairs are pending, not parse failures
        (18, 2, 0, False),  # 90%
        (94, 5, 0, False),  # 94.9%
        (0, 0, 3, True),  # nothing answered yet: nothing to judge
    ],
)
def test_parse_rate_check_boundary(parsed, failed, unanswered, passes):
    table = pd.concat([rate_table(parsed, failed, unanswered), rate_table(10, 0, method=E2)], ignore_index=True)
    result = parse_rate_per_method(parsed_scores=table)
    assert isinstance(result, dg.AssetCheckResult)
    assert result.passed is passes
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["methods_below_threshold"].value == ([] if passes else [E1])
    md = result.metadata["parse_rates"].value
    assert md.splitlines()[0].startswith("| evaluation method |")
    assert f"| {E2} | 10 | 10 | 10 | 0 | 100.0% | ok |" in md


def test_parse_rates_counts():
    rates = parse_rates(EXAMPLE)
    assert records(rates) == [
        {"evaluation_task_id": E1, "pairs": 3, "answered": 3, "parsed": 3, "parse_failures": 0, "unanswered": 0,
         "parse_rate": 1.0, "below_threshold": False},
        {"evaluation_task_id": E2, "pairs": 3, "answered": 3, "parsed": 2, "parse_failures": 1, "unanswered": 0,
         "parse_rate": pytest.approx(2 / 3), "below_threshold": True},
    ]


# ----------------------------------------------------------------------------- summaries


def test_summary_by_generation_template():
    # t1: 8, 6, 4 (+1 failure) -> mean 6, sample std sqrt((4+0+4)/2) = 2; t2: 4, 4 -> std 0.
    assert records(summarize(EXAMPLE, ["generation_template_id"])) == [
        {"generation_template_id": "t1", "n_scored": 3, "n_failed": 1, "mean": 6.0, "std": 2.0, "min": 4.0, "max": 8.0},
        {"generation_template_id": "t2", "n_scored": 2, "n_failed": 0, "mean": 4.0, "std": 0.0, "min": 4.0, "max": 4.0},
    ]


def test_summary_by_generation_model():
    # m1: 8, 6, 4, 4 -> mean 5.5, std sqrt((6.25+0.25+2.25+2.25)/3) = sqrt(11/3) = 1.915; m2: one score 4.
    assert records(summarize(EXAMPLE, ["generation_model_id"])) == [
        {"generation_model_id": "m1", "n_scored": 4, "n_failed": 0, "mean": 5.5, "std": 1.915, "min": 4.0, "max": 8.0},
        {"generation_model_id": "m2", "n_scored": 1, "n_failed": 1, "mean": 4.0, "std": None, "min": 4.0, "max": 4.0},
    ]


def test_summary_by_evaluation_method_and_combination():
    by_method = summarize(EXAMPLE, ["evaluation_task_id", "evaluation_template_id", "evaluation_model_id"])
    # E1: 8, 4, 4 -> mean 16/3, std sqrt(16/3) = 2.309; E2: 6, 4 -> mean 5, std sqrt(2) = 1.414.
    assert records(by_method) == [
        {"evaluation_task_id": E1, "evaluation_template_id": "rubric", "evaluation_model_id": "judge-1",
         "n_scored": 3, "n_failed": 0, "mean": 5.333, "std": 2.309, "min": 4.0, "max": 8.0},
        {"evaluation_task_id": E2, "evaluation_template_id": "rubric", "evaluation_model_id": "judge-2",
         "n_scored": 2, "n_failed": 1, "mean": 5.0, "std": 1.414, "min": 4.0, "max": 6.0},
    ]
    by_combo = summarize(EXAMPLE, ["combo_id", "concept_ids"])
    assert records(by_combo[["combo_id", "concept_ids", "n_scored", "n_failed", "mean"]]) == [
        {"combo_id": "c-ab", "concept_ids": "a,b", "n_scored": 3, "n_failed": 1, "mean": 6.0},
        {"combo_id": "c-ac", "concept_ids": "a,c", "n_scored": 2, "n_failed": 0, "mean": 4.0},
    ]


def test_top_generations_order_ties_and_paths():
    # g1: (8+6)/2 = 7 over 2; g2: 4 over 1 (its failure is not a score); g3: (4+4)/2 = 4 over 2.
    top = top_generations_table(EXAMPLE, lambda g: Path("/out/3_generation/generation_response") / f"{g}.txt")
    assert records(top[["rank", "generation_task_id", "mean_score", "n_evaluations", "min_score", "max_score"]]) == [
        {"rank": 1, "generation_task_id": "g1", "mean_score": 7.0, "n_evaluations": 2, "min_score": 6.0, "max_score": 8.0},
        {"rank": 2, "generation_task_id": "g2", "mean_score": 4.0, "n_evaluations": 1, "min_score": 4.0, "max_score": 4.0},
        {"rank": 2, "generation_task_id": "g3", "mean_score": 4.0, "n_evaluations": 2, "min_score": 4.0, "max_score": 4.0},
    ]
    assert top["response_path"].iloc[0] == str(Path("/out/3_generation/generation_response/g1.txt"))
    assert top["concept_ids"].tolist() == ["a,b", "a,b", "a,c"]
    assert top_generations_table(EXAMPLE, str, n=1)["generation_task_id"].tolist() == ["g1"]


def test_top_generations_leaves_out_unscored():
    only_failures = scores_table([("g1", E1, None, "empty response"), ("g2", E1, 3, None)])
    assert top_generations_table(only_failures, str)["generation_task_id"].tolist() == ["g2"]


# ----------------------------------------------------------------------------- agreement


def test_judge_agreement_pairs_and_overall():
    # Items g1, g2, g3 scored by A: 1, 2, 3; B: 2, 4, 6; C: 3, 2, 1.
    wide = {"A__x": [1, 2, 3], "B__x": [2, 4, 6], "C__x": [3, 2, 1]}
    table = scores_table([(g, judge, s, None) for judge, col in wide.items() for g, s in zip(["g1", "g2", "g3"], col)])
    df, overall = judge_agreement_table(table)
    # Krippendorff's interval alpha = 1 - (n-1) * sum_u sum_pairs-in-u d^2/(m_u-1) / sum_all-pairs d^2
    # A,B: 1 - 5*28/192 = 0.271; A,C: 1 - 5*16/48 = -0.667; B,C: 1 - 5*60/192 = -0.5625;
    # all three: 1 - 8*52/360 = -0.156.
    assert records(df) == [
        {"judge_a": "A__x", "judge_b": "B__x", "n_judges": 2, "n_items": 3, "spearman": 1.0, "mean_abs_diff": 2.0,
         "krippendorff_alpha": 0.271},
        {"judge_a": "A__x", "judge_b": "C__x", "n_judges": 2, "n_items": 3, "spearman": -1.0, "mean_abs_diff": 1.333,
         "krippendorff_alpha": -0.667},
        {"judge_a": "B__x", "judge_b": "C__x", "n_judges": 2, "n_items": 3, "spearman": -1.0, "mean_abs_diff": 2.667,
         "krippendorff_alpha": pytest.approx(-0.5625, abs=1e-3)},
        {"judge_a": ALL_JUDGES, "judge_b": ALL_JUDGES, "n_judges": 3, "n_items": 3, "spearman": None,
         "mean_abs_diff": None, "krippendorff_alpha": -0.156},
    ]
    assert overall["krippendorff_alpha_interval"] == pytest.approx(1 - 8 * 52 / 360)


def test_judge_agreement_skips_failures():
    # Shared scored items of E1 and E2: g1 (8, 6) and g3 (4, 4); g2's failure is not a 0.
    df, overall = judge_agreement_table(EXAMPLE)
    pair = records(df)[0]
    assert pair["n_items"] == 2
    assert pair["spearman"] == 1.0
    assert pair["mean_abs_diff"] == 1.0  # (|8-6| + |4-4|) / 2
    assert pair["krippendorff_alpha"] == 0.727  # 1 - 3*8/88
    assert overall["n_items"] == 2 and overall["n_judges"] == 2


def test_judge_agreement_with_one_judge_has_only_the_overall_row():
    df, overall = judge_agreement_table(scores_table([("g1", E1, 3, None), ("g2", E1, 5, None)]))
    assert df["judge_a"].tolist() == [ALL_JUDGES]
    assert math.isnan(overall["krippendorff_alpha_interval"])


# ----------------------------------------------------------------------------- heatmap


def assert_png(data: bytes) -> np.ndarray:
    assert data.startswith(PNG_SIGNATURE)
    image = imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def test_mean_score_matrix():
    means, counts = mean_score_matrix(EXAMPLE, "generation_template_id", "generation_model_id")
    # t1/m1: g1's 8, 6 -> 7; t1/m2: g2's 4 (one failure); t2/m1: 4, 4; t2/m2: nothing.
    assert means.loc["t1", "m1"] == 7.0 and means.loc["t1", "m2"] == 4.0 and means.loc["t2", "m1"] == 4.0
    assert math.isnan(means.loc["t2", "m2"])
    assert counts.to_dict() == {"m1": {"t1": 2, "t2": 2}, "m2": {"t1": 1, "t2": 0}}


@pytest.mark.parametrize(
    "values",
    [
        pd.DataFrame([[7.0, 4.5, 2.0], [3.0, 9.0, 6.25]], index=["creative-synthesis", "research-proposal"],
                     columns=["deepseek-chat", "qwen3-235b", "a-rather-long-model-name"]),
        pd.DataFrame([[7.0, np.nan], [np.nan, 2.0]], index=["t1", "t2"], columns=["m1", "m2"]),
        pd.DataFrame([[5.0]], index=["t1"], columns=["m1"]),
        pd.DataFrame([[np.nan]], index=["t1"], columns=["m1"]),
        pd.DataFrame(),
    ],
    ids=["normal", "nan-cells", "one-cell", "all-nan", "empty"],
)
def test_heatmap_png_is_valid(values):
    counts = values.notna().astype(int) * 3 if values.size else None
    assert_png(heatmap_png(values, counts=counts, title="t", xlabel="x", ylabel="y", vmin=0, vmax=10))
    assert_png(heatmap_png(values, title="t", xlabel="x", ylabel="y"))  # scale from the data


def test_heatmap_decodes_with_pillow():
    pil = pytest.importorskip("PIL.Image")
    png = heatmap_png(pd.DataFrame([[1.0, np.nan]], index=["r"], columns=["a", "b"]), title="t", xlabel="x", ylabel="y")
    with pil.open(io.BytesIO(png)) as image:
        image.verify()
        assert image.format == "PNG"


# ----------------------------------------------------------------------------- the whole pipeline, offline


RESULT_TABLES = [
    "parsed_scores",
    "evaluation_summary",
    "scores_by_generation_template",
    "scores_by_generation_model",
    "scores_by_evaluation_method",
    "scores_by_combination",
    "top_generations",
    "judge_agreement",
]


def offline_runner(data_root: Path, instance: dg.DagsterInstance):
    """The output root of an offline run of `data_root`, and a function running one job (or partition)."""
    from daydreaming_dagster.definitions import build_definitions
    from daydreaming_dagster.settings import Settings

    settings = Settings(data_root=data_root, backend="offline", base_url="http://unused")
    defs = build_definitions(settings)

    def run(job: str, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition_key, run_config=QUIET
        )
        assert result.success, job
        return result

    return settings.output_root, run


def answered_as(path: Path, text: str) -> None:
    """Make the stored answer at `path` one the model gave as `text`: its sidecar records this text
    (a text edited by hand, which its sidecar does not record, is left out of the results)."""
    path.write_text(text)
    record = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**record, **content_digest(text.encode())}))


@pytest.mark.slow
def test_results_of_an_offline_run(experiment, instance, monkeypatch):
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)
    out, run = offline_runner(experiment, instance)
    run("task_tables")
    generation_ids = read_table(table_path(out, "generation_tasks"))["generation_task_id"].tolist()
    for key in generation_ids:
        run("generation", key)
    pairs = read_table(table_path(out, "evaluation_tasks"))
    keys = (pairs["evaluation_task_id"] + "|" + pairs["generation_task_id"]).tolist()
    skipped, garbled = keys[0], keys[1]  # one pair never evaluated, one judge that ignored the format
    for key in keys[1:]:
        run("evaluation", key)
    method, generation = garbled.split("|")
    garbled_path = text_path(out, "evaluation_response", {"generation_tasks": generation, "evaluation_tasks": method})
    answered_as(garbled_path, "A thoughtful idea; I would rather not put a number on it.")

    result = run("results")

    results_dir = out / "5_results"
    for name in RESULT_TABLES:
        assert (results_dir / f"{name}.csv").is_file(), name
    parsed = read_table(results_dir / "parsed_scores.csv")
    assert len(parsed) == len(pairs) == 12
    assert parsed[["evaluation_task_id", "generation_task_id"]].drop_duplicates().shape[0] == 12
    by_key = parsed.set_index(parsed["evaluation_task_id"] + "|" + parsed["generation_task_id"])
    assert by_key.loc[skipped, "parse_error"] == NO_RESPONSE and math.isnan(by_key.loc[skipped, "score"])
    assert by_key.loc[garbled, "parse_error"] == "no score statement found" and math.isnan(by_key.loc[garbled, "score"])
    assert parsed["score"].notna().sum() == 10
    assert parsed["score"].dropna().between(0, 10).all()

    by_method = read_table(results_dir / "scores_by_evaluation_method.csv")
    assert by_method["n_scored"].sum() == 10 and by_method["n_failed"].sum() == 2
    by_combo = read_table(results_dir / "scores_by_combination.csv")
    assert len(by_combo) == 3 and by_combo["concept_ids"].str.contains(",").all()
    top = read_table(results_dir / "top_generations.csv")
    # The first generation has no score left (one pair skipped, one garbled): 5 of 6 are ranked.
    assert len(top) == 5 and top["mean_score"].is_monotonic_decreasing
    assert all(Path(p).is_file() for p in top["response_path"])
    agreement = read_table(results_dir / "judge_agreement.csv")
    assert agreement["judge_a"].tolist()[-1] == ALL_JUDGES and len(agreement) == 2

    heatmap = results_dir / "score_heatmap.png"
    assert_png(heatmap.read_bytes())
    heatmap_meta = result.asset_materializations_for_node("score_heatmap")[0].metadata
    assert heatmap_meta["heatmap"].value.startswith("![mean score heatmap](data:image/png;base64,")
    assert heatmap_meta["path"].value == str(heatmap)

    # The garbled answer is 1 failure in 6 stored answers of its method: 83% < 95%, a warning.
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "parse_rate_per_method"
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["methods_below_threshold"].value == [method]
    recorded = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("parsed_scores"), "parse_rate_per_method"), limit=1
    )
    assert len(recorded) == 1 and recorded[0].evaluation.passed is False


def test_results_of_a_single_evaluation_pair(tmp_path, instance, monkeypatch):
    # One generation x one judge: the upstream has one partition, which Dagster loads as a single value.
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)
    data_root = write_experiment(tmp_path / "one", concepts=("alpha",), k=1, generators=("g1",), judges=("j1",))
    out, run = offline_runner(data_root, instance)
    run("task_tables")
    pairs = read_table(table_path(out, "evaluation_tasks"))
    (generation,), (method,) = pairs["generation_task_id"], pairs["evaluation_task_id"]
    run("generation", generation)
    run("evaluation", f"{method}|{generation}")
    run("results")
    parsed = read_table(table_path(out, "parsed_scores", "results"))
    assert len(parsed) == 1 and parsed["score"].notna().all()
    assert_png((out / "5_results" / "score_heatmap.png").read_bytes())


# ----------------------------------------------------------------------------- `daydream score`


def test_score_command_prints_score_or_reason(tmp_path, capsys):
    from daydreaming_dagster.runner.cli import main

    (tmp_path / "good.txt").write_text("Nice.\nSCORE: 7.5")
    (tmp_path / "vague.txt").write_text("Nice, but no number.")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    files = [str(tmp_path / n) for n in ("good.txt", "vague.txt", "binary.txt")]
    assert main(["score", *files]) == 1  # one file could not be read
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{files[0]}\t7.5", f"{files[1]}\tunparsed (no score statement found)"]
    assert err == f"{files[2]}\terror: not UTF-8 text\n"
    assert main(["score", "--max", "5", files[0]]) == 0
    assert capsys.readouterr().out == f"{files[0]}\tunparsed (score 7.5 is outside 0-5)\n"
