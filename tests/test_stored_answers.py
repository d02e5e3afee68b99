"""Stored answers are checked against their sidecars (length and sha256) wherever they are reused:
by `daydream run` and `daydream plan` on every call, by the response steps before they reuse one,
and by the text IO manager before it hands one downstream. A mismatch is said in one sentence,
never overwritten, left out of the results, and re-asked only with --replace-changed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.analysis.tables import UNVERIFIED
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.resources.response_store import ResponseStore
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.runner.reruns.changes import EDITED
from daydreaming_dagster.store.archive import mismatch_message
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path
from daydreaming_dagster.store.object_paths import S3Path
from daydreaming_dagster.store.roots import data_path
from daydreaming_dagster.store.write_once import StoredResponseConflict, verify_stored, write_response_once
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, Pipeline

CUT_SHORT = "8 bytes where its sidecar records"
DIGEST_ONLY = "its sha256 is not the one its sidecar records"


@dataclass
class Finished:
    """A tiny experiment after a finished `daydream run --offline` (6 generations, 12 pairs)."""

    data: Path
    capsys: pytest.CaptureFixture

    @property
    def out(self) -> Path:
        return self.data / "offline"

    def run(self, *extra: str, command: str = "run") -> tuple[int, str, str]:
        argv = [command, "--offline", "--data-root", str(self.data)]
        code = daydream([*argv, "--concurrency", "1", *extra] if command == "run" else argv)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def answers(self) -> dict[Path, bytes]:
        """Every response file under the output root (stored, superseded, rejected) and its sidecar."""
        folders = [self.out / "3_generation" / "generation_response", self.out / "4_evaluation" / "evaluation_response"]
        return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}

    def judge_answer(self) -> Path:
        return sorted((self.out / "4_evaluation" / "evaluation_response").glob("*/*.txt"))[0]

    def scores(self) -> pd.DataFrame:
        return pd.read_csv(self.out / "5_results" / "parsed_scores.csv", dtype={"parse_error": "string"})

    def row(self, answer: Path) -> pd.Series:
        scores = self.scores()
        (row,) = scores[scores["response_path"] == str(answer)].to_dict("records")
        return pd.Series(row)


@pytest.fixture
def finished(tmp_path, monkeypatch, capsys) -> Finished:
    data = write_experiment(tmp_path / "data")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "DAYDREAM_DATA_ROOT", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    run = Finished(data, capsys)
    code, out, err = run.run()
    assert code == 0, err
    assert "evaluation: 12 ran" in out
    return run


def mentions(err: str, path: Path) -> list[str]:
    return [line for line in err.splitlines() if str(path) in line]


def assert_reported_and_left_out(run: Finished, answer: Path, reason: str) -> None:
    """The rerun says it in one sentence, rebuilds the results without the answer, and pays nothing."""
    before = run.answers()
    code, out, err = run.run()
    assert code == 0, err
    (sentence,) = mentions(err, answer)
    assert sentence == (
        f"evaluation: the stored answer {answer} does not match its sidecar ({reason}); it is kept as it is and "
        "its pair has no score in the results: re-ask it with `daydream run --replace-changed` (the old file "
        "then moves to _superseded/), or restore the file."
    )
    assert f"evaluation: 1 pair out of date ({EDITED})" in err
    assert "generation: 0 ran" in out and "evaluation: 0 ran" in out and "results: 1 ran" in out
    row = run.row(answer)
    assert pd.isna(row["score"]) and row["parse_error"].startswith(f"{UNVERIFIED} ({reason}")
    assert run.scores()["score"].notna().sum() == 11
    assert run.answers() == before  # nothing asked, nothing written: the edited file is as it was left
    # Once the results have left it out, they stay current while nothing else changes.
    code, out, err = run.run()
    assert code == 0 and "results: 0 ran, 1 skipped" in out and len(mentions(err, answer)) == 1


@pytest.mark.slow
def test_a_judge_answer_cut_short_is_named_left_out_of_the_results_and_kept(finished):
    answer = finished.judge_answer()
    cut = answer.read_bytes()[:8]
    answer.write_bytes(cut)
    recorded = json.loads(sidecar_path(answer).read_text())["response_bytes"]
    assert_reported_and_left_out(finished, answer, f"{CUT_SHORT} {recorded:,}")
    assert answer.read_bytes() == cut


@pytest.mark.slow
def test_a_judge_answer_edited_to_the_same_length_is_caught_by_its_digest(finished):
    answer = finished.judge_answer()
    original = answer.read_bytes()
    edited = original.replace(b"SCORE: ", b"SCORE:1") if b"SCORE: " in original else original.swapcase()
    assert len(edited) == len(original) and edited != original
    answer.write_bytes(edited)
    assert_reported_and_left_out(finished, answer, DIGEST_ONLY)
    assert answer.read_bytes() == edited


@pytest.mark.slow
def test_replace_changed_re_asks_exactly_that_pair_once_and_restoring_makes_all_current(finished):
    answer = finished.judge_answer()
    original = answer.read_bytes()
    score = finished.row(answer)["score"]
    before = finished.answers()

    # (e) restored by hand: everything is current again, and the results count it again; no call.
    answer.write_bytes(original[:8])
    assert finished.run()[0] == 0
    answer.write_bytes(original)
    code, out, err = finished.run()
    assert code == 0 and "does not match" not in err and "out of date" not in err
    assert "evaluation: 0 ran" in out and "results: 1 ran" in out  # rebuilt once: the answer counts again
    assert finished.row(answer)["score"] == score and finished.answers() == before
    code, out, _ = finished.run()
    assert "results: 0 ran, 1 skipped" in out

    # (c) --replace-changed: that pair alone is asked again, once; the cut answer moves aside.
    answer.write_bytes(original[:8])
    code, out, err = finished.run("--replace-changed")
    assert code == 0, err
    (sentence,) = mentions(err, answer)
    assert sentence.endswith("; re-asking it now (the old file then moves to _superseded/).")
    assert "generation: 0 ran" in out and "evaluation: 1 ran, 11 skipped" in out and "results: 1 ran" in out
    superseded = answer.parent / "_superseded" / f"{answer.stem}.1.txt"
    assert superseded.read_bytes() == original[:8]
    assert answer.read_bytes() == original  # the offline judge answers the same prompt the same way
    after = finished.answers()
    assert set(after) - set(before) == {superseded, sidecar_path(superseded)}
    assert all(after[p] == before[p] for p in before if p not in (answer, sidecar_path(answer)))
    assert finished.row(answer)["score"] == score
    code, out, err = finished.run()
    assert "does not match" not in err and "results: 0 ran, 1 skipped" in out and finished.answers() == after


@pytest.mark.slow
def test_a_generation_answer_cut_short_renders_no_judge_prompt_and_nothing_is_judged_again(finished):
    generation = sorted((finished.out / "3_generation" / "generation_response").glob("*.txt"))[0]
    prompts = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (finished.out / "4_evaluation" / "evaluation_prompt").rglob("*.txt")}
    generation.write_bytes(generation.read_bytes()[:8])
    before = finished.answers()
    code, out, err = finished.run()
    assert code == 0, err
    (sentence,) = mentions(err, generation)
    assert sentence.startswith(f"generation: the stored answer {generation} does not match its sidecar ({CUT_SHORT} ")
    assert sentence.endswith(
        "; it is kept as it is, no judge prompt is rendered from it and it is left out of the results: re-ask it "
        "with `daydream run --replace-changed` (the old file then moves to _superseded/), or restore the file."
    )
    assert f"generation: 1 generation out of date ({EDITED})" in err
    assert "evaluation: 2 more pairs judge an out-of-date generation" in err
    assert "generation: 0 ran" in out and "evaluation: 0 ran" in out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in prompts} == prompts  # none rendered again
    assert finished.answers() == before


@pytest.mark.slow
def test_daydream_plan_reports_the_edited_answer(finished):
    answer = finished.judge_answer()
    answer.write_bytes(answer.read_bytes()[:8])
    before = finished.answers()
    code, out, err = finished.run(command="plan")
    assert code == 0, err
    (sentence,) = mentions(out, answer)
    assert sentence.strip().startswith(f"evaluation: the stored answer {answer} does not match its sidecar ({CUT_SHORT} ")
    assert f"evaluation: 1 pair out of date ({EDITED})" in out
    assert "--replace-changed would make 1 more call(s)" in out
    assert finished.answers() == before


# --------------------------------------------------------------------------- the one check, unit by unit

PROVENANCE = {"model_id": "m", "model": "test/m", "temperature": 0.5, "max_tokens": 100, "prompt_sha256": "p"}
REQUEST = LLMRequest("m", "test/m", "the prompt", 0.5, 100)


def stored(tmp_path: Path, text: str = "An answer.\nSCORE: 7\n") -> Path:
    path = text_path(tmp_path, "generation_response", "g1")
    assert write_response_once(path, text, {**PROVENANCE, "prompt_sha256": REQUEST.fingerprint()["prompt_sha256"]})
    return path


def rewrite_sidecar(path: Path, drop: tuple[str, ...]) -> None:
    record = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({k: v for k, v in record.items() if k not in drop}))


def test_verify_stored_checks_length_and_digest_and_accepts_what_predates_them(tmp_path):
    path = stored(tmp_path)
    assert verify_stored(path) is None
    assert verify_stored(path.with_name("absent.txt")) is None
    path.write_text("An answer.\nSCORE: 9\n")  # same length, other text
    assert verify_stored(path) == DIGEST_ONLY
    rewrite_sidecar(path, ("response_sha256",))  # the size alone still catches a cut
    path.write_text("An answer")
    assert verify_stored(path) == "9 bytes where its sidecar records 20"
    rewrite_sidecar(path, ("response_sha256", "response_bytes"))  # an older sidecar: nothing to check
    assert verify_stored(path) is None
    sidecar_path(path).unlink()  # no sidecar: unverifiable (and never reused: no fingerprint)
    assert verify_stored(path) is None


def test_the_response_step_refuses_a_mismatch_even_without_a_digest_and_reuses_an_older_sidecar(tmp_path):
    path = stored(tmp_path)
    store = ResponseStore(base_path=str(tmp_path)).archive()
    assert store.reusable("generation_response", "g1", REQUEST, replace_changed=False).text == path.read_text()
    rewrite_sidecar(path, ("response_sha256",))
    path.write_text("An answer")
    with pytest.raises(StoredResponseConflict, match="no longer matches the digest in its sidecar or the length it records"):
        store.reusable("generation_response", "g1", REQUEST, replace_changed=False)
    assert store.reusable("generation_response", "g1", REQUEST, replace_changed=True) is None
    assert path.read_text() == "An answer"  # refused, never rewritten
    rewrite_sidecar(path, ("response_bytes",))  # predates both: reused as today
    assert store.reusable("generation_response", "g1", REQUEST, replace_changed=False).text == "An answer"


def test_verify_stored_reads_an_s3_path_the_same_way(s3):
    path = data_path(s3.url("exp")) / "3_generation" / "generation_response" / "g1.txt"
    assert isinstance(path, S3Path)
    assert write_response_once(path, "An answer.\nSCORE: 7\n", PROVENANCE)
    assert verify_stored(path) is None
    s3.client().put_object(Bucket=s3.bucket, Key=path.key, Body=b"An answe")
    assert verify_stored(path) == "8 bytes where its sidecar records 20"
    assert verify_stored(path.with_name("absent.txt")) is None


# --------------------------------------------------------------------------- the text IO manager


def test_the_text_io_manager_refuses_one_partition_and_a_range_names_the_file(pipeline, openai_server):
    pipeline.generate_all()
    pipeline.evaluate_all()
    key = pipeline.generation_keys()[0]
    path = pipeline.response_path(key)
    path.write_bytes(path.read_bytes()[:8])
    reason = verify_stored(path)
    assert reason.startswith(CUT_SHORT)
    pairs = [p for p in pipeline.pairs() if p.keys_by_dimension["generation_tasks"] == key]
    one = pipeline.materialize(["evaluation_prompt"], pairs[0])
    assert not one.success
    assert failure_text(one) == mismatch_message("generation_response", key, path, reason)
    assert mismatch_message("generation_response", key, path, reason).endswith(
        "so it is not used; re-ask it with `daydream run --replace-changed` (the old file then moves to "
        "_superseded/), or restore the file."
    )
    method = pairs[0].keys_by_dimension["evaluation_tasks"]
    ranged = pipeline.materialize_range(["evaluation_prompt"], [p for p in pipeline.pairs() if p.keys_by_dimension["evaluation_tasks"] == method])
    assert not ranged.success
    assert failure_text(ranged) == mismatch_message("generation_response", key, path, reason)
    assert pipeline.materialize(dg.AssetSelection.groups("results")).success  # the report leaves it out
    assert len(openai_server.requests) == 18 and len(path.read_bytes()) == 8


def test_on_s3_a_judge_answer_cut_short_gets_no_score(tmp_path, s3, instance, openai_server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    pipe = Pipeline(data_path(s3.upload(write_experiment(tmp_path / "data"), "experiment")), instance, openai_server)
    pipe.tables()
    pipe.generate_all()
    pipe.evaluate_all()
    pair = pipe.pairs()[0].keys_by_dimension
    answer = text_path(pipe.root, "evaluation_response", pair)
    s3.client().put_object(Bucket=s3.bucket, Key=answer.key, Body=s3.read(answer.key)[:8])
    assert pipe.materialize(dg.AssetSelection.groups("results")).success
    scores = read_table(table_path(pipe.root, "parsed_scores", "results"))
    row = scores[scores["response_path"] == str(answer)].iloc[0]
    assert pd.isna(row["score"]) and row["parse_error"].startswith(f"{UNVERIFIED} ({CUT_SHORT} ")
    assert scores["parse_error"].astype(str).str.startswith(UNVERIFIED).sum() == 1 and len(openai_server.requests) == 18
    assert len(s3.read(answer.key)) == 8  # never rewritten
