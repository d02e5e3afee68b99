"""The data root on object storage: the store's conditional writes against a real S3-compatible
server (tests/s3_server.py), the one-sentence refusals, and the experiment's assets on an s3://
root through a Dagster instance. The CLI end to end (runs, overlap, a killed runner) is in
tests/test_object_store_runs.py."""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.store import files, object_spend, objects
from daydreaming_dagster.store.claims import Claim, Claims, ClaimTimes, Held, Owner
from daydreaming_dagster.store.layout import claim_path, sidecar_path, text_path
from daydreaming_dagster.store.object_archive import ObjectClaims
from daydreaming_dagster.store.object_paths import S3Path
from daydreaming_dagster.store.roots import StorageRefused, data_path
from daydreaming_dagster.store.spend import paid_tallies
from daydreaming_dagster.store.write_once import (
    StoredResponseConflict,
    move_aside,
    read_provenance,
    write_response_once,
)
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, REPLACE_CHANGED, Pipeline
from tests.s3_server import SECRET_KEY

PROVENANCE = {"model_id": "m", "model": "test/m", "temperature": 0.0, "max_tokens": 10, "prompt_sha256": "p", "backend": "test"}


# --------------------------------------------------------------------------- naming the root


def test_a_data_root_is_a_path_a_file_url_or_an_s3_url(tmp_path):
    assert data_path(str(tmp_path)) == tmp_path
    assert data_path(f"file://{tmp_path}") == tmp_path
    root = data_path("s3://bucket-a/some/prefix")
    assert isinstance(root, S3Path) and (root.bucket, root.key) == ("bucket-a", "some/prefix")
    assert str(root / "offline" / "x.txt") == "s3://bucket-a/some/prefix/offline/x.txt"
    path = text_path(root, "evaluation_response", {"generation_tasks": "g", "evaluation_tasks": "e"})
    assert str(path) == "s3://bucket-a/some/prefix/4_evaluation/evaluation_response/g/e.txt"
    assert str(sidecar_path(path)).endswith("/g/e.json") and claim_path(path).name == ".e.claim.json"


@pytest.mark.parametrize(
    "url, words",
    [
        ("gs://bucket/prefix", "gs:// data roots are not supported yet"),
        ("ftp://host/folder", "unsupported scheme ftp://"),
        ("s3://AKIA:secret@bucket/prefix", "carries credentials in its URL"),
        ("s3:///prefix", "names no bucket"),
    ],
)
def test_an_unusable_data_root_is_refused_in_one_sentence(url, words):
    with pytest.raises(StorageRefused) as refused:
        data_path(url)
    message = str(refused.value)
    assert words in message and message.count(". ") == 0 and message.endswith(".")
    assert "secret" not in message


