"""A response step that submits its calls to a provider batch instead of making them: what a UI
backfill (or any Dagster run) of generation_response / evaluation_response does with the run tag
`daydream/batch=true`, or with `batch: true` in the response asset's run config.

The calls the step would have made go to one batch per model (at the batch price, under the
spending cap at their worst case, claimed by the batch: see batch_submit.py); none is asked live.
The step then fails with one sentence saying so, since its partitions have no answer yet: the
`batches_collect` sensor (or `daydream run --batch`) stores the answers when the batch finishes
and runs exactly those partitions again, which then reuse them without a call."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ..analysis.budget import price_table
from ..analysis.usage import model_prices
from ..calls.batch_submit import BatchRefused, Submitter
from ..calls.claiming import Call
from ..calls.guard import effective_cap
from ..experiment.batch_choice import choose
from ..experiment.errors import ExperimentError
from ..experiment.loaders import load_models
from ..llm.batch_backend import OpenAIBatchBackend
from ..llm.requests import LLMError
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource
from ..resources.response_store import ResponseStore

BATCH_TAG = "daydream/batch"


def batch_requested(context: dg.AssetExecutionContext, config_batch: bool) -> bool:
    """Whether this run asks for batch mode (run config `batch`, or the run tag)."""
    return config_batch or context.run.tags.get(BATCH_TAG, "").strip().lower() in ("true", "1", "yes")


def submit_from_step(
    context: dg.AssetExecutionContext,
    llm: LLMClientResource,
    responses: ResponseStore,
    calls: Sequence[Call],
    run_cap: float | None,
) -> dg.Failure:
    """Submit the calls to provider batches; the Failure that ends the step (one sentence)."""
    asset_name = context.asset_key.path[-1]
    if llm.backend != "openai":
        return dg.Failure(description=f"the {llm.backend} backend has no batch API; run without the {BATCH_TAG} tag.")
    experiment_config: ExperimentConfig = context.resources.experiment_config
    backend = OpenAIBatchBackend(llm.api_key, llm.base_url)
    try:
        models = load_models(experiment_config.raw_dir)
        choice = choose(models, True, {a.request.model_id for a in calls})
        prices = price_table(model_prices(models))
        backend.check_ready()
        submitter = Submitter(backend, responses.archive(), choice, prices, effective_cap(run_cap, experiment_config.max_cost_usd, llm.backend == "offline"), context.log.info)
        records = submitter.submit(asset_name, calls)
    except (ExperimentError, LLMError, BatchRefused) as exc:
        return dg.Failure(description=str(exc))
    finally:
        backend.close()
    submitted = sum(len(r["items"]) for r in records)
    ids = ", ".join(r["batch_id"] for r in records) or "none"
    left = len(calls) - submitted
    others = f"; {left} were already held by another run or batch" if left else ""
    return dg.Failure(
        description=f"{submitted} {asset_name} partition(s) were submitted to provider batch(es) {ids} at the batch "
        f"price, none asked live{others}; turn on the batches_collect sensor (or run `daydream run --batch`) to store "
        "their answers and materialize them when the batches finish.",
        metadata={"batch_ids": dg.MetadataValue.json([r["batch_id"] for r in records]), "submitted": submitted},
    )
