"""What the body of a chat completion says: the answer's text and provenance, and whether it is
complete. Shared by the live backend (openai_backend.py) and the batch one (batch_backend.py),
whose output files hold the same bodies."""

from __future__ import annotations

import math
from typing import Any, Optional

from .requests import LLMRequest, LLMResponse, now_iso

# A finish reason that means the text is not a whole answer.
_INCOMPLETE_FINISH_REASONS = frozenset({"length", "content_filter", "error"})
# An answer is far over the max_tokens it was asked with when the provider reports more completion
# tokens than this allows, or when its text is longer than any tokenizer makes that many tokens
# (a token of English is ~4 characters; runs of spaces or symbols make longer ones, hence the room).
# Such an answer is not judged: a provider that ignored the limit may bill for all of it, and a
# judge prompt quoting it would cost a multiple of the plan.
TOKEN_SLACK = 1.25
EXTRA_TOKENS = 32
MAX_CHARS_PER_TOKEN = 16
EXTRA_CHARS = 1000


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


def _cost_or_none(value: Any) -> Optional[float]:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) and value >= 0 else None


def response_from_body(request: LLMRequest, data: dict, *, latency_s: float, attempts: int) -> LLMResponse:
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
        # What the provider says the call cost (OpenRouter's usage.cost, in USD), when it says.
        "provider_cost_usd": _cost_or_none(usage.get("cost")),
        "prompt_chars": len(request.prompt),
        "latency_s": round(latency_s, 3),
        "attempts": attempts,
        "generation_id": generation_id if isinstance(generation_id, str) and generation_id else None,
        "created_at": now_iso(),
    }
    return LLMResponse(text=_content_text(message.get("content")), provenance=provenance)


def incompleteness(response: LLMResponse) -> Optional[str]:
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
    return oversize(response)


def oversize(response: LLMResponse) -> Optional[str]:
    """Why the answer is far over the max_tokens it was asked with, or None (see TOKEN_SLACK)."""
    limit = response.provenance.get("max_tokens")
    if not isinstance(limit, int) or limit < 1:
        return None
    tokens = response.provenance.get("completion_tokens")
    if isinstance(tokens, int) and tokens > limit * TOKEN_SLACK + EXTRA_TOKENS:
        return f"an answer far over its token limit: {tokens:,} completion tokens reported against max_tokens={limit}"
    chars = len(response.text)
    if chars > limit * MAX_CHARS_PER_TOKEN + EXTRA_CHARS:
        return f"an answer far over its token limit: {chars:,} characters against max_tokens={limit}"
    return None
