"""The OpenAI-protocol backend: one chat completion per call against an OpenAI-compatible API
(OpenRouter by default), through the official SDK.

Transient faults (rate limits, 5xx, timeouts, dropped connections, a 200 whose body is not JSON)
are retried with exponential backoff and jitter through tenacity, honouring Retry-After; permanent
ones (bad key, bad model name, ...) fail at once. An empty or truncated answer is never handed
back as a good one. The API key is never put into an exception, a log line or a provenance."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import tenacity

if TYPE_CHECKING:
    import openai

from .completions import incompleteness, response_from_body
from .requests import MISSING_KEY_MESSAGE, IncompleteResponseError, LLMError, LLMRequest, LLMResponse, who
from .slots import FileCallSlots, call_slot, current_run_calls

# `openai` (and its `httpx2`) are imported where a call is made, not here: importing the SDK costs
# ~1 s of CPU, and a process that loads the code location without calling (the `daydream run`
# process itself, the webserver) need not pay it. `daydream run`'s workers import it at start.

# Statuses worth another attempt: request timeout, rate limit, and server-side failures
# (including the 52x family that CDNs in front of providers answer with).  501 (not
# implemented) and 505 (HTTP version) will not get better by waiting.
_TRANSIENT_STATUSES = frozenset({408, 425, 429}) | (frozenset(range(500, 600)) - {501, 505})
# finish_reason values that mean the text stops before the model meant it to.
_MAX_CAUSE_CHARS = 300
_BEARER = re.compile(r"Bearer\s+[^\s'\"]+", re.IGNORECASE)


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


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible API; the client is built on first use."""

    name = "openai"

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        timeout_s: float = 120.0,
        max_attempts: int = 6,
        max_wait_s: float = 60.0,
        backoff_base_s: float = 1.0,
        log: logging.Logger | None = None,
        machine_slots: FileCallSlots | None = None,
    ) -> None:
        # A key pasted into .env often ends with a newline.
        self._api_key = (api_key or "").strip()
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.backoff_base_s = backoff_base_s
        self._log = log or logging.getLogger(__name__)
        self._machine_slots = machine_slots
        # Built in a run's own thread: its calls are counted for that run (see llm/slots.py).
        self._run_calls = current_run_calls()
        self._client: openai.OpenAI | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r})"

    def check_ready(self) -> None:
        """Raise LLMError when a call could not even be attempted (no key)."""
        if not self._api_key:
            raise LLMError(MISSING_KEY_MESSAGE)

    def complete(self, request: LLMRequest) -> LLMResponse:
        """One chat completion for `request`; raises LLMError (or IncompleteResponseError)."""
        self.check_ready()
        with call_slot(self._run_calls), self._machine_slots.hold() if self._machine_slots else contextlib.nullcontext():
            return self._complete(request)

    def connect(self) -> None:
        """Build the SDK client now (importing the SDK takes about a second), not at the first call."""
        self._get_client()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _get_client(self) -> openai.OpenAI:
        import openai

        if self._client is None:
            self._client = openai.OpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,  # tenacity below is the only retry layer
                # Do not forward OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment to another provider.
                default_headers={"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit},
            )
        return self._client

    def _complete(self, request: LLMRequest) -> LLMResponse:
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
            self._log.warning(
                f"{who(request)}: attempt {state.attempt_number} of {max_attempts} failed "
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
                    f"LLM call to {who(request)} failed after {attempts} "
                    f"attempt{'s' if attempts != 1 else ''}; last cause: {fault.cause}."
                )
            ) from None
        except _PermanentFault as fault:
            raise LLMError(
                self._redact(f"LLM call to {who(request)} failed: {fault.cause}.")
            ) from None

        response = response_from_body(request, data, latency_s=latency_s, attempts=attempts)
        problem = incompleteness(response)
        if problem is not None:
            raise IncompleteResponseError(
                self._redact(f"LLM call to {who(request)} returned {problem}."), response
            )
        return response

    def _attempt(self, client: openai.OpenAI, request: LLMRequest) -> tuple[dict, float]:
        """One HTTP attempt: the decoded JSON body and the latency, or a classified fault."""
        import httpx2
        import openai

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
        key = self._api_key
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