def test_daydream_refuses_a_gs_root_in_one_sentence_before_doing_anything(tmp_path, monkeypatch, capsys):
    from daydreaming_dagster.runner.cli import main

    for name in ("DAYDREAM_DATA_ROOT", "DAYDREAM_BACKEND", "DAGSTER_HOME"):  # restored after the test
        monkeypatch.setenv(name, str(tmp_path / "unused"))
    assert main(["run", "--offline", "--data-root", "gs://bucket/exp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gs:// data roots are not supported yet") and err.count("\n") == 0
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------------- refusing weak storage


def test_a_local_file_system_whose_locks_fail_refuses_to_write(tmp_path, monkeypatch):
    # No file system here lacks flock, so its failure is simulated (the one mock of this file).
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    with pytest.raises(StorageRefused, match=r"cannot lock files \(ENOLCK\)") as refused:
        files.atomic_write_text(tmp_path / "answer.txt", "paid for")
    assert not (tmp_path / "answer.txt").exists()
    assert str(refused.value).count(". ") == 0
    with pytest.raises(StorageRefused):
        write_response_once(tmp_path / "r.txt", "paid for", PROVENANCE)


def test_a_server_that_ignores_conditional_writes_is_refused_before_any_write(s3):
    store = objects.S3Store(s3.bucket)

    def drop_conditions(params, **kwargs):  # what a server without conditional writes does with them
        params.pop("IfNoneMatch", None)
        params.pop("IfMatch", None)

    store.client.meta.events.register("provide-client-params.s3.PutObject", drop_conditions)
    with pytest.raises(StorageRefused, match="ignores conditional writes") as refused:
        store.create("claims/.a.claim.json", b"{}")
    assert str(refused.value).count(". ") == 0
    assert not [k for k in s3.keys() if k.startswith("claims/")]


# --------------------------------------------------------------------------- write-once on S3


def test_a_response_is_written_once_and_a_different_one_is_kept_aside(s3):
    path = S3Path(s3.bucket, "exp/3_generation/generation_response/g1.txt")
    assert write_response_once(path, "first answer", PROVENANCE) is True
    assert write_response_once(path, "first answer", PROVENANCE) is False  # the same answer: nothing written
    with pytest.raises(StoredResponseConflict, match="never overwritten"):
        write_response_once(path, "another answer", PROVENANCE)
    assert path.read_text() == "first answer"
    assert read_provenance(path)["response_bytes"] == len("first answer")
    rejected = [k for k in s3.keys("exp/") if "/_rejected/" in k]
    assert len(rejected) == 2 and b"another answer" in s3.read(next(k for k in rejected if k.endswith(".txt")))


def test_a_second_writer_that_loses_the_race_gets_412_and_keeps_the_first_answer(s3):
    path = S3Path(s3.bucket, "exp/3_generation/generation_response/g2.txt")
    store = path.store
    other = s3.client()

    def first_writer_lands(params, **kwargs):  # another writer stores its answer just before ours
        if params["Key"] == path.key and params.get("IfNoneMatch") == "*":
            other.put_object(Bucket=s3.bucket, Key=sidecar_path(path).key, Body=json.dumps({**PROVENANCE, "x": 1}).encode())
            other.put_object(Bucket=s3.bucket, Key=path.key, Body=b"the first writer's answer")

    store.client.meta.events.register("provide-client-params.s3.PutObject", first_writer_lands)
    try:
        with pytest.raises(StoredResponseConflict):
            write_response_once(path, "the second writer's answer", PROVENANCE)
    finally:
        store.client.meta.events.unregister("provide-client-params.s3.PutObject", first_writer_lands)
    assert path.read_text() == "the first writer's answer"
    assert read_provenance(path)["x"] == 1  # its sidecar was given back
    assert any("/_rejected/" in k for k in s3.keys("exp/"))


def test_superseding_copies_the_old_answer_aside_before_removing_it(s3):
    path = S3Path(s3.bucket, "exp/3_generation/generation_response/g3.txt")
    write_response_once(path, "old answer", PROVENANCE)
    first = move_aside(path)
    assert str(first).endswith("/_superseded/g3.1.txt") and first.read_text() == "old answer"
    assert json.loads(sidecar_path(first).read_text())["response_bytes"] == len("old answer")
    assert not path.is_file() and not sidecar_path(path).is_file()
    write_response_once(path, "new answer", PROVENANCE)
    second = move_aside(path)
    assert str(second).endswith("/_superseded/g3.2.txt") and second.read_text() == "new answer"
    assert move_aside(path) is None
    tallies = paid_tallies(S3Path(s3.bucket, "exp"))
    assert tallies[("generation_response", "m", "test")].calls == 2  # both paid answers still count


def test_claims_on_s3_are_exclusive_renewed_taken_over_and_released_by_etag(s3):
    now = [1000.0]
    claims = Claims(ObjectClaims(), ClaimTimes(lease_s=10, renew_s=1), clock=lambda: now[0])
    path = S3Path(s3.bucket, "exp/3_generation/generation_response/.g4.claim.json")
    mine = claims.take(path, Owner("host-a", 1, "run-a"), {"asset": "generation_response"})
    assert isinstance(mine, Claim)
    held = claims.take(path, Owner("host-b", 2, "run-b"), {"asset": "generation_response"})
    assert isinstance(held, Held) and held.record["host"] == "host-a"
    assert claims.renew(mine)
    now[0] += 11  # host-a's lease ran out
    theirs = claims.take(path, Owner("host-b", 2, "run-b"), {"asset": "generation_response"})
    assert isinstance(theirs, Claim) and theirs.took_over["host"] == "host-a"
    assert not claims.renew(mine) and not claims.release(mine)  # no longer ours: the ETag moved on
    assert claims.release(theirs) and not path.is_file()


def test_the_spending_lock_on_s3_is_renewed_while_held_so_a_slow_count_keeps_it(s3, monkeypatch):
    # A lease that a renewal every 0.2 s keeps with 1.8 s to spare (a loaded CI machine delays them).
    monkeypatch.setattr(object_spend, "_LOCK_TIMES", ClaimTimes(lease_s=2.0, renew_s=0.2))
    folder = S3Path(s3.bucket, "exp/.spend")
    holding, order = threading.Event(), []

    def slow_count() -> None:
        with object_spend.object_spending_lock(folder):
            holding.set()
            time.sleep(4.5)  # more than two leases: only the renewals keep it
            order.append("first released")

    first = threading.Thread(target=slow_count)
    first.start()
    holding.wait(timeout=30)
    with object_spend.object_spending_lock(folder):  # waits for the first holder, never takes it over
        order.append("second took it")
    first.join()

    assert order == ["first released", "second took it"]
    assert not (folder / "lock.json").is_file()


# --------------------------------------------------------------------------- the assets on S3


@pytest.fixture
def s3_pipeline(tmp_path, s3, instance, openai_server, monkeypatch) -> Pipeline:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    url = s3.upload(write_experiment(tmp_path / "data"), "experiment")
    pipe = Pipeline(data_path(url), instance, openai_server)
    pipe.tables()
    return pipe


@pytest.mark.slow
def test_the_pipeline_on_s3_stores_the_same_files_resumes_free_and_replaces_deliberately(s3_pipeline, s3):
    pipe = s3_pipeline
    pipe.generate_all()
    pipe.evaluate_all()
    assert len(pipe.server.requests) == 6 + 12
    keys = s3.keys("experiment/")
    assert len([k for k in keys if k.startswith("experiment/3_generation/generation_response/") and k.endswith(".txt")]) == 6
    assert len([k for k in keys if k.startswith("experiment/4_evaluation/evaluation_response/") and k.endswith(".json")]) == 12
    assert not [k for k in keys if k.endswith((".claim.json", ".tmp"))]
    assert pipe.materialize(dg.AssetSelection.groups("results")).success
    assert "experiment/5_results/score_heatmap.png" in s3.keys("experiment/5_results/")

    # Resume: what is stored is reused, nothing is asked again (the CLI's resume after a SIGKILL is
    # in tests/test_object_store_runs.py).
    assert pipe.generate(pipe.generation_keys()[-1]).success and pipe.evaluate(pipe.pairs()[-1]).success
    assert len(pipe.server.requests) == 6 + 12

    # A changed generation template: refused without replace_changed, then replaced deliberately.
    key = pipe.generation_keys()[0]
    template = "experiment/1_raw/generation_templates/gen-a.txt"
    s3.client().put_object(Bucket=s3.bucket, Key=template, Body=s3.read(template) + b"\nBe brief.")
    pipe.tables()
    assert not pipe.generate(key).success
    assert len(pipe.server.requests) == 6 + 12
    assert pipe.generate(key, REPLACE_CHANGED).success
    assert len(pipe.server.requests) == 6 + 12 + 1
    superseded = [k for k in s3.keys("experiment/3_generation/generation_response/_superseded/")]
    assert sorted(Path(k).name for k in superseded) == [f"{key}.1.json", f"{key}.1.txt"]

    # Credentials are never written anywhere: not in an object, not in a materialization.
    for k in s3.keys():
        assert SECRET_KEY.encode() not in s3.read(k) and KEY.encode() not in s3.read(k), k
    records = pipe.instance.fetch_materializations(dg.AssetKey("generation_response"), limit=1000).records
    assert records
    for record in records:
        metadata = str(record.event_log_entry.asset_materialization.metadata)
        assert SECRET_KEY not in metadata and KEY not in metadata and "s3://" in metadata


def test_a_table_on_s3_is_read_again_only_when_its_etag_changed(s3):
    from daydreaming_dagster.store.csv_tables import read_table

    path = S3Path(s3.bucket, "exp/2_tasks/t.csv")
    path.write_text("combo_id,n\nc1,1\n")
    assert read_table(path)["combo_id"].tolist() == ["c1"]
    assert read_table(path)["combo_id"].tolist() == ["c1"]  # a conditional GET: 304, the cached table
    path.write_text("combo_id,n\nc1,1\nc2,2\n")
    assert read_table(path)["combo_id"].tolist() == ["c1", "c2"]
