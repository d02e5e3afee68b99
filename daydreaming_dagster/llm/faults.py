"""How one HTTP attempt against an LLM API failed: worth another attempt or not, a short key-free
description of the cause, and how long the provider asks us to wait (Retry-After). Shared by the
live backend (openai_backend.py) and the batch one (batch_backend.py)."""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from typing import Any, Optional

import tenacity

# Statuses worth another attempt: request timeout, rate limit, and server-side failures
# (including the 52x family that CDNs in front of providers answer with).  501 (not
# implemented) and 505 (HTTP version) will not get better by waiting.
TRANSIENT_STATUSES = frozenset({408, 425, 429}) | (frozenset(range(500, 600)) - {501, 505})
# Statuses no other call to the API gets past either: the key is refused (401) or the account
# cannot pay (402). (403 is not among them: OpenRouter answers it for one flagged prompt.)
API_REFUSED_STATUSES = frozenset({401, 402})
MAX_CAUSE_CHARS = 300
BEARER = re.compile(r"Bearer\s+[^\s'\"]+", re.IGNORECASE)


class TransientFault(Exception):
    """One failed attempt that is worth repeating; `cause` is a short, key-free description.
    `unanswered`: the API itself gave no answer (no connection, or none within the timeout)."""

    def __init__(self, cause: str, retry_after: Optional[float] = None, unanswered: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after
        self.unanswered = unanswered


class PermanentFault(Exception):
    """One failed attempt that repeating will not fix; `api_wide`: no other call would get past it."""

    def __init__(self, cause: str, api_wide: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.api_wide = api_wide


class BackoffWait(tenacity.wait.wait_base):
    """Retry-After when the provider sent one, otherwise exponential backoff with jitter; both capped."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._max_s = max(0.0, float(max_s))
        base_s = max(0.0, float(base_s))
        self._exponential = tenacity.wait_exponential_jitter(
            multiplier=base_s, max=self._max_s, jitter=base_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        fault = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(fault, TransientFault) and fault.retry_after is not None:
            return min(max(0.0, fault.retry_after), self._max_s)
        return self._exponential(retry_state)


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > MAX_CAUSE_CHARS:
        text = text[: MAX_CAUSE_CHARS - 3] + "..."
    return text


def describe_cause(err: BaseException) -> str:
    inner = err.__cause__ or err.__context__
    if inner is None:
        return type(err).__name__
    detail = one_line(str(inner)).rstrip(".")
    return f"{type(inner).__name__}: {detail}" if detail else type(inner).__name__


def provider_message(body: Any) -> str:
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


def status_cause(status: Any, body: Any) -> str:
    message = one_line(provider_message(body)).rstrip(".")
    return f"HTTP {status} from the provider: {message}" if message else f"HTTP {status} from the provider"


def retry_after_s(headers: Any) -> Optional[float]:
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
