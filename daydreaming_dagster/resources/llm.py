"""The LLM client layer: one chat completion per call, paid for by the researcher.

`LLMClientResource.complete` sends exactly one user message with the request's model,
temperature and max_tokens, retries transient faults (rate limits, 5xx, timeouts, dropped
connections, a 200 whose body is not JSON) with exponential backoff and jitter through
tenacity, fails at once on permanent faults (bad key, bad model name, ...), and never hands
back an empty or truncated answer as a good one.  The API key is never put into an
exception, a log line, the resource's repr or a response's provenance.

The offline backend answers instantly and deterministically from (model_id, prompt), so the
whole pipeline can run without a key or network.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Optional

import dagster as dg
import httpx2
import openai
import tenacity
from pydantic import Field, PrivateAttr

__all__ = [
    "IncompleteResponseError",
    "LLMClientResource",
    "LLMError",
    "LLMRequest",
    "LLMResponse",
    "share_call_slots",
]

MISSING_KEY_MESSAGE = (
    "OPENROUTER_API_KEY is not set; put it in .env or the environment, or run with --offline"
)

# Statuses worth another attempt: request timeout, rate limit, and server-side failures
# (including the 52x family that CDNs in front of providers answer with).  501 (not
# implemented) and 505 (HTTP version) will not get better by waiting.
_TRANSIENT_STATUSES = frozenset({408, 425, 429}) | (frozenset(range(500, 600)) - {501, 505})
# finish_reason values that mean the text stops before the model meant it to.
_INCOMPLETE_FINISH_REASONS = frozenset({"length", "content_filter", "error"})
_MAX_CAUSE_CHARS = 300
_BEARER = re.compile(r"Bearer\s+[^\s'\"]+", re.IGNORECASE)

_log = dg.get_dagster_logger("llm")

# `daydream run` gives its worker processes one semaphore, so the calls in flight across all of its
# runs stay within --concurrency while each run may start that many (see share_call_slots).
_shared_call_slots = None


def share_call_slots(semaphore) -> None:
    """Make every API call of this process hold one slot of `semaphore` (a multiprocessing
    semaphore shared with sibling processes) while it is in flight, retries included."""
    global _shared_call_slots
    _shared_call_slots = semaphore


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to ask for: the model (as configured and as the provider names it),
    the prompt and the sampling parameters."""

    model_id: str  # the row id in llm_models.csv (e.g. "deepseek-chat")
    model: str  # the provider model name sent to the API (e.g. "deepseek/deepseek-chat")
    prompt: str
    temperature: float
    max_tokens: int

    @property
    def prompt_sha256(self) -> str:
        """Hex sha256 of the prompt text (UTF-8)."""
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()

    def fingerprint(self) -> dict:
        """What must match for a stored response to be reused for this request."""
        return {
            "model_id": self.model_id,
            "model": self.model,
            "temperature": float(self.temperature),
            "max_tokens": int(self.max_tokens),
            "prompt_sha256": self.prompt_sha256,
        }


@dataclass(frozen=True)
class LLMResponse:
    """The answer text and where it came from (JSON-serialisable, never holds the API key)."""

    text: str
    provenance: dict


class LLMError(Exception):
    """A permanent failure of an LLM call; str() is one sentence naming the model and the cause."""


class IncompleteResponseError(LLMError):
    """The provider answered, but with an empty text or one cut short (finish_reason "length").

    `response` holds what came back, so the caller can keep it aside for inspection."""

    def __init__(self, message: str, response: LLMResponse) -> None:
        super().__init__(message)
        self.response = response

    def __reduce__(self):  # keep picklable despite the extra constructor argument
        return (type(self), (str(self), self.response))


