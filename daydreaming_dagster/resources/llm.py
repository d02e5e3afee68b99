"""The LLM client resource: which backend answers, with the settings it is built from.

The assets call `llm.complete(request)`; the backend (OpenAI protocol or offline) does the work.
The API key is bound with `dg.EnvVar("OPENROUTER_API_KEY")` and never shown (repr, metadata,
run config snapshot)."""

from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from ..llm.backend import LLMBackend
from ..llm.offline import OfflineBackend
from ..llm.openai_backend import DEFAULT_DEADLINE_S, DEFAULT_TIMEOUT_S, OpenAIBackend
from ..llm.requests import LLMError, LLMRequest, LLMResponse
from ..llm.slots import FileCallSlots, machine_slots_folder
from ..settings import BACKENDS

__all__ = ["LLMClientResource", "machine_slots_folder"]


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
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, description="Timeout of one HTTP attempt, in seconds.")
    deadline_s: float = Field(
        default=DEFAULT_DEADLINE_S,
        description="Every attempt of one call, with the waits between them, ends within this many seconds.",
    )
    max_attempts: int = Field(default=6, description="Total HTTP attempts for one call when faults are transient.")
    max_wait_s: float = Field(default=60.0, description="Cap of one backoff wait, in seconds (also caps Retry-After).")
    backoff_base_s: float = Field(
        default=1.0,
        description="First backoff wait in seconds; it doubles each retry, plus up to as much jitter.",
    )
    max_calls_in_flight: Optional[int] = Field(
        default=None,
        description="LLM calls in flight at once from this machine to this API, across every process "
        "(every run the daemon launches included); None: no machine-wide limit.",
    )

    _backend: Optional[LLMBackend] = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.backend in BACKENDS:  # an unknown one fails with its own sentence at the first call
            self._backend = self._build_backend()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def check_ready(self) -> None:
        """Raise LLMError when a call could not even be attempted (no key for the API backend)."""
        self._get_backend().check_ready()

    def complete(self, request: LLMRequest) -> LLMResponse:
        """One chat completion for `request`; raises LLMError (or IncompleteResponseError)."""
        return self._get_backend().complete(request)

    def _get_backend(self) -> LLMBackend:
        if self._backend is None:  # used outside a Dagster run: setup_for_execution did not run
            self._backend = self._build_backend()
        return self._backend

    def _build_backend(self) -> LLMBackend:
        if self.backend == "offline":
            return OfflineBackend()
        if self.backend != "openai":
            raise LLMError(f"Unknown LLM backend {self.backend!r}; use one of {', '.join(BACKENDS)}.")
        return OpenAIBackend(
            api_key=self.api_key,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            deadline_s=self.deadline_s,
            max_attempts=self.max_attempts,
            max_wait_s=self.max_wait_s,
            backoff_base_s=self.backoff_base_s,
            log=dg.get_dagster_logger("llm"),
            machine_slots=FileCallSlots.for_api(self.base_url, self.max_calls_in_flight),
        )
