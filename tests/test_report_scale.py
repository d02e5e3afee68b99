"""The report of a synthetic experiment with over 100,000 evaluation pairs, in headless Chromium:
it loads, draws only the rows in view, and sorts, filters, scrolls and opens a generation.
(Load times and sizes are printed by bench/report.py, not asserted here.)"""

from __future__ import annotations

import pytest

from daydreaming_dagster.report.page import render_page
from daydreaming_dagster.report.payload import build_payload
from tests.browser import chromium_path
from tests.report_factory import large_report_inputs


@pytest.mark.slow
def test_report_of_100000_pairs_stays_usable(tmp_path, request):
    chromium_path()  # no browser: skip (fail in CI) before building 100,000 pairs
    tables, texts = large_report_inputs(answer_words=60, judge_words=24)
    payload = build_payload(tables, texts, title="Results report: large", generated="now")
    path = tmp_path / "report.html"
    path.write_text(render_page(payload).html, encoding="utf-8")
    gens = payload.data["generations"]
    n = len(gens["id"])
    assert len(tables.parsed_scores) >= 100_000 and n == 10_224

    tab = request.getfixturevalue("tab")
    tab.open(path)
    assert tab.count() == f"{n:,} of {n:,} generations"
    rows = tab.rows()
    assert 0 < len(rows) < 100  # only the rows in view (and a margin) are in the page
    assert rows[0]["rank"] == "1" and float(rows[0]["mean"]) == max(m for m in gens["mean"] if m is not None)

    tab.scroll_matrix(1.0)
    rows = tab.rows()
    assert 0 < len(rows) < 100
    assert float(rows[-1]["mean"]) == min(m for m in gens["mean"] if m is not None)

    # Filter by template, concept and score: the count is the number of generations that match.
    data = payload.data
    template, concept = data["templates"].index("research-proposal"), [c["name"] for c in data["concepts"]].index("Concept 7")
    expected = sum(
        1
        for g in range(n)
        if gens["template"][g] == template and concept in gens["concepts"][g] and (gens["mean"][g] or -1) >= 6
    )
    tab.page.select_option("#filter-template", label="research-proposal")
    tab.page.select_option("#filter-concept", label="Concept 7")
    tab.page.fill("#filter-min", "6")
    assert tab.count() == f"{expected:,} of {n:,} generations" and 0 < expected < 200
    shown = tab.rows()
    assert all(r["template"] == "research-proposal" and "Concept 7" in r["concepts"].split(" × ") for r in shown)
    assert all(float(r["mean"]) >= 6 for r in shown)
    tab.page.click("#filters button[type=reset]")

    # Sort by the last method's score: its best scores first.
    tab.sort_by(f"m{len(data['methods']) - 1}")
    assert {r["scores"][-1] for r in tab.rows()[:20]} == {"10"}

    # A generation from the middle of the table, opened by a click: its ten judges and their verdict lines.
    tab.scroll_matrix(0.5)
    generation = tab.open_row(5)
    judges = tab.page.locator("#detail-body article.judge")
    assert generation in gens["id"] and judges.count() == len(data["methods"])
    scored = tab.page.locator("#detail-body article.judge[data-state='s']").count()
    assert tab.page.locator("#detail-body .ln.verdict").count() == scored > 0
    tab.page.screenshot(path=str(tmp_path / "report-large.png"))
    assert tab.dialogs == [] and tab.errors == []
