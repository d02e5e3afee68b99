"""Submitting the calls of missing partitions to a provider batch, so that nothing is paid twice.

For each partition: its request is built exactly as the response asset builds it (same prompt,
same fingerprint: the pure prompt functions over the task tables the assets read), then its claim
is taken (store/claims.py) as for a live call. Per model, the claimed requests go into files within
the provider's limits; for each file, in this order:

1. its worst case is checked against the spending cap and reserved (it counts until collected);
2. the ledger record is written, "intended", with the file's digest, under a new submission id
   (store/batch_ledger.py);
3. the file is uploaded and the batch created, with that submission id in the batch's metadata;
4. the record becomes "submitted" with the batch id, and every claim is extended to the batch's
   completion window with the batch id in it: a live run leaves these partitions to the batch
   (calls/claiming.py), a second submit skips them.

A SIGKILL between 2 and 4 leaves an "intended" record and claims with a short lease: the next
`daydream run --batch` (or the sensor) asks the provider for a batch carrying that id
(`reconcile`), and adopts it, or, when none was created, drops the record. A batch is never
created twice for one record, and a partition is never in two open batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ..analysis.budget import HOW_TO_RAISE, Price, unknown_spend_sentence, unpriced_sentence, worst_case_usd
from ..analysis.estimate import usd
from ..experiment.batch_choice import BatchChoice
from ..experiment.prompts import evaluation_prompts, generation_prompts
from ..experiment.settings import ExperimentSettings
from ..experiment.stages import EVALUATION, pair_key
from ..llm.batch_backend import BatchBackend, jsonl_line, split_lines
from ..llm.requests import LLMError, LLMRequest
from ..store.archive import Archive
from ..store.batch_ledger import BatchLedger, file_digest, submission_id
from ..store.claims import Claim, Claims, ClaimTimes, Held, Owner
from ..store.csv_tables import read_table
from ..store.layout import table_path, text_path
from ..store.reservations import in_flight, release_batch, reserve_batch, spending_lock
from ..store.spend import paid_tallies
from ..store.write_once import StoredResponseConflict, read_stored
from .claiming import Call
from .guard import spent_usd

# A batch claim outlives OpenAI's 24 h completion window, so a batch that is never collected
# (its ledger lost with a machine) frees its partitions for a live run a day later.
BATCH_LEASE_S = 25 * 3600.0
METADATA_KEY = "daydream_submission"


class BatchRefused(Exception):
    """Nothing of this submission was uploaded; str() is one sentence saying why."""


def generation_asks(config: ExperimentSettings, keys: Sequence[str]) -> list[Call]:
    """The request of each generation task in `keys`, as generation_response builds it."""
    root = Path(config.output_root)
    tasks = read_table(table_path(root, "generation_tasks")).drop_duplicates("generation_task_id")
    rows = {r["generation_task_id"]: r for r in tasks.to_dict("records") if r["generation_task_id"] in set(keys)}
    prompts = generation_prompts(
        rows, read_table(table_path(root, "content_combinations")), read_table(table_path(root, "generation_templates"))
    )
    return [Call(key, key, config.generation_request(rows[key], prompts[key].text)) for key in keys if key in rows]


def evaluation_asks(config: ExperimentSettings, pairs: pd.DataFrame) -> list[Call]:
    """The request of each pair (rows of evaluation_tasks) whose generation answer is stored and
    matches its sidecar, as evaluation_response builds it."""
    root = Path(config.output_root)
    rows, texts = {}, {}
    for row in pairs.to_dict("records"):
        g = row["generation_task_id"]
        if g not in texts:
            stored = read_stored(text_path(root, "generation_response", g))
            texts[g] = stored.data.decode("utf-8") if stored is not None and stored.mismatch is None else None
        if texts[g] is not None:
            rows[pair_key(g, row["evaluation_task_id"])] = row
    prompts = evaluation_prompts(rows, read_table(table_path(root, "evaluation_templates")), texts)
    return [
        Call(key, EVALUATION.parts(key),
            config.evaluation_request(row, prompts[key].text))
        for key, row in rows.items()
    ]


def request_record(request: LLMRequest) -> dict:
    return {
        "model_id": request.model_id,
        "model": request.model,
        "prompt": request.prompt,
        "temperature": float(request.temperature),
        "max_tokens": int(request.max_tokens),
        "replicate": int(request.replicate),
    }


def request_of(item: dict) -> LLMRequest:
    return LLMRequest(**item["request"])


def long_claims(store: Archive) -> Claims:
    short = store.claims().times
    return Claims(times=ClaimTimes(BATCH_LEASE_S, short.renew_s, short.wait_s, short.poll_s))


class Submitter:
    """Submits asks of one output root to a provider batch (see the module docstring)."""

    def __init__(
        self,
        backend: BatchBackend,
        store: Archive,
        choice: BatchChoice,
        prices: dict[str, Price],
        cap_usd: float | None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.root = Path(store.base_path)
        self.ledger = BatchLedger(store.base_path)
        self.ledger.refuse_remote()
        self.choice = choice
        self.prices = prices  # list prices; a batch's worst case is at its model's batch price
        self.cap = cap_usd
        self.log = log
        self.short = store.claims()
        self.long = long_claims(store)
        self.skipped: dict[str, str] = {}  # key -> why it was not submitted (stored answer to another request)
        # Set on a run that does not wait: the batched models and discounts the batches_collect sensor
        # uses to batch the evaluations of these generations once they are answered.
        self.then_evaluate: dict | None = None

    def submit(self, asset: str, asks: Sequence[Call]) -> list[dict]:
        """Submit every ask not stored, not held and not in an open batch; the new ledger records."""
        held = self.ledger.held_keys(asset)
        by_model: dict[tuple[str, str], list[Call]] = {}
        for ask in asks:
            if ask.key in held or ask.request.model_id not in self.choice.batched:
                continue
            try:
                if self.store.reusable(asset, ask.parts, ask.request, replace_changed=False) is not None:
                    continue
            except StoredResponseConflict as exc:
                self.skipped[ask.key] = str(exc)
                continue
            by_model.setdefault((ask.request.model_id, ask.request.model), []).append(ask)
        records = []
        for (model_id, model), group in by_model.items():
            claimed = {ask.key: (ask, claim) for ask, claim in self._claim(asset, group)}
            lines = [(key, jsonl_line(key, ask.request)) for key, (ask, _) in claimed.items()]
            try:
                files = split_lines(lines, self.backend.max_requests, self.backend.max_bytes)
            except LLMError as exc:
                self._release([claim for _, claim in claimed.values()])
                raise BatchRefused(str(exc)) from None
            for n, file_lines in enumerate(files):
                part = [claimed[key] for key, _ in file_lines]
                try:
                    records.append(self._submit_file(asset, model_id, model, part, b"".join(line for _, line in file_lines)))
                except BaseException:
                    self._release([claimed[key][1] for later in files[n + 1 :] for key, _ in later])
                    raise
        return records

    def _claim(self, asset: str, asks: list[Call]) -> list[tuple[Call, Claim]]:
        owner = Owner.here("batch submission")
        mine = []
        for ask in asks:
            subject = {"asset": asset, "partition": ask.key, "request": ask.request.fingerprint(), "batch": {"state": "submitting"}}
            claim = self.short.take(self.store.claim_path(asset, ask.parts), owner, subject)
            if isinstance(claim, Held):
                continue
            if self.store.path(asset, ask.parts).is_file():  # stored just before we claimed it
                self.short.release(claim)
                continue
            mine.append((ask, claim))
        return mine

    def _release(self, claims: list[Claim]) -> None:
        for claim in claims:
            self.short.release(claim)

    def _submit_file(self, asset: str, model_id: str, model: str, part: list[tuple[Call, Claim]], data: bytes) -> dict:
        sid = submission_id(data)
        factor = self.choice.factor(model_id)
        try:
            worst = self._reserve(sid, model_id, [ask.request for ask, _ in part])
        except BatchRefused:
            self._release([c for _, c in part])
            raise
        record = {
            "submission": sid,
            "state": "intended",
            "asset": asset,
            "model_id": model_id,
            "model": model,
            "price_factor": factor,
            "worst_usd": worst,
            "created": time.time(),
            "file_sha256": file_digest(data),
            "items": {ask.key: {"parts": ask.parts, "request": request_record(ask.request)} for ask, _ in part},
        }
        if self.then_evaluate and asset == "generation_response":
            record["then_evaluate"] = self.then_evaluate
        self.ledger.write(record)
        try:
            batch_id = self.backend.submit(model, {ask.key: ask.request for ask, _ in part}, {METADATA_KEY: sid})
        except LLMError as exc:
            self.ledger.write({**record, "state": "abandoned", "error": str(exc)})
            release_batch(self.root, sid)
            self._release([c for _, c in part])
            raise BatchRefused(str(exc)) from None
        record.update(state="submitted", batch_id=batch_id, submitted=time.time())
        self.ledger.write(record)
        self.extend([c for _, c in part], batch_id, sid)
        self.log(f"{asset}: submitted {len(part)} {model_id} request(s) as batch {batch_id}")
        return record

    def extend(self, claims: list[Claim], batch_id: str, sid: str) -> None:
        """Extend claims to the batch's window, naming the batch (a live run then leaves them to it)."""
        for claim in claims:
            claim.record = {**claim.record, "run_id": f"batch {batch_id}", "batch": {"id": batch_id, "submission": sid}}
            if not self.long.renew(claim):
                self.log(f"the claim at {claim.path} was taken over before batch {batch_id} was recorded in it")

    def _reserve(self, sid: str, model_id: str, requests: list[LLMRequest]) -> float | None:
        """Reserve the file's worst case at the batch price; BatchRefused when the cap forbids it."""
        price = self.prices.get(model_id)
        worst = None
        if price is not None:
            factor = self.choice.factor(model_id)
            price = (price[0] * factor, price[1] * factor)
            worst = sum(worst_case_usd(len(r.prompt), r.max_tokens, price, None) for r in requests)
        if self.cap is None:
            reserve_batch(self.root, sid, worst, model_id)
            return worst
        if worst is None:
            raise BatchRefused(unpriced_sentence([model_id]))
        with spending_lock(self.root):
            flights = in_flight(self.root)
            spent, unknown = spent_usd(paid_tallies(self.root), self.prices)
            if unknown:
                raise BatchRefused(unknown_spend_sentence(unknown, self.cap))
            flying = sum(r.worst_usd or 0.0 for r in flights)
            if spent + flying + worst > self.cap:
                flight = f" and {usd(flying)} in flight at worst case" if flying > 0 else ""
                raise BatchRefused(
                    f"spending cap reached: {usd(spent)} spent{flight}, and a batch of {len(requests)} {model_id} "
                    f"call(s) may cost up to {usd(worst)} at the batch price, which could pass the {usd(self.cap)} cap, "
                    f"so nothing was submitted; {HOW_TO_RAISE}."
                )
            reserve_batch(self.root, sid, worst, model_id)
        return worst


