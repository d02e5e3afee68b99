"""The step of a response asset: its partitions' paid calls through the engine (calls/engine.py),
and what Dagster records of them.

A step covers one partition or a range of them. The engine reuses stored answers, claims, admits
under the cap, calls (up to `parallel_calls` at once for a range), stores each answer the moment it
arrives and releases; this module turns its outcomes into the step's output (every partition's
answer, with its own metadata) or one failure sentence, whose metadata tells `daydream run` what
to do next (CAP_REACHED, STOPS_RUN, ASKED_EARLIER, held_elsewhere)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import dagster as dg

from ..calls.claiming import Call
from ..calls.engine import Engine, Kind, Outcome
from ..calls.guard import SpendingGuard
from ..llm.requests import LLMError, LLMResponse
from ..resources.llm import LLMClientResource
from ..resources.response_store import ResponseStore
from ..store.claims import Owner
from ..store.write_once import content_digest
from .batch_step import batch_requested, submit_from_step
from .common import partition_output, per_partition_type, text_preview

__all__ = [
    "ASKED_EARLIER", "CAP_REACHED", "LLM_POOL", "STOPS_RUN", "AskedEarlier", "Call", "PartitionResponse",
    "ResponseConfig", "respond",
]  # fmt: skip

LLM_POOL = "llm_api"
# Metadata key of a step failure caused by the cap: `daydream run` then stops instead of retrying.
CAP_REACHED = "daydream/spending_cap_reached"
# Metadata key of a step failure after which no call of the command can succeed (the API refuses
# every call: a refused key, an account that cannot pay, an API that does not answer; or the disk is
# full, so no answer could be stored): `daydream run` then starts nothing more.
STOPS_RUN = "daydream/stops_run"
ASKED_EARLIER = "asked_earlier"

PartitionResponse = per_partition_type("PartitionResponse", LLMResponse)


class AskedEarlier(dg.Config):
    """This very request, asked earlier in the same `daydream run` (by its head start, see
    runner/executor/head_start.py) with its whole retry budget, without a usable answer: the answer
    was cut off (kept under _rejected/), or the call failed. The step fails it as if it had asked,
    so one command asks one request once."""

    request: str
    """The request's `LLMRequest.fingerprint_text()`: a partition whose request differs is asked."""
    reason: str
    kept: Optional[str] = None
    """Where the cut-off answer is kept; None when the call failed without one."""
    stops_run: bool = False
    """The API refused the call in a way no other call gets past (see llm/requests.APIRefusedError)."""


class ResponseConfig(dg.Config):
    """Run config of the response assets."""

    replace_changed: bool = False
    """Call the LLM again when the stored response belongs to another prompt/model/parameters, and
    move the old one to _superseded/ once the new answer has arrived. Off by default: a stored
    response is never replaced without being asked."""

    parallel_calls: int = 8
    """LLM calls in flight at once when the run covers a range of partitions (a run for one
    partition makes one call)."""

    batch: bool = False
    """Submit the calls to the provider's batch API instead of making them (as the run tag
    daydream/batch=true does); the batches_collect sensor materializes the partitions later."""

    max_cost_usd: Optional[float] = None
    """Spending cap in USD for this run, overriding the experiment's `max_cost_usd`: no call starts
    whose worst case would take the spending under the output root past it."""

    asked_earlier: dict[str, AskedEarlier] = {}
    """Partitions whose very request was asked earlier in the same command without a usable answer:
    each fails as if this step had asked, without asking (or paying for) the same request again."""


def respond(
    context: dg.AssetExecutionContext,
    llm: LLMClientResource,
    responses: ResponseStore,
    calls: Sequence[Call],
    config: ResponseConfig,
    guard: SpendingGuard | None = None,
) -> dg.Output:
    """Every call's answer (stored or new) as the step's output; fails after storing what arrived
    when any call got no usable answer."""
    asset_name = context.asset_key.path[-1]
    archive = responses.archive()
    engine = Engine(archive, asset_name, llm, Owner.here(context.run.run_id), context.log, guard)
    failures: dict[str, dg.Failure] = {}
    outcomes: dict[str, Outcome] = {}
    to_call = []
    for call in calls:
        earlier = config.asked_earlier.get(call.key)
        if (decided := engine.reused(call, config.replace_changed)) is not None:
            outcomes[call.key] = decided
        elif earlier is not None and earlier.request == call.request.fingerprint_text():
            failures[call.key] = _asked_earlier(earlier)
        else:
            to_call.append(call)
    if to_call and batch_requested(context, config.batch):  # a UI backfill in batch mode: see batch_step.py
        raise submit_from_step(context, llm, responses, to_call, config.max_cost_usd)
    if to_call:
        try:
            llm.check_ready()
        except LLMError as exc:
            raise dg.Failure(description=str(exc)) from exc
        unbounded = guard and guard.unbounded(c.request for c in to_call)
        if unbounded:
            raise dg.Failure(description=unbounded, metadata={CAP_REACHED: True})
        outcomes.update(engine.run(to_call, config.replace_changed, config.parallel_calls))

    answers: dict[str, LLMResponse] = {}
    metadata: dict[str, dict] = {}
    asked: dict[str, dict] = {}  # ResponseConfig.asked_earlier's entries for the runs that follow
    held: dict[str, str] = {}
    for key, outcome in outcomes.items():
        path = archive.path(asset_name, outcome.call.parts)
        if outcome.kind in (Kind.REUSED, Kind.PAID):
            answers[key] = outcome.response
            metadata[key] = _response_metadata(outcome.response, path, reused=outcome.kind == Kind.REUSED)
            if outcome.superseded is not None:
                metadata[key]["superseded_path"] = dg.MetadataValue.path(str(outcome.superseded))
            continue
        if outcome.kind == Kind.NOT_ASKED:
            continue
        if outcome.kind == Kind.HELD:
            held[key] = outcome.owner
        failures[key] = _failure(outcome)
        if outcome.asked and outcome.kind == Kind.FAILED:
            asked[key] = outcome.asked_earlier()
    reused = sum(o.kind == Kind.REUSED for o in outcomes.values())
    if reused:
        context.log.info(f"reusing {reused} stored response(s); no LLM call for them")
    if failures:
        not_asked = len(calls) - len(answers) - len(failures)
        raise _summary_failure(asset_name, failures, held, len(answers), not_asked, asked)
    # Each answer's data version is the digest of its text: what is built from it (an evaluation
    # prompt quoting a generation) goes stale in Dagster only when the answer itself changes.
    versions = {c.key: content_digest(answers[c.key].text.encode("utf-8"))["response_sha256"] for c in calls}
    return partition_output(context, {c.key: answers[c.key] for c in calls}, metadata, versions)


