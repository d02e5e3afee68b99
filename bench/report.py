"""Benchmark 5 (report): size of the results report and its speed in headless Chromium.

Two reports: the sample experiment after `daydream run --offline` (84 generations, 336 pairs), and
a synthetic experiment of 10,224 generations x 10 methods = 102,240 pairs with texts of realistic
length (tests/report_factory.py). For each: the file size, the time to build it (large only: the
asset's own work), and in the browser the time until the page has drawn its tables (median of
several fresh loads), then filtering, sorting, scrolling and opening a generation (time until the
next frame is drawn).

    uv run python bench/report.py [--loads 5] [--skip-sample]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, fresh_home, machine

sys.path.insert(0, str(REPO))

from tests.browser import CHROMIUM, FLAGS, VIEWPORT  # noqa: E402

NEXT_FRAME = "await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));"
ACTIONS = {
    "filter by template": f"""async () => {{
        const t = performance.now(); const s = document.getElementById("filter-template");
        s.value = "1"; s.dispatchEvent(new Event("change", {{bubbles: true}})); {NEXT_FRAME}
        return performance.now() - t; }}""",
    "clear the filters": f"""async () => {{
        const t = performance.now(); document.getElementById("filters").reset(); {NEXT_FRAME} {NEXT_FRAME}
        return performance.now() - t; }}""",
    "sort by a method": f"""async () => {{
        const t = performance.now(); document.querySelector("#matrix-head th[data-sort='m0']").click(); {NEXT_FRAME}
        return performance.now() - t; }}""",
    "scroll to the middle": f"""async () => {{
        const t = performance.now(); const box = document.getElementById("matrix-scroll");
        box.scrollTop = (box.scrollHeight - box.clientHeight) / 2; {NEXT_FRAME}
        return performance.now() - t; }}""",
    "open a generation": """async () => {
        const t = performance.now(); document.querySelector("#matrix-body tr.row").click();
        while (!document.documentElement.dataset.detailReady) await new Promise((done) => setTimeout(done, 5));
        await new Promise((done) => requestAnimationFrame(done));
        return performance.now() - t; }""",
}


def sample_report(tmp: Path) -> Path:
    """The sample experiment run offline from scratch by `daydream run`; returns its report."""
    shutil.copytree(REPO / "data" / "1_raw", tmp / "data" / "1_raw")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYDREAM_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(fresh_home(tmp / "home"))
    command = [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--offline", "--data-root", str(tmp / "data")]
    subprocess.run(command, cwd=tmp, env=env, check=True, capture_output=True)
    return tmp / "data" / "offline" / "5_results" / "report.html"


def large_report(tmp: Path) -> tuple[Path, float]:
    from daydreaming_dagster.report.page import render_page
    from daydreaming_dagster.report.payload import build_payload
    from tests.report_factory import large_report_inputs

    tables, texts = large_report_inputs()
    started = time.perf_counter()
    page = render_page(build_payload(tables, texts, title="Results report: synthetic", generated="bench"))
    path = tmp / "report.html"
    path.write_text(page.html, encoding="utf-8")
    built = time.perf_counter() - started
    print(f"  pairs {len(tables.parsed_scores):,}, generations {len(tables.generation_tasks):,}; "
          f"matrix and summaries JSON {page.data_bytes / 1e6:.1f} MB; texts {page.text_bytes / 1e6:.1f} MB "
          f"as JSON, {page.chunk_bytes / 1e6:.1f} MB stored (gzip + base64) in {page.chunks} chunks")
    return path, built


def measure(path: Path, loads: int) -> None:
    from playwright.sync_api import sync_playwright

    print(f"  file {path.stat().st_size / 1e6:.2f} MB")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS, viewport=VIEWPORT
        )
        ready, wall = [], []
        for _ in range(loads):
            page = context.new_page()
            started = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("html[data-ready]", state="attached", timeout=120_000)
            wall.append(time.perf_counter() - started)
            ready.append(int(page.get_attribute("html", "data-ready")))
            page.close()
        print(f"  load until the tables are drawn: median {statistics.median(ready)} ms "
              f"(min {min(ready)}, max {max(ready)}; {statistics.median(wall):.2f} s from navigation to ready)")
        page = context.new_page()
        page.goto(path.as_uri())
        page.wait_for_selector("html[data-ready]", state="attached", timeout=120_000)
        for name, script in ACTIONS.items():
            print(f"  {name}: {page.evaluate(script):.0f} ms")
        rows = page.eval_on_selector_all("#matrix-body tr.row", "rows => rows.length")
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1e6 : -1")
        print(f"  rows in the DOM: {rows}; JS heap {heap:.0f} MB")
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--skip-sample", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}; Chromium at {CHROMIUM}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_sample:
            print("\nsample experiment (daydream run --offline)")
            measure(sample_report(tmp / "sample"), args.loads)
        print("\nsynthetic experiment")
        (tmp / "large").mkdir()
        path, built = large_report(tmp / "large")
        print(f"  build (payload and page, in the asset): {built:.1f} s")
        measure(path, args.loads)


if __name__ == "__main__":
    main()
