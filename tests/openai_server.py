"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, as a pytest fixture.

    def test_retry(openai_server):
        openai_server.script(status(503), ok("fine"))    # first request 503, second answers
        ...                                               # point a client at openai_server.base_url
        assert len(openai_server.requests) == 2

Every request is recorded (`.requests`: method, path, headers, JSON body).  Requests are
answered by the scripted behaviours in order, then by `behaviour_for(body)` when it is set and
returns one, then by the default: a success whose text is `default_answer(body)`.  `latency_s` delays every answer
(`latency_for(body)`, when set, instead: see tests/latency_models.py).  Usage counts whitespace-separated words
as tokens; with `cost_for` set it also reports a cost.  The server runs in daemon threads and
shuts down at fixture teardown without waiting for handlers that are sleeping or stuck.  The batch
protocol (`.batches`, see tests/openai_batch_protocol.py) answers /v1/files and /v1/batches.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import pytest

from tests.openai_batch_protocol import FakeBatchAPI

__all__ = [
    "Behaviour",
    "FakeOpenAIServer",
    "RecordedRequest",
    "delay",
    "drop",
    "empty",
    "held_until",
    "html_200",
    "json_body",
    "null_content",
    "ok",
    "openai_server",
    "status",
    "truncated",
]

_ERROR_MESSAGES = {
    400: ("invalid_request_error", "The requested model is not a valid model ID"),
    401: ("authentication_error", "No auth credentials found"),
    402: ("insufficient_credits", "Insufficient credits"),
    403: ("permission_error", "This key is not allowed to use this model"),
    404: ("not_found_error", "No endpoints found for this model"),
    408: ("timeout", "The upstream provider timed out"),
    429: ("rate_limit_error", "Rate limit exceeded, please slow down"),
    500: ("server_error", "Internal server error"),
    502: ("server_error", "The upstream provider returned an invalid response"),
    503: ("server_error", "No instances available to serve this model"),
    504: ("server_error", "The upstream provider did not answer in time"),
}

_HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>Bad gateway</h1><p>The origin is unreachable.</p></body></html>"
)


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request."""

    kind: str  # "ok", "status", "html_200", "json", "delay", "drop"
    text: Optional[str] = None  # answer text for "ok"/"delay" (None: the default answer)
    content_null: bool = False  # send "content": null
    finish_reason: str = "stop"
    status: int = 200
    retry_after: Optional[float] = None
    message: Optional[str] = None
    seconds: float = 0.0
    body: Any = None  # the JSON document sent as is, for "json"
    until: Optional[threading.Event] = field(default=None, compare=False)  # "delay" ends early once set


def ok(text: Optional[str] = None) -> Behaviour:
    """A successful completion; `text=None` answers with the server's default answer."""
    return Behaviour("ok", text=text)


def status(code: int, retry_after: Optional[float] = None, message: Optional[str] = None) -> Behaviour:
    """An HTTP error with an OpenAI-style JSON body, optionally with a Retry-After header."""
    return Behaviour("status", status=code, retry_after=retry_after, message=message)


def html_200() -> Behaviour:
    """Status 200 with a text/html error page instead of JSON."""
    return Behaviour("html_200")


def json_body(body: Any, code: int = 200) -> Behaviour:
    """Any JSON document with any status, e.g. OpenRouter's 200 carrying {"error": {...}}."""
    return Behaviour("json", status=code, body=body)


def delay(seconds: float, text: Optional[str] = None) -> Behaviour:
    """Sleep `seconds` (beyond the client's timeout, typically), then answer if anyone still listens."""
    return Behaviour("delay", text=text, seconds=seconds)


def held_until(event: threading.Event, timeout: float = 60.0, text: Optional[str] = None) -> Behaviour:
    """Hold the answer until `event` is set (a cue from the test or another request), at most `timeout` s."""
    return Behaviour("delay", text=text, seconds=timeout, until=event)


def drop() -> Behaviour:
    """Read the request, then close the connection without answering."""
    return Behaviour("drop")


def empty() -> Behaviour:
    """A completion whose content is ""."""
    return Behaviour("ok", text="")


def null_content() -> Behaviour:
    """A completion whose content is null (as reasoning models sometimes send)."""
    return Behaviour("ok", content_null=True)


def truncated(text: str = "The answer was cut") -> Behaviour:
    """A completion cut off by the token limit: finish_reason "length"."""
    return Behaviour("ok", text=text, finish_reason="length")


# --------------------------------------------------------------------------- server


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # decoded JSON, or None when the body was not JSON
    raw_body: bytes = field(repr=False, default=b"")
    received_at: float = field(default_factory=time.time)  # epoch seconds, when the body was read
    answered_at: Optional[float] = None  # epoch seconds, when the server began to send its answer


def _default_answer(body: Any) -> str:
    return "A default answer from the fake server."


