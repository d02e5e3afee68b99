"""The archive of paid responses, as the response assets see it before deciding to call an LLM."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from .. import storage
from .llm import LLMRequest, LLMResponse


class ResponseStore(dg.ConfigurableResource):
    """Read-side view of the text IO manager's files: finds a reusable response, keeps rejects aside.

    Shares `base_path` and the layout of `storage.text_path` with TextIOManager, which does the writing."""

    base_path: str

    def path(self, asset_name: str, parts: dict[str, str] | str) -> Path:
        return storage.text_path(Path(self.base_path), asset_name, parts)

    def reusable(
        self, asset_name: str, parts: dict[str, str] | str, request: LLMRequest, replace_changed: bool
    ) -> LLMResponse | None:
        """The stored response when it answers exactly this request; None when nothing is stored.

        A stored response for another prompt, model or parameters is never overwritten: without
        `replace_changed` this raises StoredResponseConflict; with it the old file moves aside."""
        path = self.path(asset_name, parts)
        if not path.is_file():
            return None
        provenance = storage.read_provenance(path)
        differing = storage.mismatched_fields(provenance, request.fingerprint())
        if not differing:
            return LLMResponse(text=path.read_text(encoding="utf-8"), provenance=provenance)
        if replace_changed:
            storage.move_aside(path)
            return None
        raise storage.StoredResponseConflict(
            f"the stored {asset_name} at {path} belongs to another request ({', '.join(differing)} differ); "
            "it is kept, and re-running it deliberately takes replace_changed "
            "(`daydream run --replace-changed`, or run config replace_changed: true), "
            "which moves the old response to _superseded/."
        )

    def keep_rejected(self, asset_name: str, parts, response: LLMResponse, reason: str) -> Path:
        return storage.keep_rejected(self.path(asset_name, parts), response.text, response.provenance, reason)
