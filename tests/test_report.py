"""The results report: its data and page (pure), and the page of an offline run opened in a real
headless Chromium (sorting, filtering, a generation with its judges, model text shown as text)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from playwright.sync_api import expect

from daydreaming_dagster.assets.report import report_path
from daydreaming_dagster.compat import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.report import payload as payload_module
from daydreaming_dagster.report.page import render_page, script_json
from daydreaming_dagster.report.payload import ReportTables, ReportTexts, build_payload
from daydreaming_dagster.runner.executor.worker import QUIET
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import table_path, text_path
from tests.browser import chromium_path
from tests.experiment_factory import write_experiment
from tests.test_results import E1, E2, EXAMPLE, answered_as, offline_runner

SCRIPT_ANSWER = 'Bold move. <script>alert(1)</script><img src=x onerror="alert(2)">\n</script>\nSCORE: 7'


def example_tables(parsed: pd.DataFrame = EXAMPLE) -> ReportTables:
    """g1 (a,b; t1; m1), g2 (a,b; t1; m2), g3 (a,c; t2; m1), judged by E1 and E2."""
    tasks = parsed.drop_duplicates("generation_task_id")[
        ["generation_task_id", "combo_id", "concept_ids", "generation_template_id", "generation_model_id"]
    ].reset_index(drop=True)
    return ReportTables(
        parsed_scores=parsed,
        generation_tasks=tasks,
        concepts=pd.DataFrame({"concept_id": ["a", "b", "c"], "name": ["Alpha", "Beta <b>", "Gamma"]}),
        evaluation_templates=pd.DataFrame({"template_id": ["rubric"], "score_min": [0.0], "score_max": [10.0]}),
        judge_agreement=pd.DataFrame(
            [{"judge_a": "all judges", "judge_b": "all judges", "n_judges": 2, "n_items": 2, "spearman": None,
              "mean_abs_diff": None, "krippendorff_alpha": 0.727}]
        ),
    )


def example_texts() -> ReportTexts:
    return ReportTexts(
        prompts={g: f"prompt of {g}" for g in ("g1", "g2", "g3")},
        answers={"g1": "answer of g1", "g3": "answer of g3"},  # g2 has no answer stored
        judge_answers={f"{E1}|g1": SCRIPT_ANSWER, f"{E2}|g1": "Fine.\nSCORE: 6", f"{E2}|g2": "no number"},
    )


def decode_chunk(html: str, index: int) -> list:
    match = re.search(rf'<script type="application/octet-stream" id="chunk-{index}"[^>]*>([^<]*)</script>', html)
    return json.loads(gzip.decompress(base64.b64decode(match.group(1))))


# --------------------------------------------------------------------------- data and page (pure)


def test_script_json_cannot_end_its_script_block():
    text = script_json({"answer": "</script><script>alert(1)</script> & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"answer": "</script><script>alert(1)</script> & \u2028"}


def test_matrix_cells_say_score_failure_or_pending_with_the_verdict_line():
    parsed = EXAMPLE.copy()
    parsed["score_line"] = pd.array([3, 1, 2, None, 1, 1], dtype="Int64")
    parsed.loc[parsed.index[-1], ["score", "parse_error"]] = [None, "no evaluation response stored"]
    data = build_payload(example_tables(parsed), example_texts(), title="t", generated="now").data
    cells = data["cells"]
    # Row-major, generations g1 g2 g3 x methods E1 E2: g2|E2 failed, g3|E2 not answered.
    assert [m["id"] for m in data["methods"]] == [E1, E2]
    assert cells["state"] == "sssfsu"
    assert cells["score"] == [8, 6, 4, None, 4, None]
    assert cells["line"][:3] == [3, 1, 2]
    assert cells["failures"] == [[3, 0]] and cells["reasons"] == ["no score statement found"]
    gens = data["generations"]
    assert gens["mean"] == [7, 4, 4] and gens["n"] == [2, 1, 1] and gens["rank"] == [1, 2, 2]
    assert data["counts"] == {"generations": 3, "answered": 2, "pairs": 6, "scored": 4, "failed": 1, "unanswered": 1}
    assert [c["name"] for c in data["concepts"]] == ["Alpha", "Beta <b>", "Gamma"]
    assert gens["concepts"] == [[0, 1], [0, 1], [0, 2]]
    assert data["heatmap"]["rows"] == ["t1", "t2"] and data["heatmap"]["mean"][0] == [7, 4]
    concept = data["summaries"]["concept"]
    assert [row[0] for row in concept["rows"]] == ["Beta <b>", "Alpha", "Gamma"]  # best mean first


def test_texts_round_trip_through_the_chunks(monkeypatch):
    monkeypatch.setattr(payload_module, "CHUNK_BYTES", 20)  # a chunk per generation or two
    payload = build_payload(example_tables(), example_texts(), title="t", generated="now")
    page = render_page(payload)
    gens = payload.data["generations"]
    assert page.chunks == len(payload.chunks) > 1
    for g, generation in enumerate(gens["id"]):
        prompt, answer, judges = decode_chunk(page.html, gens["chunk"][g])[gens["slot"][g]]
        assert prompt == f"prompt of {generation}"
        assert answer == example_texts().answers.get(generation)
        assert judges == [example_texts().judge_answers.get(f"{m}|{generation}") for m in (E1, E2)]


def test_page_is_self_contained_and_runs_only_its_own_script():
    html = render_page(build_payload(example_tables(), example_texts(), title="</title><b>x", generated="now")).html
    # Nothing to fetch: no external script, style, image, font or frame.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(" not in html
    # Model and experiment text never appears as markup: the answer is compressed, names are escaped.
    assert "alert(1)" not in html and "<b>" not in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    runnable = [body for attrs, body in scripts if "type=" not in attrs]
    assert len(runnable) == 1
    digest = base64.b64encode(hashlib.sha256(runnable[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html
    assert "default-src 'none'" in html


def test_a_single_pair_is_a_whole_page():
    one = EXAMPLE.iloc[:1]
    payload = build_payload(example_tables(one), example_texts(), title="t", generated="now")
    assert payload.data["counts"]["pairs"] == 1 and payload.data["generations"]["id"] == ["g1"]
    assert payload.data["agreement"]["alpha"] == 0.727
    assert len(payload.chunks) == 1


def test_the_report_takes_its_inputs_through_dagster(experiment):
    defs = build_definitions(Settings(data_root=experiment, backend="offline", base_url="http://unused"))
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("results_report"))
    parents = {key.path[-1] for key in node.parent_keys}
    assert {"generation_prompt", "generation_response", "evaluation_response", "parsed_scores", "judge_agreement",
            "llm_usage", "generation_tasks", "scores_by_combination"} <= parents
    assert node.group_name == "results" and node.partitions_def is None
    assert dg.AssetKey("results_report") in defs.resolve_job_def("results").asset_layer.executable_asset_keys


# --------------------------------------------------------------------------- an offline run, in Chromium


def offline_report(data_root: Path, instance) -> tuple[Path, object, dict]:
    """Run the experiment offline in process (a run per stage, over partition ranges, as `daydream
    run` batches them), tampering with a few stored answers before the results: HTML in a
    generation, a script in a judge answer, a judge that gives no score, and a pair never judged
    (each as the model's answer: its sidecar records it)."""
    settings = Settings(data_root=data_root, backend="offline", base_url="http://unused")
    defs = build_definitions(settings)
    out = settings.output_root

    def run(job: str, keys: list[str] | None = None):
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]} if keys else None
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags, run_config=QUIET)
        assert result.success, job
        return result

    run("task_tables")
    generations = read_table(table_path(out, "generation_tasks"))["generation_task_id"].tolist()
    methods = sorted(set(read_table(table_path(out, "evaluation_tasks"))["evaluation_task_id"]))
    run("generation", generations)
    # Dagster orders a pair key method first, so one method's generations form a range.
    run("evaluation", [f"{methods[0]}|{g}" for g in generations[1:]])
    for method in methods[1:]:
        run("evaluation", [f"{method}|{g}" for g in generations])
    special = {
        "skipped": f"{methods[0]}|{generations[0]}",
        "script": f"{methods[0]}|{generations[1]}",
        "garbled": f"{methods[1]}|{generations[0]}",
    }
    for name, text in (("script", SCRIPT_ANSWER), ("garbled", "A fine idea; no number from me.")):
        method, generation = special[name].split("|")
        answered_as(text_path(out, "evaluation_response", {"generation_tasks": generation, "evaluation_tasks": method}), text)
    answered_as(text_path(out, "generation_response", generations[-1]), "<h1>Big</h1> <i>idea</i>")
    return out, run("results"), special


