"""What an output root has paid (store/spend.py), the calls in flight (store/reservations.py) and the
guard that admits a call under the spending cap (calls/guard.py), on real files and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daydreaming_dagster.calls import guard as budget
from daydreaming_dagster.calls.guard import SpendingCapReached, SpendingGuard
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.reservations import in_flight, release, reserve
from daydreaming_dagster.store.spend import PaidLedger, paid_tallies
from daydreaming_dagster.store.write_once import keep_rejected, move_aside, write_response_once


def provenance(model_id: str, prompt: int, completion: int, cost: float | None = None, chars: int | None = None) -> dict:
    return {
        "backend": "openai", "model_id": model_id, "model": f"x/{model_id}", "temperature": 0.0,
        "max_tokens": 100, "prompt_sha256": "0" * 64, "prompt_tokens": prompt, "completion_tokens": completion,
        "provider_cost_usd": cost, "prompt_chars": chars,
    }  # fmt: skip


def store(root: Path, asset: str, parts, model_id: str, prompt: int, completion: int, **kw) -> Path:
    path = text_path(root, asset, parts)
    write_response_once(path, f"answer of {parts}", provenance(model_id, prompt, completion, **kw))
    return path


def test_the_ledger_sums_stored_superseded_and_rejected_answers_and_sees_new_ones(tmp_path):
    pair = {"generation_tasks": "g1", "evaluation_tasks": "m1"}
    first = store(tmp_path, "generation_response", "g1", "gen", 10, 20, cost=0.5, chars=40)
    move_aside(first)  # superseded: still paid for
    store(tmp_path, "generation_response", "g1", "gen", 12, 22, chars=60)
    keep_rejected(text_path(tmp_path, "evaluation_response", pair), "cut", provenance("judge", 30, 5), "truncated")
    ledger = PaidLedger(tmp_path)

    tallies = ledger.tallies()

    gen = tallies[("generation_response", "gen", "openai")]
    assert (gen.calls, gen.prompt_tokens, gen.completion_tokens) == (2, 22, 42)
    assert (gen.provider_cost_usd, gen.calls_with_provider_cost) == (0.5, 1)
    assert (gen.unreported_calls, gen.unreported_prompt_tokens, gen.unreported_completion_tokens) == (1, 12, 22)
    assert gen.min_chars_per_token == pytest.approx(4.0)
    judge = tallies[("evaluation_response", "judge", "openai")]
    assert (judge.calls, judge.prompt_tokens, judge.unreported_calls) == (1, 30, 1)

    # An answer stored after the ledger last looked is counted the next time, moved ones once.
    store(tmp_path, "evaluation_response", pair, "judge", 40, 6)
    (tmp_path / "4_evaluation" / "evaluation_response" / "g2").mkdir()
    (tmp_path / "4_evaluation" / "evaluation_response" / "g2" / "m1.json").write_text("{not json")
    tallies = ledger.tallies()
    assert tallies[("evaluation_response", "judge", "openai")].calls == 2
    assert tallies[("generation_response", "gen", "openai")].calls == 2
    damaged = tallies[("evaluation_response", "unknown", "unknown")]
    assert (damaged.calls, damaged.unreported_without_usage) == (1, 1)  # a paid answer of unknown cost
    assert paid_tallies(tmp_path) == tallies


HOLD = """
import sys
from daydreaming_dagster.store.reservations import reserve
r = reserve(sys.argv[1], 0.25, "judge", "a pair")
print(r.path, flush=True)
sys.stdin.read()
"""


def test_a_reservation_counts_while_its_process_lives_and_is_dropped_once_it_died(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        path = Path(holder.stdout.readline().strip())
        [flight] = in_flight(tmp_path)
        assert (flight.worst_usd, flight.model_id, flight.pid) == (0.25, "judge", holder.pid)
        assert flight.path == path
    finally:
        holder.kill()
        holder.wait()

    assert in_flight(tmp_path) == []
    assert not path.exists()  # a dead process's reservation is removed


def test_a_reservation_left_half_written_by_a_dead_process_is_dropped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / ".spend" / "in_flight"
    folder.mkdir(parents=True)
    (folder / f"{dead.stdout.strip()}-abc.json").write_text("")
    assert in_flight(tmp_path) == []
    assert list(folder.iterdir()) == []


def request(model_id: str, prompt_chars: int = 100, max_tokens: int = 100) -> LLMRequest:
    return LLMRequest(model_id, f"x/{model_id}", "p" * prompt_chars, 0.0, max_tokens)


def worst(prompt_chars: int = 100, max_tokens: int = 100) -> float:
    """At (1, 2) USD per million tokens: a prompt at 2 chars per token plus 8, and max_tokens out."""
    return ((prompt_chars / 2 + 8) * 1 + max_tokens * 2) / 1e6


def test_the_guard_admits_a_call_only_if_spent_plus_in_flight_plus_its_worst_case_fit(tmp_path):
    store(tmp_path, "generation_response", "g1", "gen", 1000, 1000, cost=0.001)  # $0.001 spent
    prices = {"gen": (1.0, 2.0)}
    cap = 0.001 + 2 * worst() + 0.00002  # room for two calls in flight, not three
    guard = SpendingGuard(cap, tmp_path, prices)
    other = SpendingGuard(cap, tmp_path, prices)  # another step (another process sees the same files)

    guard.admit("a", request("gen"))
    other.admit("b", request("gen"))
    with pytest.raises(SpendingCapReached) as refused:
        guard.admit("c", request("gen"))
    assert str(refused.value) == (
        "spending cap reached: $0.00100 spent and $0.000516 in flight at worst case, and a gen call may cost "
        "up to $0.000258, which could pass the $0.00154 cap, so it was not started; raise the cap to continue "
        "(`daydream run --max-cost USD`, max_cost_usd in 1_raw/experiment.toml, or max_cost_usd in the response "
        "asset's run config)."
    )
    assert len(in_flight(tmp_path)) == 2

    # b's answer arrives and is stored (for less than its worst case); then its reservation goes.
    store(tmp_path, "generation_response", "g2", "gen", 10, 10, cost=0.00001)
    other.settle("b")
    guard.admit("c", request("gen"))
    assert len(in_flight(tmp_path)) == 2
    guard.settle_all()
    assert in_flight(tmp_path) == []


def test_the_guard_refuses_what_it_cannot_bound(tmp_path):
    guard = SpendingGuard(10.0, tmp_path, {"gen": (1.0, 2.0)})
    assert guard.unbounded([request("gen"), request("mystery")]).startswith("mystery has no price in llm_models.csv")
    with pytest.raises(SpendingCapReached, match="^mystery has no price"):
        guard.admit("a", request("mystery"))

    # A paid answer of a model without a price (and no reported cost) makes the spent total unknown.
    store(tmp_path, "generation_response", "g1", "old-model", 10, 10)
    with pytest.raises(SpendingCapReached, match="^paid answers of old-model have no known cost"):
        guard.admit("a", request("gen"))
    assert in_flight(tmp_path) == []

    # So does a call in flight elsewhere whose worst case is unknown.
    elsewhere = SpendingGuard(10.0, tmp_path / "other-root", {"gen": (1.0, 2.0)})
    held = reserve(tmp_path / "other-root", None, "other-model", "elsewhere")
    with pytest.raises(SpendingCapReached, match="^other-model has no price"):
        elsewhere.admit("a", request("gen"))
    release(held)
    elsewhere.admit("a", request("gen"))


ANOTHER_PROCESS = """
import sys
from daydreaming_dagster.calls.guard import SpendingGuard
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.store.layout import text_path
from daydreaming_dagster.store.write_once import write_response_once
root, cap, cost = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
guard = SpendingGuard(cap, root, {"gen": (1.0, 2.0)})
guard.admit("g9", LLMRequest("gen", "x/gen", "p" * 100, 0.0, 100))
provenance = {"backend": "openai", "model_id": "gen", "prompt_tokens": 50, "completion_tokens": 100, "provider_cost_usd": cost}
write_response_once(text_path(root, "generation_response", "g9"), "an answer", provenance)
guard.settle("g9")
"""


def test_a_call_another_process_paid_since_the_last_full_count_is_never_overlooked(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "FULL_COUNT_EVERY_S", 3600.0)  # however slowly the other process starts
    w, paid = worst(), 0.9 * worst()
    cap = 2 * w + paid / 2  # our two calls fit alone, not with the other process's answer as well
    guard = SpendingGuard(cap, tmp_path, {"gen": (1.0, 2.0)})
    guard.admit("a1", request("gen"))  # a full count: nothing paid yet

    done = subprocess.run([sys.executable, "-c", ANOTHER_PROCESS, str(tmp_path), "100", str(paid)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert in_flight(tmp_path)[0].what == "a1"  # the other call came and went between our two checks

    with pytest.raises(SpendingCapReached, match=r"^spending cap reached: \$0\.000232 spent and \$0\.000258 in flight"):
        guard.admit("a2", request("gen"))
    guard.settle_all()


def test_a_call_kept_out_only_by_another_process_in_flight_waits_for_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        holder.stdout.readline()  # it holds $0.25 in flight
        guard = SpendingGuard(0.3, tmp_path, {"gen": (1.0, 2.0)})
        with pytest.raises(SpendingCapReached) as refused:
            guard.admit("a", request("gen", max_tokens=100_000))  # $0.2: fits only once the other call is over
        assert refused.value.temporary
        with pytest.raises(SpendingCapReached) as never:
            guard.admit_when_room("b", request("gen", max_tokens=200_000))  # $0.4: never fits, no waiting
        assert not never.value.temporary

        def other_call_ends() -> None:
            holder.stdin.close()  # its process exits (and is reaped: a zombie still counts as alive)
            holder.wait()

        threading.Timer(1.0, other_call_ends).start()
        started = time.monotonic()
        guard.admit_when_room("a", request("gen", max_tokens=100_000), timeout_s=60)
        assert time.monotonic() - started >= 0.9
    finally:
        holder.kill()
        holder.wait()
    [mine] = in_flight(tmp_path)
    assert mine.what == "a"
