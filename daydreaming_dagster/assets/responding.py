"""The one path every response asset takes to an answer: reuse a matching stored one, or pay once."""

import dagster as dg

from ..resources.llm import IncompleteResponseError, LLMClientResource, LLMError, LLMRequest, LLMResponse
from ..resources.responses import ResponseStore
from ..storage import StoredResponseConflict
from .common import text_preview

LLM_POOL = "llm_api"


class ResponseConfig(dg.Config):
    """Run config of the response assets."""

    replace_changed: bool = False
    """Call the LLM again when the stored response belongs to another prompt/model/parameters, and
    move the old one to _superseded/ once the new answer has arrived. Off by default: a stored
    response is never replaced without being asked."""


def respond(
    context: dg.AssetExecutionContext,
    llm: LLMClientResource,
    responses: ResponseStore,
    parts: dict[str, str] | str,
    request: LLMRequest,
    config: ResponseConfig,
) -> dg.Output[LLMResponse]:
    asset_name = context.asset_key.path[-1]
    try:
        stored = responses.reusable(asset_name, parts, request, config.replace_changed)
    except StoredResponseConflict as exc:
        raise dg.Failure(description=str(exc)) from exc
    if stored is not None:
        context.log.info(f"reusing the stored response for {request.model_id}; no LLM call")
        return dg.Output(stored, metadata={**_response_metadata(stored), "reused": True})
    try:
        llm.check_ready()
        response = llm.complete(request)
    except IncompleteResponseError as exc:
        kept = responses.keep_rejected(asset_name, parts, exc.response, str(exc))
        raise dg.Failure(
            description=f"{exc} It is not stored as the response; it is kept for inspection at {kept}, "
            "and re-running the partition asks the model again.",
            metadata={"rejected_path": dg.MetadataValue.path(str(kept))},
        ) from exc
    except LLMError as exc:
        raise dg.Failure(description=str(exc)) from exc
    metadata = {**_response_metadata(response), "reused": False}
    # Only now that the new answer is here does a changed response make way for it.
    superseded = responses.supersede(asset_name, parts) if config.replace_changed else None
    if superseded is not None:
        context.log.info(f"moved the previous response to {superseded}")
        metadata["superseded_path"] = dg.MetadataValue.path(str(superseded))
    return dg.Output(response, metadata=metadata)


def _response_metadata(response: LLMResponse) -> dict:
    p = response.provenance
    meta = {
        "model_id": p.get("model_id"),
        "model": p.get("model"),
        "backend": p.get("backend"),
        "finish_reason": p.get("finish_reason"),
        "temperature": p.get("temperature"),
        "max_tokens": p.get("max_tokens"),
        "prompt_tokens": p.get("prompt_tokens"),
        "completion_tokens": p.get("completion_tokens"),
        "total_tokens": p.get("total_tokens"),
        "latency_s": p.get("latency_s"),
        "attempts": p.get("attempts"),
        "prompt_sha256": p.get("prompt_sha256"),
        "generation_id": p.get("generation_id"),
        "created_at": p.get("created_at"),
        "preview": text_preview(response.text),
    }
    return {k: v for k, v in meta.items() if v is not None}
