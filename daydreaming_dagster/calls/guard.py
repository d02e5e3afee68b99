"""The spending cap, applied before each paid call.

The cap is `max_cost_usd` of the experiment (1_raw/experiment.toml), unless the run names one of its
own (`daydream run --max-cost`, or the response asset's run config), which overrides it: that rule
is `effective_cap`, the only place it is written. It bounds everything paid under the output root:
a call starts only if the spent total (the stored answers' provenance, see store/spend.py), the
calls in flight in every process at their worst case (store/reservations.py) and this call's worst
case together stay within it. The offline backend pays nothing and is never capped."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..analysis.budget import (
    answer_cost,
    cap_sentence,
    paid_cost,
    price_table,
    unknown_spend_sentence,
    unpriced_sentence,
    worst_case_usd,
)
from ..analysis.usage import model_prices
from ..experiment.loaders import load_models
from ..llm.requests import LLMRequest
from ..store.reservations import (
    Reservation,
    admissions_end,
    admissions_since,
    in_flight,
    record_excess,
    release,
    reserve,
    spending_lock,
)
from ..store.roots import data_path
from ..store.spend import Tally, paid_tallies


class SpendingCapReached(Exception):
    """A call was not started because of the spending cap; str() is one sentence. `temporary`: it
    would fit once the calls now in flight are paid for (they cost at most their worst case)."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


def effective_cap(run_cap: float | None, experiment_cap: float | None, offline: bool = False) -> float | None:
    """The cap that applies: the run's own when it names one, else the experiment's; None offline
    (nothing is paid) or when neither sets one."""
    if offline:
        return None
    return run_cap if run_cap is not None else experiment_cap


def spent_usd(tallies: dict[tuple[str, str, str], Tally], prices) -> tuple[float, list[str]]:
    """The total paid under an output root, and the models whose paid answers have an unknown cost."""
    total, unknown = 0.0, []
    for (_, model_id, backend), t in tallies.items():
        cost = paid_cost(
            model_id,
            backend,
            t.provider_cost_usd,
            t.unreported_calls,
            t.unreported_prompt_tokens,
            t.unreported_completion_tokens,
            t.unreported_without_usage,
            prices,
        )
        if cost is None:
            unknown.append(model_id)
        else:
            total += cost
    return total, unknown


def min_chars_per_token(tallies: dict[tuple[str, str, str], Tally]) -> dict[str, float]:
    """The fewest prompt characters per token any paid answer of each model showed."""
    out: dict[str, float] = {}
    for (_, model_id, _), t in tallies.items():
        if t.min_chars_per_token:
            out[model_id] = min(out.get(model_id, math.inf), t.min_chars_per_token)
    return out


# A full count reads every folder of paid answers (~5 ms per 1,000 generations); between full
# counts a process bounds the total by its last count plus the worst cases admitted since, which
# only overestimates (an answer costs at most its worst case at list prices). It counts in full
# when that bound leaves no room, and at least this often, so prices a provider reports above the
# list and answers paid by processes without a cap show up soon.
FULL_COUNT_EVERY_S = 10.0


@dataclass(frozen=True)
class _Count:
    total: float  # paid + in flight at worst case, when counted
    log_offset: int  # the admissions log's end then
    min_chars_per_token: dict[str, float]
    at: float  # time.monotonic()


_LAST_COUNT: dict[tuple, _Count] = {}
# How long a call waits for calls in flight elsewhere to make room under the cap: longer than one
# call with all its retries (6 attempts of up to 120 s, and the waits between them).
WAIT_FOR_ROOM_S = 1200.0


