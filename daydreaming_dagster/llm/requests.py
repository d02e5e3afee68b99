"""What is asked of a model and what comes back: the request, the response with its provenance,
and the errors a call can end with. Shared by every backend and by the response store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

MISSING_KEY_MESSAGE = (
    "OPENROUTER_API_KEY is not set; put it in .env or the environment (see .env.example), "
    "or run with --offline."
)


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to ask for: the model (as configured and as the provider names it),
    the prompt and the sampling parameters."""

    model_id: str  # the row id in llm_models.csv (e.g. "deepseek-chat")
    model: str  # the provider model name sent to the API (e.g. "deepseek/deepseek-chat")
    prompt: str
    temperature: float
    max_tokens: int
    # Which sample of the same request this is: replicates ask the same prompt again, each a paid
    # call of its own. Replicate 1 is the request as it was before replicates existed.
    replicate: int = 1

    @property
    def prompt_sha256(self) -> str:
        """Hex sha256 of the prompt text (UTF-8)."""
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()

    def fingerprint(self) -> dict:
        """What must match for a stored response to be reused for this request.

        `replicate` is present only from replicate 2 on: absent means replicate 1, so the
        fingerprints (and stored sidecars) of experiments without replicates stay as they were."""
        fingerprint = {
            "model_id": self.model_id,
            "model": self.model,
            "temperature": float(self.temperature),
            "max_tokens": int(self.max_tokens),
            "prompt_sha256": self.prompt_sha256,
        }
        if self.replicate != 1:
            fingerprint["replicate"] = int(self.replicate)
        return fingerprint

    def fingerprint_text(self) -> str:
        """The fingerprint as one string (JSON, keys sorted), to pass in run config."""
        return json.dumps(self.fingerprint(), sort_keys=True)


@dataclass(frozen=True)
class LLMResponse:
    """The answer text and where it came from (JSON-serialisable, never holds the API key)."""

    text: str
    provenance: dict


class LLMError(Exception):
    """A permanent failure of an LLM call; str() is one sentence naming the model and the cause."""


class APIRefusedError(LLMError):
    """No call to this API can succeed now, whatever is asked: the key is refused (401, 403), the
    account cannot pay (402), or the API did not answer at all within a call's deadline. Whoever
    sees one asks nothing more of the API in this command: the next calls would fail the same way."""


class IncompleteResponseError(LLMError):
    """The provider answered, but with an empty text or one cut short (finish_reason "length").

    `response` holds what came back, so the caller can keep it aside for inspection."""

    def __init__(self, message: str, response: LLMResponse) -> None:
        super().__init__(message)
        self.response = response

    def __reduce__(self):  # keep picklable despite the extra constructor argument
        return (type(self), (str(self), self.response))



def who(request: LLMRequest) -> str:
    """How a message names the model of a request: its id, and the provider name when it differs."""
    if request.model_id == request.model:
        return request.model_id
    return f"{request.model_id} ({request.model})"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
