"""The OpenAI batch protocol of the test server (tests/openai_server.py): files and batches.

    openai_server.batches.delay_s = 0.5                    # a batch completes half a second after creation
    openai_server.batches.fail_when = lambda line: ...      # True: that request ends in the error file
    openai_server.batches.expire_when = lambda batch: ...   # True: the batch expires instead of completing
    openai_server.batches.supported = False                 # no batch endpoint: 404 on /v1/files and /v1/batches

Endpoints: POST /v1/files (multipart, purpose=batch), GET /v1/files/{id}/content, POST /v1/batches,
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel, GET /v1/batches (list, newest first, `limit`
and `after`). A batch answers its requests when a GET first sees it past `delay_s`, each line
through the server's own completion (default answer, `behaviour_for`, `cost_for`), so a batch
answer reads like a live one. An expired batch answers its first `expire_keep` requests and puts
the others in the error file with code `batch_expired`, as OpenAI does. Counters:
`requests_answered`, `files_uploaded`, `polls` (GETs of one batch), `created` (batches)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import uuid
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit


class FakeBatchAPI:
    """Files and batches held in memory; the handler of openai_server.py hands these paths here."""

    def __init__(self, server) -> None:
        self.server = server  # the FakeOpenAIServer, whose completions answer the batch lines
        self.delay_s = 0.2
        self.supported = True
        self.fail_when: Optional[Callable[[dict], bool]] = None
        self.expire_when: Optional[Callable[[dict], bool]] = None
        self.expire_keep = 0
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.requests_answered = 0
        self.files_uploaded = 0
        self.polls = 0
        self.created = 0
        self.answered_bodies: list[dict] = []  # every request body a batch answered
        self.responses: list[dict] = []  # the completions those answers carried
        self._lock = threading.Lock()

    # -- dispatch

    def handle(self, method: str, target: str, headers, raw: bytes) -> tuple[int, bytes, str]:
        """(status, payload, content type) for one request to /v1/files or /v1/batches."""
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p][1:]  # drop "v1"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not self.supported:
            return _error(404, f"No route for {method} {url.path}")
        with self._lock:
            if parts == ["files"] and method == "POST":
                return self._upload(headers, raw)
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and method == "GET":
                found = self.files.get(parts[1])
                return (200, found["data"], "application/jsonl") if found else _error(404, "No such file")
            if parts == ["batches"] and method == "POST":
                return self._create(raw)
            if parts == ["batches"] and method == "GET":
                return self._list(query)
            if len(parts) == 2 and parts[0] == "batches" and method == "GET":
                self.polls += 1
                batch = self.batches.get(parts[1])
                return _json(self._advance(batch)) if batch else _error(404, "No such batch")
            if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel" and method == "POST":
                return self._cancel(parts[1])
        return _error(404, f"No route for {method} {url.path}")

    # -- endpoints

    def _upload(self, headers, raw: bytes) -> tuple[int, bytes, str]:
        content_type = headers.get("content-type", "")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        fields: dict[str, tuple[Optional[str], bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or fields.get("purpose", (None, b""))[1].decode() != "batch":
            return _error(400, "Upload a 'file' with purpose 'batch'")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        data = fields["file"][1]
        self.files[file_id] = {"data": data, "filename": fields["file"][0], "purpose": "batch"}
        self.files_uploaded += 1
        return _json(
            {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
             "filename": fields["file"][0], "purpose": "batch"}
        )

    def _create(self, raw: bytes) -> tuple[int, bytes, str]:
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "The body is not JSON")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("input_file_id") not in self.files:
            return _error(400, "Give an uploaded input_file_id and endpoint /v1/chat/completions")
        lines = [json.loads(line) for line in self.files[body["input_file_id"]]["data"].splitlines() if line.strip()]
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "metadata": body.get("metadata") or {},
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines,
            "_created": time.monotonic(),
        }
        self.created += 1
        return _json(_public(self.batches[batch_id]))

    def _list(self, query: dict) -> tuple[int, bytes, str]:
        ordered = sorted(self.batches.values(), key=lambda b: b["_created"], reverse=True)
        if query.get("after"):
            ids = [b["id"] for b in ordered]
            ordered = ordered[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        limit = int(query.get("limit", 20))
        page = [_public(self._advance(b)) for b in ordered[:limit]]
        return _json({"object": "list", "data": page, "has_more": len(ordered) > limit,
                      "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    def _cancel(self, batch_id: str) -> tuple[int, bytes, str]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, "No such batch")
        if batch["status"] in ("validating", "in_progress"):
            self._finish(batch, "cancelled", answered=0)
        return _json(_public(batch))

    # -- a batch's life

    def _advance(self, batch: dict) -> dict:
        if batch["status"] == "in_progress" and time.monotonic() - batch["_created"] >= self.delay_s:
            if self.expire_when is not None and self.expire_when(_public(batch)):
                self._finish(batch, "expired", answered=self.expire_keep)
            else:
                self._finish(batch, "completed", answered=len(batch["_lines"]))
        return _public(batch)

    def _finish(self, batch: dict, state: str, answered: int) -> None:
        outputs, errors = [], []
        for n, line in enumerate(batch["_lines"]):
            custom_id = line.get("custom_id")
            if n >= answered:
                code = "batch_expired" if state == "expired" else "batch_cancelled"
                errors.append(_error_line(custom_id, code, f"This request was not run: the batch was {state}."))
            elif self.fail_when is not None and self.fail_when(line):
                errors.append(_error_line(custom_id, "server_error", "The model failed to answer this request."))
            else:
                outputs.append(self._answer(line))
        batch["status"] = state
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(outputs), "failed": len(errors)}
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{uuid.uuid4().hex[:24]}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[file_id] = {"data": data, "filename": f"{batch['id']}_{kind}.jsonl", "purpose": "batch_output"}
                batch[kind] = file_id

    def _answer(self, line: dict) -> dict:
        from tests.openai_server import Behaviour

        server = self.server
        body = line.get("body") or {}
        behaviour = (server.behaviour_for and server.behaviour_for(body)) or Behaviour("ok")
        if behaviour.kind not in ("ok", "delay"):
            behaviour = Behaviour("ok")
        with server._lock:
            server._counter += 1
            number = server._counter
        completion = server._completion(body, behaviour, number)
        self.requests_answered += 1
        self.answered_bodies.append(body)
        self.responses.append(completion)
        return {
            "id": f"batch_req_{uuid.uuid4().hex[:16]}",
            "custom_id": line.get("custom_id"),
            "response": {"status_code": 200, "request_id": f"req_{number}", "body": completion},
            "error": None,
        }


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _error_line(custom_id: Any, code: str, message: str) -> dict:
    return {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def _json(document: Any, status: int = 200) -> tuple[int, bytes, str]:
    return status, json.dumps(document).encode(), "application/json"


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    return _json({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)
