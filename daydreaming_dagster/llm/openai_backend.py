"""The OpenAI-protocol backend: one chat completion per call against an OpenAI-compatible API
(OpenRouter by default), through the official SDK.

Transient faults (rate limits, 5xx, timeouts, dropped connections, a 200 whose body is not JSON)
are retried with exponential backoff and jitter through tenacity, honouring Retry-After, within one
deadline per call (`deadline_s`: every attempt and wait of a call ends by then, so a server that
never answers costs minutes, not the sum of six timeouts); a Retry-After longer than a call may wait
fails the call at once instead of asking again too early. Permanent faults (bad model name, ...)
fail at once; those that no other call could get past either (a refused key, an account that cannot
pay, an API that answered no attempt at all) raise APIRefusedError, so the caller stops asking. An
empty, truncated or far oversized answer is never handed back as a good one. The API key is never
put into an exception, a log line or a provenance."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

import tenacity

if TYPE_CHECKING:
    import openai

from .completions import incompleteness, response_from_body
from .faults import (
    API_REFUSED_STATUSES,
    BEARER,
    TRANSIENT_STATUSES,
    BackoffWait,
    PermanentFault,
    TransientFault,
    describe_cause,
    one_line,
    retry_after_s,
    status_cause,
)
from .requests import (
    MISSING_KEY_MESSAGE,
    APIRefusedError,
    IncompleteResponseError,
    LLMError,
    LLMRequest,
    LLMResponse,
    who,
)
from .slots import FileCallSlots, call_slot, current_run_calls

# `openai` (and its `httpx2`) are imported where a call is made, not here: importing the SDK costs
# ~1 s of CPU, and a process that loads the code location without calling (the `daydream run`
# process itself, the webserver) need not pay it. `daydream run`'s workers import it at start.

# One HTTP attempt waits at most this long for its answer, and every attempt of one call (with the
# waits between them) ends within the deadline (settings.py: DAYDREAM_REQUEST_TIMEOUT_S and
# DAYDREAM_CALL_DEADLINE_S).
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_DEADLINE_S = 300.0


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible API; the client is built on first use."""

    name = "openai"

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 6,
        max_wait_s: float = 60.0,
        backoff_base_s: float = 1.0,
        log: logging.Logger | None = None,
        machine_slots: FileCallSlots | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        # A key pasted into .env often ends with a newline.
        self._api_key = (api_key or "").strip()
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.backoff_base_s = backoff_base_s
        self._log = log or logging.getLogger(__name__)
        self._machine_slots = machine_slots
        # Built in a run's own thread: its calls are counted for that run (see llm/slots.py).
        self._run_calls = current_run_calls()
        self._client: openai.OpenAI | None = None
        self._refused: str | None = None  # why the API refused the key, once it has (401, 402)

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
            # A call that waited for its slot while another call of this backend (a run's calls share
            # it) had the key refused is not made.
            if self._refused is not None:
                raise APIRefusedError(f"LLM call to {who(request)} not made: {self._refused}.")
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
        deadline = time.monotonic() + max(0.1, float(self.deadline_s))
        attempts = 0

        def attempt() -> tuple[dict, float]:
            nonlocal attempts
            attempts += 1
            # The last attempt may only use what is left of the call's deadline.
            timeout = max(0.1, min(float(self.timeout_s), deadline - time.monotonic()))
            return self._attempt(client, request, timeout)

        def stop(state: tenacity.RetryCallState) -> bool:
            fault = state.outcome.exception() if state.outcome is not None else None
            if state.attempt_number >= max_attempts or not isinstance(fault, TransientFault):
                return True
            if fault.retry_after is not None and fault.retry_after > self.max_wait_s:
                return True  # the provider asks us to stay away longer than a call waits
            wait_s = wait(state)
            return time.monotonic() + wait_s + 0.1 >= deadline

        def log_retry(state: tenacity.RetryCallState) -> None:
            fault = state.outcome.exception() if state.outcome is not None else None
            cause = fault.cause if isinstance(fault, TransientFault) else repr(fault)
            self._log.warning(
                f"{who(request)}: attempt {state.attempt_number} of {max_attempts} failed "
                f"({self._redact(cause)}); retrying in {state.upcoming_sleep:.1f} s."
            )

        wait = BackoffWait(base_s=self.backoff_base_s, max_s=self.max_wait_s)
        retrying = tenacity.Retrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception_type(TransientFault),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            data, latency_s = retrying(attempt)
        except TransientFault as fault:
            raise self._given_up(request, fault, attempts) from None
        except PermanentFault as fault:
            if fault.api_wide:
                self._refused = self._redact(f"{self.base_url} refused the key of an earlier call ({fault.cause})")
                raise APIRefusedError(self._redact(f"LLM call to {who(request)} failed: {fault.cause}.")) from None
            raise LLMError(self._redact(f"LLM call to {who(request)} failed: {fault.cause}.")) from None

        response = response_from_body(request, data, latency_s=latency_s, attempts=attempts)
        problem = incompleteness(response)
        if problem is not None:
            raise IncompleteResponseError(
                self._redact(f"LLM call to {who(request)} returned {problem}."), response
            )
        return response

    def _given_up(self, request: LLMRequest, fault: TransientFault, attempts: int) -> LLMError:
        """The error of a call whose transient faults did not pass within its attempts and deadline."""
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if fault.retry_after is not None and fault.retry_after > self.max_wait_s:
            return LLMError(self._redact(
                f"LLM call to {who(request)} failed: {fault.cause}, and the provider asked to wait "
                f"{fault.retry_after:g} s before the next attempt (Retry-After), longer than a call waits "
                f"({self.max_wait_s:g} s); ask it again later."
            ))
        if fault.unanswered:
            # No answer at all from the API (no connection, or none within the timeout): no other call
            # of this command would fare better, so it stops asking.
            return APIRefusedError(self._redact(
                f"LLM call to {who(request)} failed after {tries}: {self.base_url} gave no answer (last cause: "
                f"{fault.cause}); check the API's address and status, or for a slow model raise "
                "DAYDREAM_REQUEST_TIMEOUT_S (one attempt) and DAYDREAM_CALL_DEADLINE_S (all attempts of a call)."
            ))
        return LLMError(
            self._redact(f"LLM call to {who(request)} failed after {tries}; last cause: {fault.cause}.")
        )

    def _attempt(self, client: openai.OpenAI, request: LLMRequest, timeout_s: float) -> tuple[dict, float]:
        """One HTTP attempt: the decoded JSON body and the latency, or a classified fault."""
        import httpx2
        import openai

        started = time.monotonic()
        try:
            raw = client.with_options(timeout=timeout_s).chat.completions.with_raw_response.create(
                model=request.model,
                messages=[{"role": "user", "content": request.prompt}],
                # builtin types: values read from pandas may be numpy scalars
                temperature=float(request.temperature),
                max_tokens=int(request.max_tokens),
            )
            http = raw.http_response
            body_text = http.text
        except openai.APITimeoutError:
            raise TransientFault(f"no answer within the {timeout_s:g} s timeout", unanswered=True) from None
        except openai.APIConnectionError as err:
            if isinstance(err.__cause__, (httpx2.LocalProtocolError, httpx2.UnsupportedProtocol)):
                # our own request cannot be sent (e.g. a key with a line break, a bad base_url)
                raise PermanentFault(f"the request could not be sent ({describe_cause(err)})", api_wide=True) from None
            raise TransientFault(f"connection error ({describe_cause(err)})", unanswered=True) from None
        except openai.APIStatusError as err:
            cause = status_cause(err.status_code, err.body)
            if err.status_code in TRANSIENT_STATUSES:
                raise TransientFault(cause, retry_after=retry_after_s(err.response.headers)) from None
            raise PermanentFault(cause, api_wide=err.status_code in API_REFUSED_STATUSES) from None
        except openai.OpenAIError as err:
            raise PermanentFault(f"{type(err).__name__}: {one_line(str(err))}") from None
        latency_s = time.monotonic() - started

        try:
            data = json.loads(body_text)
        except ValueError:
            content_type = http.headers.get("content-type", "no content type")
            raise TransientFault(
                f"HTTP {http.status_code} with a body that is not valid JSON ({content_type}: "
                f"{one_line(body_text)[:80]!r})"
            ) from None
        if not isinstance(data, dict):
            raise TransientFault(f"HTTP {http.status_code} with a JSON body that is not an object")
        if not data.get("choices"):
            # OpenRouter reports some upstream failures as a 200 whose body is {"error": {...}}.
            error = data.get("error")
            if isinstance(error, dict):
                code = error.get("code")
                cause = status_cause(code if isinstance(code, int) else http.status_code, data)
                if isinstance(code, int) and code not in TRANSIENT_STATUSES and 400 <= code < 600:
                    raise PermanentFault(cause, api_wide=code in API_REFUSED_STATUSES)
                raise TransientFault(cause)
            raise TransientFault(f"HTTP {http.status_code} with no choices in the answer")
        return data, latency_s

    def _redact(self, text: str) -> str:
        """Belt and braces: a provider echoing the key back must not carry it into our messages."""
        key = self._api_key
        if len(key) >= 4 and key in text:
            text = text.replace(key, "[redacted]")
        return BEARER.sub("Bearer [redacted]", text)