class FakeOpenAIServer:
    """The object the `openai_server` fixture yields."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default_answer: Callable[[Any], str] = _default_answer
        self.latency_s: float = 0.0
        # Seconds to wait before answering this body (e.g. a seeded heavy-tailed model); None: latency_s.
        self.latency_for: Optional[Callable[[Any], float]] = None
        self.responses: list[dict] = []  # JSON bodies of the completions the server sent
        self._queue: deque[Behaviour] = deque()
        # Consulted when nothing is scripted: a behaviour chosen from the request body (None = ok).
        self.behaviour_for: Optional[Callable[[Any], Optional[Behaviour]]] = None
        # When set, every completion's usage block reports `cost` (USD) as OpenRouter's does:
        # cost_for(request body, usage) -> the amount.
        self.cost_for: Optional[Callable[[Any, dict], float]] = None
        self._lock = threading.Lock()
        # The batch protocol (/v1/files, /v1/batches): see tests/openai_batch_protocol.py.
        self.batches = FakeBatchAPI(self)
        self._stopping = threading.Event()
        self._counter = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order (appends to what is still queued)."""
        with self._lock:
            self._queue.extend(behaviours)

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay()/latency
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- used by the handler

    def _record(self, request: RecordedRequest) -> tuple[Behaviour, int]:
        with self._lock:
            self.requests.append(request)
            self._counter += 1
            if self._queue:
                behaviour = self._queue.popleft()
            else:
                behaviour = (self.behaviour_for and self.behaviour_for(request.body)) or Behaviour("ok")
            return behaviour, self._counter

    def _sleep(self, seconds: float, until: Optional[threading.Event] = None) -> bool:
        """Sleep `seconds` (less once `until` is set), unless the server stops first; False when it stopped."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not (until and until.is_set()):
            if self._stopping.wait(min(left, 0.02) if until else left):
                return False
        return True

    def _completion(self, body: Any, behaviour: Behaviour, number: int) -> dict:
        prompt = ""
        model = "unknown"
        if isinstance(body, dict):
            model = body.get("model", model)
            messages = body.get("messages") or []
            prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        if behaviour.content_null:
            content = None
        elif behaviour.text is not None:
            content = behaviour.text
        else:
            content = self.default_answer(body)
        prompt_tokens = len(prompt.split())
        completion_tokens = len((content or "").split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.cost_for is not None:
            usage["cost"] = self.cost_for(body, usage)
        return {
            "id": f"gen-fake-{number:04d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": behaviour.finish_reason,
                }
            ],
            "usage": usage,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for a handler stuck in delay() or on a dead socket
    allow_reuse_address = True
    fake: FakeOpenAIServer

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (after a timeout) is expected, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # an idle or half-sent connection must not pin a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.startswith(("/v1/files", "/v1/batches")):  # never recorded as chat requests
            self.close_connection = True
            self._send(*fake.batches.handle(self.command, self.path, self.headers, raw))
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
        )
        behaviour, number = fake._record(recorded)
        self.close_connection = True

        if behaviour.kind == "drop":
            self._abort()
            return
        if not fake._sleep(fake.latency_for(body) if fake.latency_for else fake.latency_s):
            return
        if behaviour.kind == "delay" and not fake._sleep(behaviour.seconds, behaviour.until):
            return
        recorded.answered_at = time.time()
        if self.path.rstrip("/") != "/v1/chat/completions" or self.command != "POST":
            self._send_error(404, f"No route for {self.command} {self.path}")
            return
        if body is None:  # cut short (its sender was killed mid-send) or not JSON
            self._send_error(400, "The request body is not valid JSON")
        elif behaviour.kind == "status":
            self._send_error(behaviour.status, behaviour.message, behaviour.retry_after)
        elif behaviour.kind == "json":
            self._send(behaviour.status, json.dumps(behaviour.body).encode(), "application/json")
        elif behaviour.kind == "html_200":
            self._send(200, _HTML_ERROR_PAGE.encode(), "text/html; charset=utf-8")
        else:
            completion = fake._completion(body, behaviour, number)
            with fake._lock:
                fake.responses.append(completion)
            self._send(200, json.dumps(completion).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str, extra: Optional[dict] = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            pass  # the client gave up (timeout) before the answer came

    def _send_error(self, code: int, message: Optional[str], retry_after: Optional[float] = None) -> None:
        kind, default_message = _ERROR_MESSAGES.get(code, ("error", f"HTTP {code}"))
        payload = {"error": {"message": message or default_message, "type": kind, "code": code}}
        extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        self._send(code, json.dumps(payload).encode(), "application/json", extra)

    def _abort(self) -> None:
        """Close the connection without sending a byte of answer."""
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def openai_server():
    """A fresh fake OpenAI-compatible server per test; see the module docstring."""
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()
