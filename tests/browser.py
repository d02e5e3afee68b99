"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the report tests.

No browser is downloaded: Playwright starts the system binary. Without it the tests skip, saying
how to install it, except in CI (CI=true), where a missing browser fails them: CI must test the
report (.ci/run installs Chromium)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DAYDREAM_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
# A timeout here only detects a page that never gets ready; how fast pages load is bench/report.py's
# figure. The 100,000-pair report took over 60 s to get ready on the 2-core machine under load.
TIMEOUT_MS = 180_000


def chromium_path() -> Path:
    """The Chromium binary; skips the test when it is missing, and fails it in CI."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must run the report's browser tests.")
    pytest.skip(f"{message}; the report's browser tests need it.")


@dataclass
class Tab:
    """A page of the browser plus what it did that a test must see: dialogs and script errors."""

    page: object  # playwright.sync_api.Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: Path, fragment: str = "") -> int:
        """Load the report from disk; returns the milliseconds until it had drawn its tables."""
        self.page.goto(path.resolve().as_uri() + fragment)
        # Waits use selectors: the report's Content-Security-Policy forbids the eval() that
        # Playwright's wait_for_function polls with.
        self.page.wait_for_selector("html[data-ready]", state="attached")
        return int(self.page.get_attribute("html", "data-ready"))

    def rows(self) -> list[dict]:
        """The matrix rows now in the DOM: generation index, rank, concepts, template, model, mean, method scores."""
        return self.page.eval_on_selector_all(
            "#matrix-body tr.row",
            """rows => rows.map(r => {
                const t = [...r.cells].map(c => c.textContent);
                return {g: Number(r.dataset.g), rank: t[0], concepts: t[1], template: t[2], model: t[3],
                        mean: t[4], n: t[5], scores: t.slice(6)};
            })""",
        )

    def count(self) -> str:
        return self.page.text_content("#matrix-count")

    def sort_by(self, key: str, nth: int = 0) -> None:
        self.page.locator(f"#matrix-head th[data-sort='{key}']").nth(nth).click()

    def scroll_matrix(self, fraction: float) -> None:
        """Scroll the matrix to a fraction of its height and wait until the rows there are drawn."""
        self.page.evaluate(
            """async (fraction) => {
                const box = document.getElementById("matrix-scroll");
                box.scrollTop = fraction * (box.scrollHeight - box.clientHeight);
                await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
            }""",
            fraction,
        )

    def open_row(self, nth: int = 0) -> str:
        """Click the `nth` matrix row in view; returns the generation id once its texts are shown.

        Counted from the first row below the sticky header: the page also draws rows above and below
        the view, and clicking one of those would first scroll it into view, which draws the rows
        again, possibly between the mouse's press and release (the click then opens nothing)."""
        first = self.page.eval_on_selector(
            "#matrix-scroll",
            """box => {
                const top = box.getBoundingClientRect().top + document.getElementById("matrix-head").offsetHeight;
                return [...box.querySelectorAll("#matrix-body tr.row")].findIndex(r => r.getBoundingClientRect().top >= top);
            }""",
        )
        assert first >= 0, "no matrix row is in view"
        self.page.locator("#matrix-body tr.row").nth(first + nth).click()
        self.page.wait_for_selector("html[data-detail-ready]", state="attached")
        return self.page.get_attribute("html", "data-detail-ready")

    def wait_for_detail(self, generation: str) -> None:
        self.page.wait_for_selector(f"html[data-detail-ready={json.dumps(generation)}]", state="attached")


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with a fresh profile directory (started in about a second).

    Playwright's sync API runs an event loop on this thread while the browser is open; a test
    that runs Dagster in process does that first and asks for the browser afterwards
    (`request.getfixturevalue("tab")`)."""
    binary = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(binary),
            headless=True,
            args=FLAGS,
            viewport=VIEWPORT,
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def tab(chromium):
    page = chromium.new_page()
    tab = Tab(page)

    def on_dialog(dialog) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", lambda message: tab.errors.append(message.text) if message.type == "error" else None)
    yield tab
    page.close()
