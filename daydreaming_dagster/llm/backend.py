"""The one interface every LLM backend implements; the assets and the response store never see
which backend answers. A new protocol (a batch API, another provider's SDK) is one more class
with these three methods, classifying its own retryable errors."""

from __future__ import annotations

from typing import Protocol

from .requests import LLMRequest, LLMResponse


class LLMBackend(Protocol):
    """Answers one request at a time; thread-safe, so a batch can have several calls in flight."""

    name: str

    def check_ready(self) -> None:
        """Raise LLMError with one sentence when no call could succeed (e.g. no key)."""

    def complete(self, request: LLMRequest) -> LLMResponse:
        """The answer to `request`; raises LLMError (IncompleteResponseError for a cut-off answer)."""

    def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""