def open_by_hash(tab, path: Path, generation: str) -> None:
    """Open the report at a generation's link (`#g=<id>`), as a shared link or the back button would."""
    tab.page.goto(path.resolve().as_uri() + f"#g={generation}")
    tab.wait_for_detail(generation)


@pytest.mark.slow
def test_report_of_an_offline_run_in_chromium(tmp_path, instance, monkeypatch, request):
    chromium_path()  # no browser: skip (fail in CI) before running anything
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)
    data_root = write_experiment(tmp_path / "data", generation_templates=("gen-a", "gen-b"))
    out, result, special = offline_report(data_root, instance)
    path = report_path(out)
    meta = result.asset_materializations_for_node("results_report")[0].metadata
    assert meta["path"].value == str(path) and meta["open"].value == path.resolve().as_uri()
    assert meta["bytes"].value == path.stat().st_size and meta["generations"].value == 12 and meta["pairs"].value == 24

    tab = request.getfixturevalue("tab")
    tab.open(path)
    tab.page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    rows = tab.rows()
    assert len(rows) == 12 and tab.count() == "12 of 12 generations"
    means = [float(r["mean"]) for r in rows if r["mean"] != "–"]
    assert means == sorted(means, reverse=True)  # top generations first
    assert tab.page.text_content("#glance-cards").count("gen-a, gen-b") == 1

    # Filters: template, concept, score; each row shown satisfies them, and clearing restores all.
    tab.page.select_option("#filter-template", label="gen-b")
    assert {r["template"] for r in tab.rows()} == {"gen-b"} and tab.count() == "6 of 12 generations"
    tab.page.select_option("#filter-concept", label="Gamma")
    assert all("Gamma" in r["concepts"] for r in tab.rows()) and tab.count() == "4 of 12 generations"
    tab.page.click("#filters button[type=reset]")
    expect(tab.page.locator("#matrix-count")).to_have_text("12 of 12 generations")
    tab.page.fill("#filter-min", "6")
    assert tab.rows() and all(float(r["mean"]) >= 6 for r in tab.rows())
    tab.page.click("#filters button[type=reset]")
    expect(tab.page.locator("#matrix-count")).to_have_text("12 of 12 generations")

    # Sorting: by concepts A-Z, then by the first method's score best-first (unscored last).
    tab.sort_by("concepts")
    labels = [r["concepts"] for r in tab.rows()]
    assert labels == sorted(labels)
    tab.sort_by("m0")
    first = [r["scores"][0] for r in tab.rows()]
    numbers = [float(s) for s in first if s not in ("✗", "…", "")]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 11
    assert first[-1] == "…"  # the first method never judged the first generation
    assert tab.page.get_attribute("#matrix-head th[data-sort='m0']", "aria-sort") == "descending"

    # The generation whose judge answered with a script: every judge's answer, shown as text.
    method, generation = special["script"].split("|")
    open_by_hash(tab, path, generation)
    detail = tab.page.locator("#detail-body")
    judges = detail.locator("article.judge")
    assert judges.count() == 2
    script_card = detail.locator(f"article.judge[data-method='{method}']")
    assert "<script>alert(1)</script>" in script_card.text_content()
    assert script_card.locator(".badge").text_content() == "7 / 10"
    assert script_card.locator(".ln.verdict").text_content() == "SCORE: 7"
    assert tab.page.locator("#detail-body script, #detail-body img").count() == 0
    assert tab.dialogs == [] and tab.errors == []
    assert detail.locator("pre.text").first.text_content().startswith("Combine these ideas")
    tab.page.screenshot(path=str(tmp_path / "report-detail.png"))

    # A parse failure says why; a pair never judged says so.
    for name, badge in (("garbled", "parse failure: no score statement found"), ("skipped", "not answered yet")):
        method, generation = special[name].split("|")
        open_by_hash(tab, path, generation)
        assert detail.locator(f"article.judge[data-method='{method}'] .badge").text_content() == badge
    tab.page.keyboard.press("Escape")
    assert tab.page.is_hidden("#detail")

    # The generation answer that is HTML shows as its characters.
    open_by_hash(tab, path, read_table(table_path(out, "generation_tasks"))["generation_task_id"].tolist()[-1])
    assert detail.locator("pre.text").nth(1).text_content() == "<h1>Big</h1> <i>idea</i>"
    assert tab.page.locator("#detail-body h1, #detail-body i").count() == 0
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.slow
def test_report_of_a_single_pair_in_chromium(tmp_path, instance, monkeypatch, request):
    chromium_path()
    monkeypatch.delenv("DAYDREAM_OUTPUT_ROOT", raising=False)
    data_root = write_experiment(tmp_path / "one", concepts=("alpha",), k=1, generators=("g1",), judges=("j1",))
    out, run = offline_runner(data_root, instance)
    run("task_tables")
    pairs = read_table(table_path(out, "evaluation_tasks"))
    (generation,), (method,) = pairs["generation_task_id"], pairs["evaluation_task_id"]
    run("generation", generation)
    run("evaluation", f"{method}|{generation}")
    run("results")

    tab = request.getfixturevalue("tab")
    tab.open(report_path(out))
    rows = tab.rows()
    assert len(rows) == 1 and rows[0]["rank"] == "1" and rows[0]["concepts"] == "Alpha"
    assert "undefined" in tab.page.text_content("#agreement-body")
    assert tab.open_row(0) == generation
    assert tab.page.locator("#detail-body article.judge").count() == 1
    assert tab.page.locator("#detail-body .ln.verdict").count() == 1
    tab.page.screenshot(path=str(tmp_path / "one-pair.png"), full_page=True)
    assert tab.dialogs == [] and tab.errors == []
