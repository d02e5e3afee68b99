"""LLMClientResource against a real HTTP server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import json
import pickle
import re
import socket
import time
from datetime import datetime

import dagster as dg
import pytest

from daydreaming_dagster.analysis.scoring import parse_score
from daydreaming_dagster.llm.requests import APIRefusedError, IncompleteResponseError, LLMError, LLMRequest, LLMResponse
from daydreaming_dagster.resources.llm import LLMClientResource
from tests.openai_server import (
    delay,
    drop,
    empty,
    html_200,
    json_body,
    null_content,
    ok,
    status,
    truncated,
)

KEY = "sk-or-v1-TESTKEY-0123456789abcdef"
MISSING_KEY = "OPENROUTER_API_KEY is not set; put it in .env or the environment (see .env.example), or run with --offline."

REQUEST = LLMRequest(
    model_id="deepseek-chat",
    model="deepseek/deepseek-chat",
    prompt="Combine beekeeping and stock markets into one new idea.\nBe concrete.",
    temperature=0.7,
    max_tokens=321,
)


def client_for(server, **overrides) -> LLMClientResource:
    settings = dict(
        api_key=KEY,
        base_url=server.base_url,
        timeout_s=5.0,
        max_attempts=4,
        max_wait_s=5.0,
        backoff_base_s=0.01,
    )
    settings.update(overrides)
    return LLMClientResource(**settings)


def assert_key_free(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)


# --------------------------------------------------------------------------- success


def test_success_sends_exactly_the_request_and_records_provenance(openai_server):
    openai_server.latency_s = 0.2
    openai_server.script(ok("Bees price honey futures by dancing."))

    response = client_for(openai_server).complete(REQUEST)

    assert response.text == "Bees price honey futures by dancing."
    [seen] = openai_server.requests
    assert seen.method == "POST"
    assert seen.path == "/v1/chat/completions"
    assert seen.body == {
        "model": "deepseek/deepseek-chat",
        "messages": [{"role": "user", "content": REQUEST.prompt}],
        "temperature": 0.7,
        "max_tokens": 321,
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"

    [answered] = openai_server.responses
    p = response.provenance
    assert p["backend"] == "openai"
    assert {k: p[k] for k in REQUEST.fingerprint()} == REQUEST.fingerprint()
    assert p["prompt_sha256"] == REQUEST.prompt_sha256
    assert p["generation_id"] == answered["id"]
    assert p["finish_reason"] == "stop"
    assert p["prompt_tokens"] == answered["usage"]["prompt_tokens"]
    assert p["completion_tokens"] == answered["usage"]["completion_tokens"]
    assert p["total_tokens"] == answered["usage"]["total_tokens"]
    assert p["attempts"] == 1
    assert 0.2 <= p["latency_s"] < 5
    assert datetime.fromisoformat(p["created_at"]).utcoffset().total_seconds() == 0
    assert p["prompt_chars"] == len(REQUEST.prompt)
    assert p["provider_cost_usd"] is None  # this provider reports no cost
    assert set(p) == {
        "backend", "model_id", "model", "temperature", "max_tokens", "prompt_sha256", "finish_reason",
        "prompt_tokens", "completion_tokens", "total_tokens", "provider_cost_usd", "prompt_chars", "latency_s",
        "attempts", "generation_id", "created_at",
    }  # fmt: skip
    assert json.loads(json.dumps(p)) == p
    assert_key_free(json.dumps(p), response)


@pytest.mark.parametrize("reported, recorded", [(0.00042, 0.00042), (0, 0.0), ("0.1", None), (-1, None), (True, None)])
def test_the_cost_a_provider_reports_is_recorded_when_it_is_an_amount(openai_server, reported, recorded):
    openai_server.cost_for = lambda body, usage: reported  # OpenRouter's usage.cost, in USD

    response = client_for(openai_server).complete(REQUEST)

    assert openai_server.responses[0]["usage"]["cost"] == reported
    assert response.provenance["provider_cost_usd"] == recorded


def test_default_answer_is_computed_from_the_request_body(openai_server):
    openai_server.default_answer = lambda body: f"echo {body['model']} {body['max_tokens']}"
    assert client_for(openai_server).complete(REQUEST).text == "echo deepseek/deepseek-chat 321"


def test_numpy_parameters_from_pandas_are_sent_as_plain_numbers(openai_server):
    np = pytest.importorskip("numpy")
    request = LLMRequest(
        model_id="m", model="vendor/m", prompt="hi", temperature=np.float64(0.25), max_tokens=np.int64(99)
    )
    response = client_for(openai_server).complete(request)
    assert openai_server.requests[0].body["temperature"] == 0.25
    assert openai_server.requests[0].body["max_tokens"] == 99
    assert json.loads(json.dumps(response.provenance))["max_tokens"] == 99


def test_openai_org_and_project_from_the_environment_are_not_forwarded(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-private")
    client_for(openai_server).complete(REQUEST)
    headers = openai_server.requests[0].headers
    assert "openai-organization" not in headers
    assert "openai-project" not in headers


# --------------------------------------------------------------------------- transient faults


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(status(429), id="429-without-retry-after"),
        pytest.param(status(500), id="500"),
        pytest.param(status(502), id="502"),
        pytest.param(status(503), id="503"),
        pytest.param(status(504), id="504"),
        pytest.param(html_200(), id="html-200"),
        pytest.param(drop(), id="dropped-connection"),
    ],
)
def test_transient_fault_then_success(openai_server, fault):
    openai_server.script(fault, ok("recovered"))

    response = client_for(openai_server).complete(REQUEST)

    assert response.text == "recovered"
    assert len(openai_server.requests) == 2
    assert response.provenance["attempts"] == 2
    assert response.provenance["generation_id"] == openai_server.responses[-1]["id"]


def test_429_honours_retry_after(openai_server):
    openai_server.script(status(429, retry_after=1), ok("after the wait"))

    started = time.monotonic()
    response = client_for(openai_server).complete(REQUEST)
    elapsed = time.monotonic() - started

    assert response.text == "after the wait"
    assert len(openai_server.requests) == 2
    assert response.provenance["attempts"] == 2
    assert elapsed >= 0.95  # backoff_base_s is 0.01, so this wait is the Retry-After


def test_a_retry_after_longer_than_a_call_waits_fails_the_call_at_once(openai_server):
    """Asking again before the provider said to would only be refused again (twelve requests over
    ten minutes under `Retry-After: 100000` before): one request, one sentence naming the wait."""
    openai_server.script(status(429, retry_after=100000), ok("too soon"))

    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        client_for(openai_server, max_wait_s=60).complete(REQUEST)

    assert len(openai_server.requests) == 1
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "Retry-After" in message and "100000 s" in message and "60 s" in message and "\n" not in message
    assert not isinstance(caught.value, APIRefusedError)  # a rate limit, not a refused key


def test_a_server_that_never_answers_ends_the_call_within_its_deadline(openai_server):
    """Every attempt waits at most its timeout, and all of them end within the call's deadline:
    a dead server costs a call minutes, not the sum of six timeouts."""
    openai_server.behaviour_for = lambda body: delay(60)

    started = time.monotonic()
    with pytest.raises(APIRefusedError) as caught:
        client_for(openai_server, timeout_s=0.6, deadline_s=1.5, max_attempts=6, backoff_base_s=0.05).complete(REQUEST)
    elapsed = time.monotonic() - started

    assert elapsed < 3.0, elapsed  # the deadline, not 6 x 0.6 s plus waits
    assert 2 <= len(openai_server.requests) <= 3
    message = str(caught.value)
    assert "gave no answer" in message and "DAYDREAM_CALL_DEADLINE_S" in message and "\n" not in message


@pytest.mark.parametrize("code", [401, 402])
def test_a_refused_key_or_an_account_that_cannot_pay_refuses_the_whole_api(openai_server, code):
    openai_server.script(status(code))

    with pytest.raises(APIRefusedError):
        client_for(openai_server).complete(REQUEST)

    assert len(openai_server.requests) == 1


@pytest.mark.parametrize("code", [400, 403, 404])
def test_a_request_the_provider_refuses_fails_only_that_call(openai_server, code):
    openai_server.script(status(code))

    with pytest.raises(LLMError) as caught:
        client_for(openai_server).complete(REQUEST)

    assert not isinstance(caught.value, APIRefusedError)


def test_timeout_then_success(openai_server):
    openai_server.script(delay(3), ok("in time"))

    started = time.monotonic()
    response = client_for(openai_server, timeout_s=0.5).complete(REQUEST)

    assert response.text == "in time"
    assert len(openai_server.requests) == 2
    assert response.provenance["attempts"] == 2
    assert time.monotonic() - started < 2.5


def test_connection_refused_is_retried_then_reported(openai_server):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = client_for(openai_server, base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2)

    with pytest.raises(LLMError) as caught:
        client.complete(REQUEST)

    message = str(caught.value)
    assert "deepseek-chat" in message and "2 attempts" in message and "connection" in message.lower()
    assert_key_free(message)


@pytest.mark.parametrize("fault", [status(503), drop(), html_200()], ids=["503", "drop", "html-200"])
def test_exhausted_attempts_raise_naming_model_attempts_and_cause(openai_server, fault):
    openai_server.script(*[fault] * 3)  # a 4th request would succeed: the count below matters

    with pytest.raises(LLMError) as caught:
        client_for(openai_server, max_attempts=3).complete(REQUEST)

    assert len(openai_server.requests) == 3
    message = str(caught.value)
    assert "deepseek-chat" in message and "deepseek/deepseek-chat" in message
    assert "after 3 attempts" in message
    assert "\n" not in message
    assert not isinstance(caught.value, IncompleteResponseError)
    assert_key_free(message, repr(caught.value))


def test_exhausted_503_message_carries_status_and_provider_message(openai_server):
    openai_server.script(*[status(503, message="No instances available")] * 2)

    with pytest.raises(LLMError) as caught:
        client_for(openai_server, max_attempts=2).complete(REQUEST)

    message = str(caught.value)
    assert "503" in message and "No instances available" in message and "2 attempts" in message


# --------------------------------------------------------------------------- permanent faults


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_permanent_fault_fails_at_once(openai_server, code):
    openai_server.script(status(code, message=f"provider says no ({code})"))

    with pytest.raises(LLMError) as caught:
        client_for(openai_server).complete(REQUEST)

    assert len(openai_server.requests) == 1
    message = str(caught.value)
    assert "deepseek-chat" in message and "deepseek/deepseek-chat" in message
    assert str(code) in message
    assert f"provider says no ({code})" in message
    assert "\n" not in message
    assert not isinstance(caught.value, IncompleteResponseError)
    assert caught.value.__cause__ is None
    assert_key_free(message, repr(caught.value))


def test_provider_echoing_the_key_is_redacted(openai_server):
    openai_server.script(status(401, message=f"Invalid API key {KEY}"))

    with pytest.raises(LLMError) as caught:
        client_for(openai_server).complete(REQUEST)

    assert "401" in str(caught.value)
    assert_key_free(str(caught.value))


@pytest.mark.parametrize(
    "body, attempts",
    [
        pytest.param({"error": {"code": 502, "message": "upstream died"}}, 2, id="error-502-retried"),
        pytest.param({"id": "gen-x", "choices": []}, 2, id="no-choices-retried"),
        pytest.param({"error": {"code": 400, "message": "bad input"}}, 1, id="error-400-permanent"),
    ],
)
def test_openrouter_error_inside_a_200_body(openai_server, body, attempts):
    # OpenRouter reports some upstream failures as HTTP 200 with {"error": {...}} and no choices.
    openai_server.script(json_body(body), ok("second try"))
    client = client_for(openai_server)
    if attempts == 1:
        with pytest.raises(LLMError, match="400.*bad input"):
            client.complete(REQUEST)
    else:
        assert client.complete(REQUEST).provenance["attempts"] == 2
    assert len(openai_server.requests) == attempts


# --------------------------------------------------------------------------- incomplete answers


@pytest.mark.parametrize(
    "behaviour, expected_text, finish_reason",
    [
        pytest.param(empty(), "", "stop", id="empty"),
        pytest.param(ok("   \n "), "   \n ", "stop", id="whitespace"),
        pytest.param(null_content(), "", "stop", id="null-content"),
        pytest.param(truncated("The idea is that bees"), "The idea is that bees", "length", id="truncated"),
    ],
)
def test_incomplete_answers_raise_with_the_response(openai_server, behaviour, expected_text, finish_reason):
    openai_server.script(behaviour)

    with pytest.raises(IncompleteResponseError) as caught:
        client_for(openai_server).complete(REQUEST)

    error = caught.value
    assert isinstance(error, LLMError)
    assert len(openai_server.requests) == 1  # not retried: the caller decides
    assert isinstance(error.response, LLMResponse)
    assert error.response.text == expected_text
    p = error.response.provenance
    assert p["finish_reason"] == finish_reason
    assert p["generation_id"] == openai_server.responses[0]["id"]
    assert p["attempts"] == 1
    message = str(error)
    assert "deepseek-chat" in message
    assert ("truncated" in message or "empty" in message) and "\n" not in message
    if finish_reason == "length":
        assert "length" in message
    assert_key_free(message, json.dumps(p))


@pytest.mark.parametrize(
    "text, what",
    [
        pytest.param("word " * 2_000, "2,000 completion tokens", id="tokens"),  # the fake server counts words
        pytest.param("x" * 8_000, "8,000 characters", id="characters"),  # one "token" the size of a page
    ],
)
def test_an_answer_far_over_its_token_limit_is_not_a_good_answer(openai_server, text, what):
    """A provider that ignores max_tokens (or reports more than it allows) is paid, but its answer
    is not stored as the response nor judged: it comes back as a rejected answer, kept by the caller."""
    openai_server.script(ok(text))

    with pytest.raises(IncompleteResponseError) as caught:
        client_for(openai_server).complete(REQUEST)  # max_tokens=321

    message = str(caught.value)
    assert "far over its token limit" in message and what in message and "max_tokens=321" in message
    assert caught.value.response.text == text
    assert len(openai_server.requests) == 1


def test_incomplete_response_error_pickles():
    response = LLMResponse(text="cut", provenance={"finish_reason": "length"})
    error = pickle.loads(pickle.dumps(IncompleteResponseError("m returned a truncated answer.", response)))
    assert str(error) == "m returned a truncated answer." and error.response == response


# --------------------------------------------------------------------------- key handling


def test_unsendable_key_fails_at_once_without_showing_it(openai_server):
    broken = KEY[:10] + "\n" + KEY[10:]  # a key pasted with a line break in it

    with pytest.raises(LLMError) as caught:
        client_for(openai_server, api_key=broken).complete(REQUEST)

    message = str(caught.value)
    assert "deepseek-chat" in message and "could not be sent" in message
    assert KEY[:10] not in message and KEY[10:] not in message
    assert openai_server.requests == []


def test_key_with_surrounding_whitespace_is_trimmed(openai_server):
    client_for(openai_server, api_key=f"  {KEY}\n").complete(REQUEST)
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_check_ready_without_key(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-another-provider")  # must not be picked up
    for key in (None, "", "   "):
        client = LLMClientResource(api_key=key, base_url=openai_server.base_url)
        with pytest.raises(LLMError) as caught:
            client.check_ready()
        assert str(caught.value) == MISSING_KEY
        with pytest.raises(LLMError) as caught:
            client.complete(REQUEST)
        assert str(caught.value) == MISSING_KEY
    assert openai_server.requests == []


def test_check_ready_passes_with_key_or_offline():
    LLMClientResource(api_key=KEY).check_ready()
    LLMClientResource(backend="offline").check_ready()


def test_unknown_backend_is_an_error():
    with pytest.raises(LLMError, match="backend"):
        LLMClientResource(backend="onlin", api_key=KEY).complete(REQUEST)


def test_repr_hides_the_key():
    client = LLMClientResource(api_key=KEY)
    assert_key_free(repr(client), str(client))


def test_inside_a_dagster_run(openai_server):
    openai_server.script(ok("from a run"))
    seen = {}

    @dg.asset
    def answer(llm: LLMClientResource) -> None:
        seen["text"] = llm.complete(REQUEST).text
        seen["backend_built_in_setup"] = llm._backend is not None

    result = dg.materialize([answer], resources={"llm": client_for(openai_server)})

    assert result.success
    assert seen == {"text": "from a run", "backend_built_in_setup": True}
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


# --------------------------------------------------------------------------- offline backend


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the offline backend touched the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def offline_request(prompt: str, model_id: str = "deepseek-chat") -> LLMRequest:
    return LLMRequest(model_id=model_id, model=f"vendor/{model_id}", prompt=prompt, temperature=0.3, max_tokens=64)


def test_offline_is_deterministic_and_needs_no_key(no_network):
    client = LLMClientResource(backend="offline")
    first = client.complete(REQUEST)
    again = LLMClientResource(backend="offline").complete(REQUEST)
    assert first.text == again.text
    other_model = client.complete(offline_request(REQUEST.prompt, model_id="llama-4"))
    other_prompt = client.complete(offline_request("Combine glaciers and libraries into one new idea."))
    assert len({first.text, other_model.text, other_prompt.text}) == 3


def test_offline_generation_answer(no_network):
    prompts = [
        "Combine beekeeping and stock markets into one new idea.\nBe concrete.",
        "Concepts: glacier, library, compiler\nWrite one paragraph.",
        "Think about mycelium networks and postal systems.",
        "Dreams and databases.",
        "",
    ]
    for prompt in prompts:
        response = LLMClientResource(backend="offline").complete(offline_request(prompt))
        sentences = re.findall(r"[^.!?]+[.!?]", response.text)
        assert 3 <= len(sentences) <= 6, response.text
        first_line_words = set(re.findall(r"[a-z]{4,}", prompt.splitlines()[0].lower())) if prompt else set()
        if first_line_words:
            assert first_line_words & set(re.findall(r"[a-z]{4,}", response.text.lower())), response.text
        assert "SCORE" not in response.text


def test_offline_judge_answer_ends_with_a_varying_score(no_network):
    client = LLMClientResource(backend="offline")
    scores = {}
    for judge in ("judge-a", "judge-b", "judge-c"):
        for n in range(6):
            prompt = f"Rate the response below from 0 to 10.\nResponse #{n}: bees trade futures.\nEnd with SCORE: <n>."
            text = client.complete(offline_request(prompt, model_id=judge)).text
            last = text.strip().splitlines()[-1]
            match = re.fullmatch(r"SCORE: (\d+)", last)
            assert match, text
            score = int(match.group(1))
            assert 0 <= score <= 10
            assert parse_score(text) == score  # the pipeline's own parser reads it
            assert len(text.splitlines()) >= 2  # some reasoning before the verdict
            scores[(judge, n)] = score
    assert len(set(scores.values())) >= 3
    assert any(scores[("judge-a", n)] != scores[("judge-b", n)] for n in range(6))
    # case-insensitive detection
    assert client.complete(offline_request("Give a score.")).text.splitlines()[-1].startswith("SCORE: ")


def test_offline_provenance(no_network):
    response = LLMClientResource(backend="offline").complete(REQUEST)
    p = response.provenance
    assert p["backend"] == "offline"
    assert {k: p[k] for k in REQUEST.fingerprint()} == REQUEST.fingerprint()
    assert p["finish_reason"] == "stop"
    assert p["attempts"] == 1
    assert p["generation_id"] is None
    assert p["completion_tokens"] == len(response.text.split())
    assert p["prompt_tokens"] == len(REQUEST.prompt.split())
    assert p["total_tokens"] == p["prompt_tokens"] + p["completion_tokens"]
    assert json.loads(json.dumps(p)) == p


def test_request_fingerprint():
    assert REQUEST.fingerprint() == {
        "model_id": "deepseek-chat",
        "model": "deepseek/deepseek-chat",
        "temperature": 0.7,
        "max_tokens": 321,
        "prompt_sha256": REQUEST.prompt_sha256,
    }
    import hashlib

    assert REQUEST.prompt_sha256 == hashlib.sha256(REQUEST.prompt.encode("utf-8")).hexdigest()
