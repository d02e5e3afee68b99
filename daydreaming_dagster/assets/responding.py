"""The one path every response asset takes to its answers: reuse a matching stored one, or pay once.

A step covers one partition or a range of them. For a range, the calls run concurrently (up to
`parallel_calls`), and each answer is stored the moment it arrives, so a step that fails half-way
(or a process that is killed) loses nothing that was paid for: the next run of those partitions
finds the answers and reuses them. Every call is claimed first (see claiming.py): a partition whose
call another live run has claimed is waited for and its answer reused, never paid for twice."""

from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional

import dagster as dg

from ..llm.requests import APIRefusedError, IncompleteResponseError, LLMError, LLMResponse
from ..resources.llm import LLMClientResource
from ..resources.responses import ResponseStore
from ..store.responses import StoredResponseConflict, content_digest
from ..store.roots import StorageFull
from .batch_step import batch_requested, submit_from_step
from .budget import CAP_REACHED, SpendingCapReached, SpendingGuard
from .claiming import Ask, StepClaims, held_message
from .common import partition_output, per_partition_type, text_preview

__all__ = ["STOPS_RUN", "ASKED_EARLIER", "LLM_POOL", "Ask", "AskedEarlier", "PartitionResponse", "ResponseConfig", "respond"]

LLM_POOL = "llm_api"
# Metadata key of a step failure after which no call of the command can succeed (the API refuses
# every call: a refused key, an account that cannot pay, an API that does not answer; or the disk is
# full, so no answer could be stored): `daydream run` then starts nothing more.
STOPS_RUN = "daydream/stops_run"
ASKED_EARLIER = "asked_earlier"

PartitionResponse = per_partition_type("PartitionResponse", LLMResponse)


