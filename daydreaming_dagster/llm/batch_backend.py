"""Provider batch APIs: many requests in one submission, answered within hours at a discount.

`BatchBackend` is what the batch mode of `daydream` (orchestration/batch_*.py) sees; it never
sees which protocol is behind it. Requests are keyed by our own keys (derived from the partition);
a backend maps them to whatever ids its provider accepts and maps the answers back.

`OpenAIBatchBackend` speaks the OpenAI batch protocol (served by OpenAI and several gateways): the
requests of one model as a JSONL file uploaded to `/files` (purpose "batch"), a batch created on
`/batches` for `/v1/chat/completions`, polled, its output and error files downloaded. It uses the
same base URL and key as live calls.

Another protocol fits behind the same five methods without touching the assets or the
orchestration: Anthropic's Message Batches would `submit` the requests inline (POST
/v1/messages/batches, `params` per request; its custom ids must match `[A-Za-z0-9_-]{1,64}`, so
it would send `custom_id(key)` digests and map them back in `collect`, which gets every key),
`status` from `processing_status`/`request_counts`, `collect` from the JSONL at `results_url`
(`succeeded`/`errored`/`expired` per line) and `find` by listing batches and reading back the
first request. OpenRouter-style inline batches would likewise send the requests in the body."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2

from .completions import incompleteness, response_from_body
from .faults import status_cause
from .requests import MISSING_KEY_MESSAGE, LLMError, LLMRequest, LLMResponse

# OpenAI's limits of one batch input file (other providers' are similar or larger).
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_TRANSIENT = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class BatchState:
    """Where a provider's batch is: its state and request counts."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    created_at: float = 0.0
    metadata: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """No request of it will be answered any more (completed, failed, expired or cancelled)."""
        return self.status in TERMINAL


@dataclass
class BatchResults:
    """A finished batch's answers and, for every other key, why it got none (one sentence)."""

    answers: dict[str, LLMResponse] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, tuple[LLMResponse, str]] = field(default_factory=dict)  # empty or cut-off answers


class BatchBackend(Protocol):
    """Submits requests of one model as one provider batch, follows it and reads its answers."""

    name: str
    max_requests: int
    max_bytes: int

    def check_ready(self) -> None:
        """Raise LLMError with one sentence when no batch can be submitted (no key, no batch endpoint)."""

    def submit(self, model: str, requests: Mapping[str, LLMRequest], metadata: Mapping[str, str]) -> str:
        """Submit one batch of `requests` (key -> request, all of `model`); its id. `metadata` is
        stored with the batch, so `find` can recognise it after a crash."""

    def status(self, batch_id: str) -> BatchState: ...

    def collect(self, batch_id: str, requests: Mapping[str, LLMRequest]) -> BatchResults:
        """The answers of a finished batch, by key, with per-key errors for the others."""

    def cancel(self, batch_id: str) -> BatchState: ...

    def find(self, key: str, value: str) -> BatchState | None:
        """The batch whose metadata has `key` = `value`, or None (searches the recent batches)."""


