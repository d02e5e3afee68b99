"""The ledger of provider batches: one small JSON record per submitted file, under
`<output root>/.batches/<submission>.json`, written atomically (temp file, fsync, rename).

A submission's id (its input file's digest and a random part) is chosen before the batch exists,
so the record can be written first ("intended", with the file's full digest) and the provider
asked afterwards whether a batch with that id in its metadata was created. Its life: intended -> submitted (batch id known) -> collected (answers stored, errors
noted) | abandoned (never created) | cancelled. Records are never deleted: they are the history
of what was sent, and `daydream batches` lists them."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .files import atomic_write_bytes
from .roots import StorageRefused, data_path, is_remote

FOLDER = ".batches"
OPEN = ("intended", "submitted")


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def submission_id(data: bytes) -> str:
    """A new submission's id: the start of its input file's digest, and a random part, since the
    same file may be sent again after its first batch failed (each sending has its own record)."""
    return f"{file_digest(data)[:16]}-{uuid.uuid4().hex[:12]}"


class BatchLedger:
    """The batch records under one output root."""

    def __init__(self, root: Path | str) -> None:
        self.root = data_path(root)
        self.folder = self.root / FOLDER

    def refuse_remote(self) -> None:
        """Batch records are local files: on an object-store data root, batch mode is refused before
        anything is uploaded (a live run there reads no records and holds nothing back)."""
        if is_remote(self.root):
            raise StorageRefused(
                f"batch mode keeps its records on a local data root, and {self.root} is on object storage; "
                "run without --batch (live calls) or use a local data root for batch runs."
            )

    def path(self, submission: str) -> Path:
        return self.folder / f"{submission}.json"

    def write(self, record: dict) -> None:
        """Write (or replace) the record of `record["submission"]`, whole or not at all."""
        self.refuse_remote()
        data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8")
        atomic_write_bytes(self.path(record["submission"]), data)

    def read(self, submission: str) -> dict | None:
        try:
            return json.loads(self.path(submission).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def records(self) -> Iterator[dict]:
        """Every record, oldest first."""
        if is_remote(self.root) or not self.folder.is_dir():
            return
        found = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                record = self.read(entry.name[: -len(".json")])
                if record is not None:
                    found.append(record)
        yield from sorted(found, key=lambda r: (r.get("created", 0), r["submission"]))

    def open_records(self) -> list[dict]:
        """The records whose batch may still answer (intended or submitted)."""
        return [r for r in self.records() if r.get("state") in OPEN]

    def held_keys(self, asset: str) -> dict[str, str]:
        """Partition key -> "batch <id>" for every partition of `asset` in an open batch."""
        held = {}
        for record in self.open_records():
            if record.get("asset") == asset:
                label = f"batch {record.get('batch_id') or record['submission']}"
                held.update({key: label for key in record.get("items", {})})
        return held