class AskedEarlier(dg.Config):
    """This very request, asked earlier in the same `daydream run` (by its head start, see
    orchestration/head_start.py) with its whole retry budget, without a usable answer: the answer
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
    asks: Sequence[Ask],
    config: ResponseConfig,
    guard: SpendingGuard | None = None,
) -> dg.Output:
    """Every ask's answer (stored or new) as the step's output; fails after storing what arrived
    when any ask got no usable answer. With a spending `guard`, each call starts only if its worst
    case fits under the cap, and counts as in flight until its answer is stored."""
    asset_name = context.asset_key.path[-1]
    answers: dict[str, LLMResponse] = {}
    metadata: dict[str, dict] = {}
    to_call: list[Ask] = []
    for ask in asks:
        try:
            stored = responses.reusable(asset_name, ask.parts, ask.request, config.replace_changed)
        except StoredResponseConflict as exc:
            raise dg.Failure(description=str(exc)) from exc
        if stored is None:
            to_call.append(ask)
        else:
            answers[ask.key] = stored
            metadata[ask.key] = _response_metadata(stored, responses.path(asset_name, ask.parts), reused=True)
    if answers:
        context.log.info(f"reusing {len(answers)} stored response(s); no LLM call for them")
    failures: dict[str, dg.Failure] = {}
    for ask in list(to_call):
        earlier = config.asked_earlier.get(ask.key)
        if earlier is not None and earlier.request == ask.request.fingerprint_text():
            failures[ask.key] = _asked_earlier(earlier)
            to_call.remove(ask)
    if to_call and batch_requested(context, config.batch):  # a UI backfill in batch mode: see batch_step.py
        raise submit_from_step(context, llm, responses, to_call, config.max_cost_usd)
    if to_call:
        try:
            llm.check_ready()
        except LLMError as exc:
            raise dg.Failure(description=str(exc)) from exc
        unbounded = guard and guard.unbounded(a.request for a in to_call)
        if unbounded:
            raise dg.Failure(description=unbounded, metadata={CAP_REACHED: True})

    with StepClaims(context, responses, asset_name, config.replace_changed) as claims:
        pending, waiting, stopped = to_call, [], False
        asked: dict[str, dict] = {}  # ResponseConfig.asked_earlier's entries for the runs that follow
        try:
            while (pending or waiting) and not stopped:
                mine, theirs = claims.take(pending)
                waiting += theirs
                for ask, outcome in _complete_all(llm, mine, config.parallel_calls, guard):
                    try:
                        if isinstance(outcome, LLMResponse):
                            try:
                                metadata[ask.key] = _keep(context, responses, asset_name, ask, outcome, config)
                                answers[ask.key] = outcome
                            except StoredResponseConflict as exc:
                                failures[ask.key] = dg.Failure(description=str(exc))
                            except StorageFull as exc:  # no answer can be stored: nothing more is asked
                                failures[ask.key] = dg.Failure(description=str(exc), metadata={STOPS_RUN: True})
                                stopped = True
                        else:
                            failures[ask.key] = _failure(responses, asset_name, ask, outcome)
                            if isinstance(outcome, LLMError):  # asked with its whole retry budget
                                asked[ask.key] = _asked_entry(ask, failures[ask.key], outcome)
                            stopped = stopped or _stops_the_batch(outcome)
                    finally:
                        if guard:  # only now that its answer is stored does the call stop counting as in flight
                            guard.settle(ask.key, _paid_provenance(outcome))
                        claims.release(ask)
                if stopped:
                    claims.leave(waiting)  # another run answers them; this step asks nothing more
                else:
                    pending, waiting = claims.wait(waiting)
        finally:
            if guard:
                guard.settle_all()
    parts_of = {ask.key: ask.parts for ask in to_call}
    for key, stored in claims.found.items():
        answers[key] = stored
        metadata[key] = _response_metadata(stored, responses.path(asset_name, parts_of[key]), reused=True)
    if claims.found:
        context.log.info(f"reusing {len(claims.found)} response(s) that another run paid for meanwhile")
    failures.update({key: dg.Failure(description=text) for key, text in claims.conflicts.items()})
    for key, owner in claims.held.items():
        failures[key] = dg.Failure(description=held_message(asset_name, key, owner, responses.claim_wait_s))

    if failures:
        not_asked = len(asks) - len(answers) - len(failures)
        raise _summary_failure(asset_name, failures, claims.held, len(answers), not_asked, asked)
    # Each answer's data version is the digest of its text: what is built from it (an evaluation
    # prompt quoting a generation) goes stale in Dagster only when the answer itself changes.
    versions = {a.key: content_digest(answers[a.key].text.encode("utf-8"))["response_sha256"] for a in asks}
    return partition_output(context, {a.key: answers[a.key] for a in asks}, metadata, versions)


def _complete_all(llm: LLMClientResource, asks: list[Ask], parallel: int, guard: SpendingGuard | None = None):
    """Yield (ask, LLMResponse | LLMError | SpendingCapReached) as answers arrive. After a permanent
    error (not just one bad answer), or a call the spending cap refused, no new call starts: the
    next ones would fail the same way, or be paid for nothing. A call the cap keeps out only while
    other calls are in flight waits for them."""
    if len(asks) <= 1 or parallel <= 1:
        for ask in asks:
            outcome = _admit(guard, ask, wait=True) or _call(llm, ask)
            yield ask, outcome
            if _stops_the_batch(outcome):
                return
        return
    pending = iter(asks)
    stop = False
    waiting: list[Ask] = []  # an ask the cap admits once one of this step's calls is paid for
    refused: list[tuple[Ask, SpendingCapReached]] = []
    with ThreadPoolExecutor(max_workers=min(parallel, len(asks)), thread_name_prefix="llm") as pool:
        in_flight: dict[Future, Ask] = {}

        def fill() -> None:
            nonlocal stop
            while not stop and len(in_flight) < parallel:
                ask = waiting.pop() if waiting else next(pending, None)
                if ask is None:
                    return
                refusal = _admit(guard, ask, wait=not in_flight)
                if refusal is not None and refusal.temporary and in_flight:
                    waiting.append(ask)
                    return
                if refusal is not None:
                    refused.append((ask, refusal))
                    stop = True
                    return
                in_flight[pool.submit(_call, llm, ask)] = ask

        fill()
        while in_flight or refused:
            while refused:
                yield refused.pop()
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                ask = in_flight.pop(future)
                outcome = future.result()
                stop = stop or _stops_the_batch(outcome)
                yield ask, outcome  # the caller stores the answer and ends its reservation
            fill()


def _admit(guard: SpendingGuard | None, ask: Ask, wait: bool) -> SpendingCapReached | None:
    """None when the call may start (its worst case is reserved), else the cap's refusal. With
    `wait`, a call kept out only by calls in flight in other processes waits for them."""
    if guard is None:
        return None
    try:
        if wait:
            guard.admit_when_room(ask.key, ask.request)
        else:
            guard.admit(ask.key, ask.request)
    except SpendingCapReached as refusal:
        return refusal
    return None


def _call(llm: LLMClientResource, ask: Ask) -> LLMResponse | Exception:
    # Any exception comes back as a value: raising here would abandon answers still in flight.
    try:
        return llm.complete(ask.request)
    except Exception as exc:  # noqa: BLE001
        return exc


def _stops_the_batch(outcome: LLMResponse | Exception) -> bool:
    return isinstance(outcome, Exception) and not isinstance(outcome, IncompleteResponseError)


def _keep(
    context: dg.AssetExecutionContext,
    responses: ResponseStore,
    asset_name: str,
    ask: Ask,
    response: LLMResponse,
    config: ResponseConfig,
) -> dict:
    """Store a new answer at once (the IO manager later finds it already there) and describe it."""
    metadata = _response_metadata(response, responses.path(asset_name, ask.parts), reused=False)
    # Only now that the new answer is here does a changed response make way for it.
    superseded = responses.supersede(asset_name, ask.parts) if config.replace_changed else None
    if superseded is not None:
        context.log.info(f"{ask.key}: moved the previous response to {superseded}")
        metadata["superseded_path"] = dg.MetadataValue.path(str(superseded))
    responses.keep(asset_name, ask.parts, response)
    return metadata


def _paid_provenance(outcome: LLMResponse | Exception) -> dict | None:
    """What a call that was answered says it cost (an answer kept aside was paid for too)."""
    if isinstance(outcome, LLMResponse):
        return outcome.provenance
    if isinstance(outcome, IncompleteResponseError):
        return outcome.response.provenance
    return None


def _failure(responses: ResponseStore, asset_name: str, ask: Ask, error: Exception) -> dg.Failure:
    if isinstance(error, SpendingCapReached):
        return dg.Failure(description=str(error), metadata={CAP_REACHED: True})
    if isinstance(error, IncompleteResponseError):
        return _incomplete(str(error), str(responses.keep_rejected(asset_name, ask.parts, error.response, str(error))))
    if isinstance(error, APIRefusedError):
        return dg.Failure(description=str(error), metadata={STOPS_RUN: True})
    if isinstance(error, LLMError):
        return dg.Failure(description=str(error))
    return dg.Failure(description=f"{ask.request.model_id}: the call failed unexpectedly: {type(error).__name__}: {error}")


def _asked_earlier(earlier: AskedEarlier) -> dg.Failure:
    if earlier.kept is not None:
        return _incomplete(earlier.reason, earlier.kept)
    return dg.Failure(description=earlier.reason, metadata={STOPS_RUN: True} if earlier.stops_run else {})


def _incomplete(reason: str, kept: str) -> dg.Failure:
    return dg.Failure(
        description=f"{reason} It is not stored as the response; it is kept for inspection at {kept}, "
        "and re-running the partition asks the model again.",
        metadata={"rejected_path": dg.MetadataValue.path(kept)},
    )


def _asked_entry(ask: Ask, failure: dg.Failure, error: LLMError) -> dict:
    """What a later run of this partition in the same command is told (ResponseConfig.asked_earlier)."""
    kept = failure.metadata.get("rejected_path")
    return {
        "request": ask.request.fingerprint_text(),
        "reason": str(error),
        "kept": kept.value if kept is not None else None,
        "stops_run": isinstance(error, APIRefusedError),
    }


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
