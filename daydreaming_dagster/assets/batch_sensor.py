"""The `batches_collect` sensor: Dagster's way to wait hours for a provider batch.

Every tick looks at the open batches of the experiment's output root once (batch_collect.py). As
each finishes, its answers are stored and the sensor requests runs of exactly its partitions,
which materialize them from the stored answers without a call. A generation batch submitted by
`daydream run --batch` without --wait carries the run's choice of judges: when it finishes, the
sensor submits the evaluation pairs of the generations it answered as batches of their own, so
the experiment finishes in two rounds with no terminal open. Its tick history in the UI shows the
open batches and their progress."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ..analysis.budget import price_table
from ..analysis.usage import model_prices
from ..calls.batch_collect import Collected, look
from ..calls.batch_submit import BatchRefused, Submitter, evaluation_asks
from ..experiment.batch_choice import BatchChoice
from ..experiment.loaders import load_models
from ..llm.batch_backend import OpenAIBatchBackend
from ..resources.config import ExperimentConfig
from ..resources.llm import LLMClientResource
from ..store.archive import Archive
from ..store.batch_ledger import BatchLedger
from ..store.csv_tables import read_table
from ..store.layout import table_path
from .evaluation_sensor import pairs_request

GENERATION = [dg.AssetKey("generation_prompt"), dg.AssetKey("generation_response")]
EVALUATION = [dg.AssetKey("evaluation_prompt"), dg.AssetKey("evaluation_response")]


def collection_requests(seen: Collected) -> list[dg.RunRequest]:
    """One run per partition whose batch answer was just stored (evaluations: as pairs_request)."""
    requests = [
        dg.RunRequest(run_key=f"batch-answer:{key}", partition_key=key, asset_selection=GENERATION,
                      tags={"daydream/source": "batches_collect"})
        for key in seen.stored.get("generation_response", [])
    ]
    return requests + pairs_request(seen.stored.get("evaluation_response", []))


def submit_evaluations(seen: Collected, config: ExperimentConfig, store: Archive, backend, log) -> int:
    """Batch the evaluation pairs of the generations stored from batches that asked for it (one
    file per judge for all of them); how many requests were submitted."""
    stored, judges, discounts = set(), set(), {}
    for record in seen.finished:
        follow = record.get("then_evaluate")
        if record["asset"] == "generation_response" and follow:
            stored |= set(seen.stored.get("generation_response", [])) & set(record["items"])
            judges |= set(follow["judges"])
            discounts.update(follow["discounts"])
    if not stored:
        return 0
    pairs = read_table(table_path(Path(config.output_root), "evaluation_tasks"))
    choice = BatchChoice(frozenset(judges), discounts)
    prices = price_table(model_prices(load_models(config.raw_dir)))
    submitter = Submitter(backend, store, choice, prices, config.max_cost_usd, log)
    records = submitter.submit("evaluation_response", evaluation_asks(config, pairs[pairs["generation_task_id"].isin(stored)]))
    return sum(len(r["items"]) for r in records)


def build_batch_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="batches_collect",
        asset_selection=[*GENERATION, *EVALUATION],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Polls the open provider batches (daydream run --batch); as each finishes, stores its "
        "answers and requests runs of exactly its partitions, which reuse them without a call.",
    )
    def batches_collect(context: dg.SensorEvaluationContext, llm: LLMClientResource, experiment_config: ExperimentConfig):
        if not BatchLedger(experiment_config.output_root).open_records():
            return dg.SkipReason("no open batch")
        store = Archive.at(experiment_config.output_root)
        backend = OpenAIBatchBackend(llm.api_key, llm.base_url)
        try:
            seen = look(backend, store, context.log.info)
            try:
                submitted = submit_evaluations(seen, experiment_config, store, backend, context.log.info)
            except BatchRefused as exc:
                context.log.warning(f"the evaluations of the collected generations were not submitted: {exc}")
                submitted = 0
        finally:
            backend.close()
        requests = collection_requests(seen)
        if requests:
            return requests
        done, total = seen.requests_open
        more = f"; submitted {submitted} evaluation request(s)" if submitted else ""
        return dg.SkipReason(f"{len(seen.open)} batch(es) open, {done}/{total} request(s) done{more}")

    return batches_collect
