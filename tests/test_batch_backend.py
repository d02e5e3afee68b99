"""The OpenAI batch protocol client (llm/batch_backend.py) against the test server's batch endpoints."""

from __future__ import annotations

import json
import time

import pytest

from daydreaming_dagster.llm.batch_backend import OpenAIBatchBackend, jsonl_line, split_lines
from daydreaming_dagster.llm.requests import LLMError, LLMRequest
from tests.pipeline import KEY


def request(n: int, model: str = "test/m") -> LLMRequest:
    return LLMRequest("m", model, f"prompt number {n}", 0.5, 50)


def finished(backend: OpenAIBatchBackend, batch_id: str):
    deadline = time.monotonic() + 10
    while not (state := backend.status(batch_id)).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return state


def test_a_batch_is_uploaded_created_polled_and_collected(openai_server):
    openai_server.batches.delay_s = 0.1
    openai_server.batches.fail_when = lambda line: line["custom_id"] == "k2"
    backend = OpenAIBatchBackend(KEY, openai_server.base_url)
    backend.check_ready()
    requests = {f"k{n}": request(n) for n in range(3)}

    batch_id = backend.submit("test/m", requests, {"daydream_submission": "abc"})
    state = finished(backend, batch_id)
    results = backend.collect(batch_id, requests)

    assert state.status == "completed" and (state.total, state.completed, state.failed) == (3, 2, 1)
    assert set(results.answers) == {"k0", "k1"} and set(results.errors) == {"k2"}
    provenance = results.answers["k0"].provenance
    assert provenance["backend"] == "openai-batch" and provenance["batch_id"] == batch_id
    assert provenance["prompt_sha256"] == requests["k0"].prompt_sha256 and provenance["prompt_tokens"] == 3
    [uploaded] = [f for f in openai_server.batches.files.values() if f["purpose"] == "batch"]
    assert json.loads(uploaded["data"].splitlines()[0])["body"]["messages"][0]["content"] == "prompt number 0"
    assert openai_server.requests == []  # nothing went to the live endpoint
    assert backend.find("daydream_submission", "abc").id == batch_id
    assert backend.find("daydream_submission", "other") is None


def test_an_expired_batch_reports_the_requests_it_did_not_answer(openai_server):
    openai_server.batches.delay_s = 0
    openai_server.batches.expire_when = lambda batch: True
    openai_server.batches.expire_keep = 1
    backend = OpenAIBatchBackend(KEY, openai_server.base_url)
    requests = {f"k{n}": request(n) for n in range(3)}
    batch_id = backend.submit("test/m", requests, {})

    assert finished(backend, batch_id).status == "expired"
    results = backend.collect(batch_id, requests)
    assert set(results.answers) == {"k0"}
    assert set(results.errors) == {"k1", "k2"} and "batch_expired" in results.errors["k1"]


def test_a_provider_without_batch_endpoint_is_refused_in_one_sentence(openai_server):
    openai_server.batches.supported = False
    with pytest.raises(LLMError) as caught:
        OpenAIBatchBackend(KEY, openai_server.base_url).check_ready()
    message = str(caught.value)
    assert "has no batch endpoint (HTTP 404" in message and message.count(". ") == 0
    assert openai_server.batches.files_uploaded == 0


def test_files_are_split_at_the_request_and_size_limits():
    lines = [(f"k{n}", jsonl_line(f"k{n}", request(n))) for n in range(7)]
    size = len(lines[0][1])
    assert [len(f) for f in split_lines(lines, 3, 10**6)] == [3, 3, 1]
    assert [len(f) for f in split_lines(lines, 100, 2 * size + 1)] == [2, 2, 2, 1]
    with pytest.raises(LLMError, match="over the provider's"):
        split_lines(lines, 100, size - 1)


def test_a_file_with_two_models_is_refused(openai_server):
    backend = OpenAIBatchBackend(KEY, openai_server.base_url)
    with pytest.raises(LLMError, match="names one model"):
        backend.submit("test/m", {"a": request(1), "b": request(2, "test/other")}, {})
    assert openai_server.batches.files_uploaded == 0


def test_batch_mode_is_refused_on_an_object_store_data_root_and_holds_nothing_back_there():
    from daydreaming_dagster.store.batch_ledger import BatchLedger
    from daydreaming_dagster.store.reservations import batch_reservations
    from daydreaming_dagster.store.roots import StorageRefused

    ledger = BatchLedger("s3://daydream-test/experiment")
    assert ledger.held_keys("evaluation_response") == {}  # a live run on S3 reads no records
    assert batch_reservations("s3://daydream-test/experiment") == []
    with pytest.raises(StorageRefused, match="batch mode keeps its records on a local data root"):
        ledger.refuse_remote()
    with pytest.raises(StorageRefused):
        ledger.write({"submission": "x", "state": "intended"})