def custom_id(key: str) -> str:
    """A short id for a key where a provider restricts ids (64 characters of [A-Za-z0-9_-])."""
    return "d" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def jsonl_line(key: str, request: LLMRequest) -> bytes:
    """One line of an OpenAI batch input file: exactly the body a live call sends."""
    body = {
        "model": request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "temperature": float(request.temperature),
        "max_tokens": int(request.max_tokens),
    }
    line = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def split_lines(lines: Sequence[tuple[str, bytes]], max_requests: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """The lines in files of at most `max_requests` lines and `max_bytes` bytes, in order; raises
    LLMError for a single request larger than a whole file may be."""
    files: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise LLMError(
                f"the batch request of {key} is {len(line):,} bytes, over the provider's {max_bytes:,}-byte "
                "limit of a batch file; ask it live (run without --batch)."
            )
        if files[-1] and (len(files[-1]) >= max_requests or size + len(line) > max_bytes):
            files.append([])
            size = 0
        files[-1].append((key, line))
        size += len(line)
    return [f for f in files if f]


class OpenAIBatchBackend:
    """The OpenAI batch protocol over HTTP (see the module docstring)."""

    name = "openai-batch"

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        timeout_s: float = 120.0,
        max_requests: int = MAX_REQUESTS_PER_FILE,
        max_bytes: int = MAX_BYTES_PER_FILE,
        attempts: int = 4,
    ) -> None:
        self._api_key = (api_key or "").strip()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.attempts = max(1, attempts)
        self._client: httpx2.Client | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBatchBackend(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check_ready(self) -> None:
        if not self._api_key:
            raise LLMError(MISSING_KEY_MESSAGE)
        status, _ = self._call("GET", "/batches", params={"limit": 1}, allow={404, 405})
        if status in (404, 405):
            raise LLMError(
                f"the provider at {self.base_url} has no batch endpoint (HTTP {status} from /batches), so "
                "nothing was uploaded; run without --batch, or set batch=no for its models in llm_models.csv."
            )

    def submit(self, model: str, requests: Mapping[str, LLMRequest], metadata: Mapping[str, str]) -> str:
        others = sorted({r.model for r in requests.values()} - {model})
        if others:
            raise LLMError(f"a batch file names one model; {model} was given requests of {', '.join(others)}.")
        data = b"".join(jsonl_line(key, request) for key, request in requests.items())
        if len(requests) > self.max_requests or len(data) > self.max_bytes:
            raise LLMError(
                f"a batch of {len(requests)} request(s) and {len(data):,} bytes is over the provider's limits "
                f"({self.max_requests} requests, {self.max_bytes:,} bytes); split it (split_lines)."
            )
        _, uploaded = self._call(
            "POST", "/files", files={"file": ("batch.jsonl", data, "application/jsonl")}, data={"purpose": "batch"}
        )
        _, batch = self._call(
            "POST",
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": dict(metadata),
            },
        )
        return str(batch["id"])

    def status(self, batch_id: str) -> BatchState:
        _, batch = self._call("GET", f"/batches/{batch_id}")
        return _state(batch)

    def cancel(self, batch_id: str) -> BatchState:
        _, batch = self._call("POST", f"/batches/{batch_id}/cancel")
        return _state(batch)

    def find(self, key: str, value: str, pages: int = 10) -> BatchState | None:
        after = None
        for _ in range(pages):
            params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
            _, page = self._call("GET", "/batches", params=params)
            for batch in page.get("data") or []:
                if (batch.get("metadata") or {}).get(key) == value:
                    return _state(batch)
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    def collect(self, batch_id: str, requests: Mapping[str, LLMRequest]) -> BatchResults:
        _, batch = self._call("GET", f"/batches/{batch_id}")
        results = BatchResults()
        for line in self._lines(batch.get("output_file_id")):
            key = line.get("custom_id")
            if key not in requests:
                continue
            response = line.get("response") or {}
            body = response.get("body")
            if response.get("status_code") != 200 or not isinstance(body, dict) or not body.get("choices"):
                results.errors[key] = status_cause(response.get("status_code"), body)
                continue
            answer = response_from_body(requests[key], body, latency_s=0.0, attempts=1)
            answer.provenance.update(backend=self.name, batch_id=batch_id, latency_s=None)
            problem = incompleteness(answer)
            if problem is not None:
                results.rejected[key] = (answer, f"the batch answer of {key} is {problem}")
            else:
                results.answers[key] = answer
        for line in self._lines(batch.get("error_file_id")):
            key = line.get("custom_id")
            if key in requests and key not in results.answers:
                error = line.get("error") or (line.get("response") or {}).get("body") or {}
                code = error.get("code") if isinstance(error, dict) else None
                message = error.get("message") if isinstance(error, dict) else str(error)
                results.errors[key] = f"{code or 'error'}: {message or 'no answer'}"
        for key in requests:
            if key not in results.answers and key not in results.errors and key not in results.rejected:
                results.errors[key] = f"no answer in batch {batch_id} ({batch.get('status')})"
        return results

    # -- HTTP

    def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        _, text = self._call("GET", f"/files/{file_id}/content", raw=True)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _get_client(self) -> httpx2.Client:
        if self._client is None:
            self._client = httpx2.Client(
                base_url=self.base_url,
                timeout=self.timeout_s,
                headers={"Authorization": f"Bearer {self._api_key}"},
            )
        return self._client

    def _call(self, method: str, path: str, raw: bool = False, allow: frozenset | set = frozenset(), **kwargs):
        """(status, decoded JSON or text); transient faults are retried, others raise LLMError."""
        cause = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2**attempt))
            try:
                response = self._get_client().request(method, path, **kwargs)
            except httpx2.TransportError as exc:
                cause = f"connection error ({type(exc).__name__})"
                continue
            if response.status_code in allow:
                return response.status_code, None
            if response.status_code in _TRANSIENT:
                cause = status_cause(response.status_code, _json_or_text(response))
                continue
            if response.status_code >= 400:
                raise LLMError(f"batch API {method} {path} failed: {status_cause(response.status_code, _json_or_text(response))}.")
            if raw:
                return response.status_code, response.text
            try:
                return response.status_code, response.json()
            except ValueError:
                cause = f"HTTP {response.status_code} with a body that is not JSON"
        raise LLMError(f"batch API {method} {path} failed after {self.attempts} attempts; last cause: {cause}.")


def _json_or_text(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _state(batch: dict) -> BatchState:
    counts = batch.get("request_counts") or {}
    return BatchState(
        id=str(batch["id"]),
        status=str(batch.get("status")),
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        created_at=float(batch.get("created_at") or 0),
        metadata=dict(batch.get("metadata") or {}),
    )