class SpendingGuard:
    """Admits each call of a step under the cap, holding a reservation while it is in flight."""

    def __init__(self, cap_usd: float, output_root: Path | str, prices: dict) -> None:
        self.cap = float(cap_usd)
        self.root = data_path(output_root)
        self.prices = prices
        self._held: dict[str, Reservation] = {}
        self._count_key = (self.root.resolve(), tuple(sorted(prices.items())))

    @classmethod
    def for_run(cls, experiment, run_cap: float | None, offline: bool = False) -> "SpendingGuard | None":
        """The guard of a run with `run_cap` (None: the experiment's cap), or None when no cap
        applies. Raises ExperimentError for an unreadable llm_models.csv."""
        cap = effective_cap(run_cap, experiment.max_cost_usd, offline)
        return None if cap is None else cls.for_experiment(cap, experiment)

    @classmethod
    def for_experiment(cls, cap_usd: float, experiment) -> "SpendingGuard":
        """The guard of `cap_usd` over the experiment's output root, at its llm_models.csv prices
        (`experiment`: an ExperimentConfig or the Dagster-free ExperimentSettings)."""
        prices = price_table(model_prices(load_models(experiment.raw_dir)))
        return cls(cap_usd, experiment.output_root, prices)

    def unbounded(self, requests: Iterable[LLMRequest]) -> str | None:
        """The sentence refusing the step when a model it calls has no price, else None."""
        unpriced = {r.model_id for r in requests if r.model_id not in self.prices}
        return unpriced_sentence(unpriced) if unpriced else None

    def admit(self, key: str, request: LLMRequest) -> None:
        """Reserve the call's worst case, or raise SpendingCapReached when it does not fit."""
        price = self.prices.get(request.model_id)
        if price is None:
            raise SpendingCapReached(unpriced_sentence([request.model_id]))
        with spending_lock(self.root):
            count = self._recent_count()
            if count is not None:
                bound, ratios = count
                worst = worst_case_usd(len(request.prompt), request.max_tokens, price, ratios.get(request.model_id))
                if bound + worst <= self.cap:
                    self._held[key] = reserve(self.root, worst, request.model_id, key)
                    return
            self._admit_after_full_count(key, request, price)

    def _recent_count(self) -> tuple[float, dict[str, float]] | None:
        """An upper bound of what is paid and in flight now, from this process's last full count and
        the worst cases admitted since (see admissions_since); None when a full count is due."""
        last = _LAST_COUNT.get(self._count_key)
        if last is None or time.monotonic() - last.at > FULL_COUNT_EVERY_S:
            return None
        since, _ = admissions_since(self.root, last.log_offset)
        if math.isnan(since):
            return None
        return last.total + since, last.min_chars_per_token

    def _admit_after_full_count(self, key: str, request: LLMRequest, price) -> None:
        flights = in_flight(self.root)  # first the calls in flight, then what they stored
        tallies = paid_tallies(self.root)
        log_offset = admissions_end(self.root)
        spent, unknown = spent_usd(tallies, self.prices)
        if unknown:
            raise SpendingCapReached(unknown_spend_sentence(unknown, self.cap))
        unbounded = sorted({r.model_id for r in flights if r.worst_usd is None})
        if unbounded:
            raise SpendingCapReached(unpriced_sentence(unbounded))
        flying = sum(r.worst_usd for r in flights)
        ratios = min_chars_per_token(tallies)
        _LAST_COUNT[self._count_key] = _Count(spent + flying, log_offset, ratios, time.monotonic())
        worst = worst_case_usd(len(request.prompt), request.max_tokens, price, ratios.get(request.model_id))
        if spent + flying + worst > self.cap:
            sentence = cap_sentence(request.model_id, worst, spent, flying, self.cap)
            raise SpendingCapReached(sentence, temporary=spent + worst <= self.cap)
        self._held[key] = reserve(self.root, worst, request.model_id, key)

    def admit_when_room(self, key: str, request: LLMRequest, timeout_s: float | None = None) -> None:
        """`admit`, waiting while only calls in flight (in other processes) keep the call out: they
        end within minutes, and what they cost is known then."""
        deadline = time.monotonic() + (WAIT_FOR_ROOM_S if timeout_s is None else timeout_s)
        pause = 0.2
        while True:
            try:
                return self.admit(key, request)
            except SpendingCapReached as refusal:
                if not refusal.temporary or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def settle(self, key: str, provenance: dict | None = None) -> None:
        """The call of `key` is over and its answer, if any, is stored (`provenance`: what it says it
        cost). An answer that cost more than its reserved worst case (a provider that billed past
        the limits it was asked with) records the excess where every process's bound counts it, so
        the cap stops the next calls once the actual spend has passed it."""
        reservation = self._held.pop(key, None)
        if reservation is None:
            return
        cost = answer_cost(provenance, self.prices.get(reservation.model_id)) if provenance else None
        if cost is not None and reservation.worst_usd is not None and cost > reservation.worst_usd:
            with spending_lock(self.root):
                record_excess(self.root, cost - reservation.worst_usd)
        release(reservation)

    def settle_all(self) -> None:
        for key in list(self._held):
            self.settle(key)
