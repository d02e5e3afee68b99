"""A data root on a disk that fills up mid-run: made to happen on a small tmpfs (CI runs as root),
then a rerun after space is freed, counting what was paid."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import test_overlapping_runs as overlapping
from tests.experiment_factory import write_experiment
from tests.test_call_failures import last_line, run
from tests.test_cli import explain
from tests.test_overlapping_runs import asked

pytestmark = pytest.mark.slow
clean_env, paid_env = overlapping.clean_env, overlapping.paid_env  # the fixtures of those tests


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs under tmp_path, unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs to fill up: {done.stderr.strip()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_leaving(folder: Path, free_bytes: int) -> Path:
    """A ballast file that leaves about `free_bytes` free on the disk of `folder`."""
    ballast = folder / "ballast"
    stat = os.statvfs(folder)
    size = max(0, stat.f_bavail * stat.f_frsize - free_bytes)
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * size)
    return ballast


def answers_are_whole(root: Path) -> list[str]:
    """Every stored response has its sidecar, and the sidecar's digest is the file's."""
    problems = []
    for folder in ("3_generation/generation_response", "4_evaluation/evaluation_response"):
        for text in (root / folder).rglob("*.txt"):
            if "_rejected" in text.parts or "_superseded" in text.parts:
                continue
            side = text.with_suffix(".json")
            if not side.is_file():
                problems.append(f"{text} has no sidecar")
                continue
            if json.loads(side.read_text())["response_sha256"] != hashlib.sha256(text.read_bytes()).hexdigest():
                problems.append(f"{text} does not match its sidecar")
    return problems


def test_a_disk_that_fills_mid_run_stops_it_with_one_sentence_and_the_rerun_pays_only_for_what_was_lost(
    small_disk, paid_env, openai_server, tmp_path
):
    data = write_experiment(small_disk / "data")  # 6 generations, 12 pairs
    openai_server.default_answer = lambda body: (
        f"An answer by {body['model']} to {body['messages'][-1]['content'][-60:]} " * 12 + "\nSCORE: 6"
    )
    ballast = fill_leaving(small_disk, 200_000)  # the tables, prompts and some answers fit (4 kB a file)

    full = run(data, paid_env, tmp_path, "--workers", "1")

    assert full.returncode != 0, explain(full)
    line = last_line(full.stderr)
    assert "the disk is full where" in line and "bytes needed" in line and "free some space" in line, explain(full)
    assert "Traceback" not in full.stderr and "Errno 28" not in full.stderr, explain(full)
    assert "results: not built: the run was stopped" in full.stderr
    assert answers_are_whole(data) == []
    paid_first = sum(asked(openai_server).values())
    stored_first = len(list((data / "3_generation" / "generation_response").glob("*.txt")))

    ballast.unlink()
    again = run(data, paid_env, tmp_path, "--workers", "1")

    assert again.returncode == 0, explain(again)
    assert answers_are_whole(data) == []
    counts = asked(openai_server)
    assert len(counts) == 6 + 12
    paid_again = sum(counts.values()) - paid_first
    # Asked again: only what was not stored, and of that at most the calls in flight when it filled.
    assert paid_again <= (6 + 12) - stored_first, (paid_first, stored_first, paid_again)
    assert sum(v - 1 for v in counts.values()) <= 4  # --concurrency 4: calls in flight when the disk filled