def reconcile(backend: BatchBackend, store: Archive, grace_s: float | None = None, log=lambda line: None) -> int:
    """Settle "intended" records older than a claim lease (their submitter died between writing the
    record and recording the batch): adopt the batch the provider has for them, or drop the record.
    Returns how many were adopted."""
    ledger, root = BatchLedger(store.base_path), Path(store.base_path)
    grace = store.claims().times.lease_s if grace_s is None else grace_s
    adopted = 0
    for record in ledger.open_records():
        if record.get("state") != "intended" or time.time() - record.get("created", 0) < grace:
            continue
        found = backend.find(METADATA_KEY, record["submission"])
        if found is None:
            ledger.write({**record, "state": "abandoned", "error": "the batch was never created (its submitter stopped)"})
            release_batch(root, record["submission"])
            continue
        record.update(state="submitted", batch_id=found.id, submitted=found.created_at or time.time())
        ledger.write(record)
        claims = long_claims(store)
        owner = Owner.here(f"batch {found.id}")
        for key, item in record["items"].items():
            subject = {"asset": record["asset"], "partition": key, "request": request_of(item).fingerprint(),
                       "batch": {"id": found.id, "submission": record["submission"]}}
            claims.take(store.claim_path(record["asset"], item["parts"]), owner, subject)
        log(f"adopted batch {found.id}: created before its submitter stopped, now recorded")
        adopted += 1
    return adopted