class _TransientFault(Exception):
    """One failed attempt that is worth repeating; `cause` is a short, key-free description."""

    def __init__(self, cause: str, retry_after: Optional[float] = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class _PermanentFault(Exception):
    """One failed attempt that repeating will not fix."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


# --------------------------------------------------------------------------- resource


class LLMClientResource(dg.ConfigurableResource):
    """Chat-completion client: an OpenAI-compatible backend (OpenRouter by default) or an offline one."""

    backend: str = Field(
        default="openai",
        description='"openai" for an OpenAI-compatible API (OpenRouter by default), "offline" for '
        "deterministic canned answers without network.",
    )
    api_key: Optional[str] = Field(
        default=None,
        repr=False,
        description="API key; bind with dg.EnvVar('OPENROUTER_API_KEY'). Never logged.",
    )
    base_url: str = Field(
        default="https://openrouter.ai/api/v1", description="Base URL of the OpenAI-compatible API."
    )
    timeout_s: float = Field(default=120.0, description="Timeout of one HTTP attempt, in seconds.")
    max_attempts: int = Field(
        default=6, description="Total HTTP attempts for one call when faults are transient."
    )
    max_wait_s: float = Field(
        default=60.0, description="Cap of one backoff wait, in seconds (also caps Retry-After)."
    )
    backoff_base_s: float = Field(
        default=1.0,
        description="First backoff wait in seconds; it doubles each retry, plus up to as much jitter.",
    )

    _client: Optional[openai.OpenAI] = PrivateAttr(default=None)

    # -- lifecycle

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.backend == "openai" and self._has_key():
            self._client = self._build_client()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- public API

    def check_ready(self) -> None:
        """Raise LLMError when a call could not even be attempted (no key for the API backend)."""
        if self.backend == "offline":
            return
        if self.backend != "openai":
            raise LLMError(f'Unknown LLM backend {self.backend!r}; use "openai" or "offline".')
        if not self._has_key():
            raise LLMError(MISSING_KEY_MESSAGE)

    def complete(self, request: LLMRequest) -> LLMResponse:
        """One chat completion for `request`; raises LLMError (or IncompleteResponseError)."""
        self.check_ready()
        if self.backend == "offline":
            return _offline_complete(request)
        with _shared_call_slots or contextlib.nullcontext():
            return self._complete_openai(request)

    # -- the API backend

    def _has_key(self) -> bool:
        return bool(self.api_key and self.api_key.strip())

    def _build_client(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=(self.api_key or "").strip(),  # a key pasted into .env often ends with a newline
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=0,  # tenacity below is the only retry layer
            # Do not forward OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment to another provider.
            default_headers={"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit},
        )

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:  # used outside a Dagster run: setup_for_execution did not run
            self._client = self._build_client()
        return self._client

    def _complete_openai(self, request: LLMRequest) -> LLMResponse:
        client = self._get_client()
        max_attempts = max(1, int(self.max_attempts))
        attempts = 0

        def attempt() -> tuple[dict, float]:
            nonlocal attempts
            attempts += 1
            return self._attempt(client, request)

        def log_retry(state: tenacity.RetryCallState) -> None:
            fault = state.outcome.exception() if state.outcome is not None else None
            cause = fault.cause if isinstance(fault, _TransientFault) else repr(fault)
            _log.warning(
                f"{_who(request)}: attempt {state.attempt_number} of {max_attempts} failed "
                f"({self._redact(cause)}); retrying in {state.upcoming_sleep:.1f} s."
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=_BackoffWait(base_s=self.backoff_base_s, max_s=self.max_wait_s),
            retry=tenacity.retry_if_exception_type(_TransientFault),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            data, latency_s = retrying(attempt)
        except _TransientFault as fault:
            raise LLMError(
                self._redact(
                    f"LLM call to {_who(request)} failed after {attempts} "
                    f"attempt{'s' if attempts != 1 else ''}; last cause: {fault.cause}."
                )
            ) from None
        except _PermanentFault as fault:
            raise LLMError(
                self._redact(f"LLM call to {_who(request)} failed: {fault.cause}.")
            ) from None

        response = _response_from_body(request, data, latency_s=latency_s, attempts=attempts)
        problem = _incompleteness(response)
        if problem is not None:
            raise IncompleteResponseError(
                self._redact(f"LLM call to {_who(request)} returned {problem}."), response
            )
        return response

    def _attempt(self, client: openai.OpenAI, request: LLMRequest) -> tuple[dict, float]:
        """One HTTP attempt: the decoded JSON body and the latency, or a classified fault."""
        started = time.monotonic()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=[{"role": "user", "content": request.prompt}],
                # builtin types: values read from pandas may be numpy scalars
                temperature=float(request.temperature),
                max_tokens=int(request.max_tokens),
            )
            http = raw.http_response
            body_text = http.text
        except openai.APITimeoutError:
            raise _TransientFault(f"no answer within the {self.timeout_s:g} s timeout") from None
        except openai.APIConnectionError as err:
            if isinstance(err.__cause__, (httpx2.LocalProtocolError, httpx2.UnsupportedProtocol)):
                # our own request cannot be sent (e.g. a key with a line break, a bad base_url)
                raise _PermanentFault(f"the request could not be sent ({_describe_cause(err)})") from None
            raise _TransientFault(f"connection error ({_describe_cause(err)})") from None
        except openai.APIStatusError as err:
            cause = _status_cause(err.status_code, err.body)
            if err.status_code in _TRANSIENT_STATUSES:
                raise _TransientFault(cause, retry_after=_retry_after_s(err.response.headers)) from None
            raise _PermanentFault(cause) from None
        except openai.OpenAIError as err:
            raise _PermanentFault(f"{type(err).__name__}: {_one_line(str(err))}") from None
        latency_s = time.monotonic() - started

        try:
            data = json.loads(body_text)
        except ValueError:
            content_type = http.headers.get("content-type", "no content type")
            raise _TransientFault(
                f"HTTP {http.status_code} with a body that is not valid JSON ({content_type}: "
                f"{_one_line(body_text)[:80]!r})"
            ) from None
        if not isinstance(data, dict):
            raise _TransientFault(f"HTTP {http.status_code} with a JSON body that is not an object")
        if not data.get("choices"):
            # OpenRouter reports some upstream failures as a 200 whose body is {"error": {...}}.
            error = data.get("error")
            if isinstance(error, dict):
                code = error.get("code")
                cause = _status_cause(code if isinstance(code, int) else http.status_code, data)
                if isinstance(code, int) and code not in _TRANSIENT_STATUSES and 400 <= code < 600:
                    raise _PermanentFault(cause)
                raise _TransientFault(cause)
            raise _TransientFault(f"HTTP {http.status_code} with no choices in the answer")
        return data, latency_s

    def _redact(self, text: str) -> str:
        """Belt and braces: a provider echoing the key back must not carry it into our messages."""
        key = (self.api_key or "").strip()
        if len(key) >= 4 and key in text:
            text = text.replace(key, "[redacted]")
        return _BEARER.sub("Bearer [redacted]", text)


class _BackoffWait(tenacity.wait.wait_base):
    """Retry-After when the provider sent one, otherwise exponential backoff with jitter; both capped."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._max_s = max(0.0, float(max_s))
        base_s = max(0.0, float(base_s))
        self._exponential = tenacity.wait_exponential_jitter(
            multiplier=base_s, max=self._max_s, jitter=base_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        fault = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(fault, _TransientFault) and fault.retry_after is not None:
            return min(max(0.0, fault.retry_after), self._max_s)
        return self._exponential(retry_state)


# --------------------------------------------------------------------------- helpers


def _who(request: LLMRequest) -> str:
    if request.model_id == request.model:
        return request.model_id
    return f"{request.model_id} ({request.model})"


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    return text


def _describe_cause(err: BaseException) -> str:
    inner = err.__cause__ or err.__context__
    if inner is None:
        return type(err).__name__
    detail = _one_line(str(inner)).rstrip(".")
    return f"{type(inner).__name__}: {detail}" if detail else type(inner).__name__


def _provider_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message")
            if isinstance(message, str) and message.strip():
                return message
        elif isinstance(error, str) and error.strip():
            return error
        return ""
    if isinstance(body, str):
        return body
    return ""


def _status_cause(status: Any, body: Any) -> str:
    message = _one_line(_provider_message(body)).rstrip(".")
    return f"HTTP {status} from the provider: {message}" if message else f"HTTP {status} from the provider"


def _retry_after_s(headers: Any) -> Optional[float]:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(
            part.get("text") or "" for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _response_from_body(request: LLMRequest, data: dict, *, latency_s: float, attempts: int) -> LLMResponse:
    choice = data["choices"][0] if isinstance(data["choices"], list) else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    generation_id = data.get("id")
    provenance = {
        "backend": "openai",
        **request.fingerprint(),
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": _int_or_none(usage.get("prompt_tokens")),
        "completion_tokens": _int_or_none(usage.get("completion_tokens")),
        "total_tokens": _int_or_none(usage.get("total_tokens")),
        "latency_s": round(latency_s, 3),
        "attempts": attempts,
        "generation_id": generation_id if isinstance(generation_id, str) and generation_id else None,
        "created_at": _now_iso(),
    }
    return LLMResponse(text=_content_text(message.get("content")), provenance=provenance)


def _incompleteness(response: LLMResponse) -> Optional[str]:
    """Why the response must not be used as a good answer, or None."""
    finish_reason = response.provenance.get("finish_reason")
    tokens = response.provenance.get("completion_tokens")
    spent = f" after {tokens} completion token{'' if tokens == 1 else 's'}" if tokens is not None else ""
    if finish_reason in _INCOMPLETE_FINISH_REASONS:
        limit = f" (max_tokens={response.provenance['max_tokens']})" if finish_reason == "length" else ""
        state = "an empty" if not response.text.strip() else "a truncated"
        return f"{state} answer: finish_reason is {finish_reason!r}{spent}{limit}"
    if not response.text.strip():
        return f"an empty answer (finish_reason {finish_reason!r}{spent})"
    return None


# --------------------------------------------------------------------------- offline backend

_STOPWORDS = frozenset(
    """
    about above after again against also among another answer because been before being below
    between both brief could does doing down during each either every from further have having
    here into itself just like made make many more most much must only other ought over please
    same should some such than that their them then there these they this those through under
    until upon very want were what when where which while will with within without would write
    your yours combine combination following given concept concepts response using task
    """.split()
)

_OPENINGS = [
    "Consider {a} and {b} as two halves of one mechanism.",
    "Start from {a}, then let {b} reshape it.",
    "The overlooked link between {a} and {b} is a shared constraint.",
    "Suppose {a} were treated as an instance of {b}.",
    "A small experiment could pair {a} with {b} and watch what breaks.",
    "Placing {a} next to {b} reveals a missing intermediate step.",
]
_MIDDLES = [
    "The interesting part is how {a} turns a cost into a signal.",
    "This suggests a feedback loop in which {b} amplifies whatever {a} selects.",
    "Seen this way, {a} stops being a tool and becomes a search process.",
    "The combination predicts something neither {a} nor {b} predicts alone.",
    "A concrete test would vary {b} while holding {a} fixed.",
    "The risk is that {a} only looks novel because {b} is poorly measured.",
    "One could prototype this with existing data about {b}.",
    "It reframes {a} as a question of timing rather than of content.",
]
_CLOSINGS = [
    "If it holds, the idea generalises beyond {a}.",
    "The next step is to write down where {b} would fail.",
    "That is the core of the proposal.",
    "Whether it survives contact with real data is the open question.",
]
_JUDGE_LINES = [
    "The answer connects the concepts rather than listing them side by side.",
    "The central mechanism is stated, but its justification is thin.",
    "Several claims are plausible yet untested.",
    "The proposal is specific enough to be checked by an experiment.",
    "The reasoning repeats itself in places and loses focus.",
    "There is a genuinely unexpected link between the ideas.",
    "The text stays close to familiar territory.",
    "The practical consequences are spelled out clearly.",
]


def _byte_stream(seed: bytes) -> Iterator[int]:
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1


def _prompt_keywords(prompt: str) -> list[str]:
    first_lines = [line for line in prompt.splitlines() if line.strip()][:5]
    words: list[str] = []
    for word in re.findall(r"[A-Za-z][A-Za-z'-]{3,}", " ".join(first_lines)):
        word = word.lower().strip("'-")
        if len(word) >= 4 and word not in _STOPWORDS and word not in words:
            words.append(word)
    return words or ["the idea", "the problem"]


def _offline_text(model_id: str, prompt: str) -> str:
    seed = hashlib.sha256(f"{model_id}\x00{prompt}".encode("utf-8")).digest()
    rng = _byte_stream(seed)

    def pick(items: list[str]) -> str:
        return items[next(rng) % len(items)]

    if "score" in prompt.lower():
        reasons = [pick(_JUDGE_LINES) for _ in range(2 + next(rng) % 3)]
        reasons = list(dict.fromkeys(reasons))  # no line twice
        score = int.from_bytes(seed[:2], "big") % 11
        return "\n".join([*reasons, f"SCORE: {score}"])

    keywords = _prompt_keywords(prompt)

    def fill(template: str) -> str:
        a = pick(keywords)
        b = pick([w for w in keywords if w != a] or keywords)
        return template.format(a=a, b=b)

    middles = [fill(pick(_MIDDLES)) for _ in range(1 + next(rng) % 4)]
    sentences = [fill(pick(_OPENINGS)), *dict.fromkeys(middles), fill(pick(_CLOSINGS))]
    return " ".join(sentences)


def _offline_complete(request: LLMRequest) -> LLMResponse:
    text = _offline_text(request.model_id, request.prompt)
    prompt_tokens = len(request.prompt.split())
    completion_tokens = len(text.split())
    provenance = {
        "backend": "offline",
        **request.fingerprint(),
        "finish_reason": "stop",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "latency_s": 0.0,
        "attempts": 1,
        "generation_id": None,
        "created_at": _now_iso(),
    }
    return LLMResponse(text=text, provenance=provenance)
