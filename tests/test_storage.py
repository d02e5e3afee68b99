"""storage.py: atomic writes that survive faults and kills, write-once responses, the archive folders."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from daydreaming_dagster.store.files import atomic_write_text
from daydreaming_dagster.store.layout import sidecar_path, temp_path
from daydreaming_dagster.store.roots import StorageFull
from daydreaming_dagster.store.write_once import (
    StoredResponseConflict,
    archived_provenance,
    keep_rejected,
    move_aside,
    read_provenance,
    write_response_once,
)

PROVENANCE = {
    "backend": "openai",
    "model_id": "gen-model-1",
    "model": "test/gen-model-1",
    "temperature": 0.5,
    "max_tokens": 300,
    "prompt_sha256": hashlib.sha256(b"the prompt").hexdigest(),
    "prompt_tokens": 2,
    "completion_tokens": 3,
}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_whole(path: Path) -> None:
    """The response at `path` is complete: its sidecar exists and records exactly its bytes."""
    side = sidecar_path(path)
    assert side.is_file(), f"{path} has no sidecar"
    record = json.loads(side.read_text(encoding="utf-8"))
    data = path.read_bytes()
    assert record["response_bytes"] == len(data), path
    assert record["response_sha256"] == hashlib.sha256(data).hexdigest(), path


# --------------------------------------------------------------------------- write-once


def test_a_response_is_stored_with_a_sidecar_that_records_its_content(tmp_path):
    path = tmp_path / "3_generation" / "generation_response" / "task-1.txt"

    assert write_response_once(path, "Bees trade honey futures.", PROVENANCE) is True

    assert path.read_text(encoding="utf-8") == "Bees trade honey futures."
    record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    assert {k: record[k] for k in PROVENANCE} == PROVENANCE
    assert_whole(path)
    assert files_under(tmp_path) == [
        "3_generation/generation_response/task-1.json",
        "3_generation/generation_response/task-1.txt",
    ]


def test_writing_the_identical_response_again_writes_nothing(tmp_path):
    path = tmp_path / "task-1.txt"
    write_response_once(path, "same", PROVENANCE)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    assert write_response_once(path, "same", PROVENANCE) is False

    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    "text, change",
    [("a different answer", {}), ("same", {"prompt_sha256": "0" * 64}), ("same", {"temperature": 0.9})],
)
def test_a_different_response_never_overwrites_and_is_kept_aside(tmp_path, text, change):
    path = tmp_path / "task-1.txt"
    write_response_once(path, "same", PROVENANCE)

    with pytest.raises(StoredResponseConflict, match="never overwritten") as info:
        write_response_once(path, text, {**PROVENANCE, **change})

    assert path.read_text(encoding="utf-8") == "same"
    assert read_provenance(path)["temperature"] == 0.5
    [kept] = (tmp_path / "_rejected").glob("*.txt")
    assert str(kept) in str(info.value)
    assert kept.read_text(encoding="utf-8") == text  # paid for, so never dropped
    assert "already stored" in read_provenance(kept)["rejected_because"]


def test_concurrent_writers_of_one_response_store_exactly_one(tmp_path):
    """Two runs of the same partition at once: one answer is stored, the others are kept aside."""
    path = tmp_path / "task-1.txt"
    texts = [f"answer number {i} " * 20_000 for i in range(8)]
    outcomes: dict[int, object] = {}
    start = threading.Barrier(len(texts))

    def write(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = write_response_once(path, texts[i], {**PROVENANCE, "n": i})
        except StoredResponseConflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [i for i, outcome in outcomes.items() if outcome is True]
    assert len(winners) == 1
    assert path.read_text(encoding="utf-8") == texts[winners[0]]
    assert read_provenance(path)["n"] == winners[0]
    assert_whole(path)
    kept = sorted(p.read_text(encoding="utf-8") for p in (tmp_path / "_rejected").glob("*.txt"))
    assert kept == sorted(t for i, t in enumerate(texts) if i != winners[0])
    assert not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------- faults at the rename


@pytest.mark.parametrize("failing", [".txt", ".json"])
def test_a_fault_at_the_rename_leaves_no_response_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "task-1.txt"
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(failing):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageFull, match=f"the disk is full where {path} is written"):
        write_response_once(path, "x" * 100_000, PROVENANCE)

    assert files_under(tmp_path) == []  # no text, no orphan sidecar, no temp file
    monkeypatch.setattr(os, "replace", real_replace)
    assert write_response_once(path, "x" * 100_000, PROVENANCE) is True
    assert_whole(path)


def test_a_fault_at_the_rename_keeps_the_previous_file_of_an_overwritable_write(tmp_path, monkeypatch):
    path = tmp_path / "2_tasks" / "generation_tasks.csv"
    atomic_write_text(path, "old,table\n")

    def replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new,table\n")

    assert path.read_text() == "old,table\n"
    assert files_under(tmp_path) == ["2_tasks/generation_tasks.csv"]


def test_a_leftover_temp_file_is_reused_by_the_next_write_of_the_same_file(tmp_path):
    path = tmp_path / "task-1.txt"
    leftover = temp_path(path)
    leftover.write_text("half of an ans")  # as a killed writer leaves it
    temp_path(sidecar_path(path)).write_text('{"half": ')

    assert leftover.name == ".task-1.txt.writing.tmp"
    assert write_response_once(path, "the whole answer", PROVENANCE) is True

    assert path.read_text() == "the whole answer"
    assert_whole(path)
    assert files_under(tmp_path) == ["task-1.json", "task-1.txt"]


KILLED_WRITER = textwrap.dedent(
    """
    import hashlib, os, stat, sys, time
    from pathlib import Path
    from daydreaming_dagster.store.files import atomic_write_text
    from daydreaming_dagster.store.layout import sidecar_path, temp_path
    from daydreaming_dagster.store.write_once import StoredResponseConflict, archived_provenance, keep_rejected, move_aside, read_provenance, write_response_once

    real_fsync = os.fsync
    def slow_fsync(fd):  # widen the windows between writing, syncing and renaming
        if stat.S_ISREG(os.fstat(fd).st_mode):
            print("fsync", flush=True)  # a temp file is written and not yet renamed: the test's cue
        time.sleep(0.1)
        real_fsync(fd)
    if sys.argv[3] == "slow":
        os.fsync = slow_fsync

    folder = Path(sys.argv[1])
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        text = f"response {i}\\n" + f"word{i} " * 150_000
        provenance = {"model_id": "m", "model": "m", "temperature": 0.0, "max_tokens": 1,
                      "prompt_sha256": hashlib.sha256(str(i).encode()).hexdigest()}
        write_response_once(folder / f"r{i:03d}.txt", text, provenance)
    """
)


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_leaves_a_partial_response(tmp_path):
    folder = tmp_path / "3_generation" / "generation_response"
    count = 60  # more than the killed writers can finish
    rng = random.Random(20240611)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed_mid_write = 0
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(folder), str(count), "slow"],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout.readline().strip() == b"ready"
        # Kill at a random moment near the k-th temp file's fsync: inside its window (the temp file
        # not renamed yet) or just after. Timed by the writer's cue, not a clock: under load a
        # clock-timed kill landed while the writer was still checking the responses stored before.
        for _ in range(rng.randint(1, 8)):
            assert child.stdout.readline().strip() == b"fsync"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL, "the writer finished before it was killed"

        killed_mid_write += bool(list(folder.glob(".*.tmp")))
        responses = sorted(folder.glob("*.txt"))
        assert all(not p.name.startswith(".") for p in responses)
        for path in responses:
            assert_whole(path)
        # A sidecar may be in place without its text (killed between the two renames); a
        # response without a sidecar never is.
        assert {p.stem for p in responses} <= {p.stem for p in folder.glob("*.json")}

    assert killed_mid_write, "no kill landed during a write; the test proved nothing"

    # Finish the job: every response is stored once, and no temp file is left.
    finish = [sys.executable, "-c", KILLED_WRITER, str(folder), str(count), "fast"]
    subprocess.run(finish, env=env, check=True, stdout=subprocess.DEVNULL)
    names = files_under(folder)
    assert names == sorted([f"r{i:03d}.txt" for i in range(count)] + [f"r{i:03d}.json" for i in range(count)])
    for i in range(count):
        path = folder / f"r{i:03d}.txt"
        assert_whole(path)
        assert path.read_text().startswith(f"response {i}\n")


# --------------------------------------------------------------------------- moving aside


def test_move_aside_numbers_superseded_responses_and_never_overwrites(tmp_path):
    path = tmp_path / "task-1.txt"
    for n, text in enumerate(["first", "second", "third"], start=1):
        write_response_once(path, text, {**PROVENANCE, "n": n})
        if n < 3:
            assert move_aside(path) == tmp_path / "_superseded" / f"task-1.{n}.txt"

    assert path.read_text() == "third"
    assert (tmp_path / "_superseded" / "task-1.1.txt").read_text() == "first"
    assert read_provenance(tmp_path / "_superseded" / "task-1.2.txt")["n"] == 2
    assert move_aside(tmp_path / "nothing-here.txt") is None
    assert files_under(tmp_path) == [
        "_superseded/task-1.1.json",
        "_superseded/task-1.1.txt",
        "_superseded/task-1.2.json",
        "_superseded/task-1.2.txt",
        "task-1.json",
        "task-1.txt",
    ]


def test_move_aside_skips_a_number_whose_sidecar_is_taken(tmp_path):
    path = tmp_path / "task-1.txt"
    write_response_once(path, "answer", PROVENANCE)
    (tmp_path / "_superseded").mkdir()
    (tmp_path / "_superseded" / "task-1.1.json").write_text('{"kept": true}')

    assert move_aside(path).name == "task-1.2.txt"
    assert json.loads((tmp_path / "_superseded" / "task-1.1.json").read_text()) == {"kept": True}


def test_archived_provenance_finds_superseded_and_rejected_answers_of_the_given_responses(tmp_path):
    a, b, other = (tmp_path / f"{name}.txt" for name in ("task.a", "task.b", "other"))
    write_response_once(a, "old a", {**PROVENANCE, "n": 1})
    move_aside(a)
    write_response_once(a, "new a", {**PROVENANCE, "n": 2})
    keep_rejected(b, "", {**PROVENANCE, "n": 3}, "empty")
    keep_rejected(other, "", {**PROVENANCE, "n": 4}, "empty")

    found = sorted((p.name, kind, prov["n"]) for p, kind, prov in archived_provenance([a, b]))

    assert found == [("task.a.txt", "superseded", 1), ("task.b.txt", "rejected", 3)]