def _failure(outcome: Outcome) -> dg.Failure:
    """The failure of one partition's outcome, with what the runner needs in its metadata."""
    metadata = {}
    if outcome.cap_reached:
        metadata[CAP_REACHED] = True
    if outcome.stops_run:
        metadata[STOPS_RUN] = True
    if outcome.kept is not None:
        metadata["rejected_path"] = dg.MetadataValue.path(outcome.kept)
    return dg.Failure(description=outcome.reason, metadata=metadata)


def _asked_earlier(earlier: AskedEarlier) -> dg.Failure:
    if earlier.kept is not None:
        return dg.Failure(
            description=f"{earlier.reason} It is not stored as the response; it is kept for inspection at "
            f"{earlier.kept}, and re-running the partition asks the model again.",
            metadata={"rejected_path": dg.MetadataValue.path(earlier.kept)},
        )
    return dg.Failure(description=earlier.reason, metadata={STOPS_RUN: True} if earlier.stops_run else {})


def _summary_failure(
    asset_name: str, failures: dict[str, dg.Failure], held: dict[str, str], stored: int, not_asked: int,
    asked: dict[str, dict] | None = None,
) -> dg.Failure:
    """One partition's own failure as it is; for a range, one sentence that counts and names the first.

    `held_elsewhere` in the metadata lists the partitions another live run was still answering
    (with that run's owner): they did not fail, and a runner leaves them to that run. `asked_earlier`
    lists the partitions whose call was made and failed (ResponseConfig.asked_earlier's entries): a
    runner that runs them again one by one tells those runs, which then fail them without asking."""
    extra = {"held_elsewhere": dg.MetadataValue.json(held)} if held else {}
    if asked:
        extra[ASKED_EARLIER] = dg.MetadataValue.json(asked)
    if len(failures) == 1 and stored == 0 and not_asked == 0:
        only = next(iter(failures.values()))
        return dg.Failure(description=only.description, metadata={**only.metadata, **extra})
    stops = [f for f in failures.values() if STOPS_RUN in f.metadata]
    if stops:  # the sentence that says why nothing more is asked, as it is
        return dg.Failure(description=stops[0].description, metadata={STOPS_RUN: True, **extra})
    capped = [f for f in failures.values() if CAP_REACHED in f.metadata]
    if capped:
        return dg.Failure(
            description=f"{capped[0].description} ({not_asked + len(capped)} {asset_name} partition(s) of this "
            f"run were not asked; the {stored} answer(s) that arrived are stored and are reused when they run again.)",
            metadata={CAP_REACHED: True, **extra},
        )
    key, first = next(iter(failures.items()))
    skipped = f", {not_asked} not asked after that error" if not_asked else ""
    return dg.Failure(
        description=f"{len(failures)} {asset_name} partition(s) got no usable answer{skipped} (first, {key}: "
        f"{first.description}); the {stored} answer(s) that did arrive are stored and are reused when "
        "these partitions run again.",
        metadata={
            "failed_partitions": dg.MetadataValue.json({k: f.description for k, f in failures.items()}),
            **extra,
        },
    )


def _response_metadata(response: LLMResponse, path: Path, reused: bool) -> dict:
    """What a response's materialization shows: its provenance, where it is, and whether it was reused."""
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
        "provider_cost_usd": p.get("provider_cost_usd"),
        "latency_s": p.get("latency_s"),
        "attempts": p.get("attempts"),
        "prompt_sha256": p.get("prompt_sha256"),
        "generation_id": p.get("generation_id"),
        "created_at": p.get("created_at"),
        "asked_by": p.get("asked_by"),  # set when `daydream run`'s head start made the call (see head_start.py)
        "preview": text_preview(response.text),
    }
    meta.update(reused=reused, path=dg.MetadataValue.path(str(path)))
    return {k: v for k, v in meta.items() if v is not None}
