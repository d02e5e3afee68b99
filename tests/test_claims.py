"""Claims on paid calls: the conditional file operations, leases and takeovers, real processes
racing for one claim, and the response assets waiting for, reusing or taking over claimed calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.resources.io_managers import read_table
from daydreaming_dagster.resources.response_store import ResponseStore
from daydreaming_dagster.runner.executor.worker import failure_text
from daydreaming_dagster.store.archive import Archive
from daydreaming_dagster.store.claims import (
    Claim,
    Claims,
    ClaimTimes,
    Held,
    LocalClaimFiles,
    Owner,
)
from daydreaming_dagster.store.heartbeat import Heartbeat
from daydreaming_dagster.store.layout import claim_path, table_path, text_path
from daydreaming_dagster.store.roots import StorageFull
from daydreaming_dagster.store.write_once import write_response_once
from tests.openai_server import status, truncated
from tests.pipeline import REPLACE_CHANGED
from tests.test_batches import GENERATION, generation_order

REPO = Path(__file__).resolve().parents[1]
ALIVE = Owner("other-host", 4242, "run-of-the-other")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def claims_left(root: Path) -> list[Path]:
    return sorted(root.rglob("*.claim.json"))


# --------------------------------------------------------------------------- the conditional operations


def test_local_claim_files_create_once_and_replace_or_delete_only_the_version_they_read(tmp_path):
    files = LocalClaimFiles()
    path = tmp_path / "folder" / ".task.claim.json"

    first = files.create(path, b"one")
    assert first is not None and files.create(path, b"two") is None
    assert files.read(path) == (b"one", first)

    assert files.replace(path, b"three", "not-the-version") is None
    second = files.replace(path, b"three", first)
    assert second is not None and second != first and path.read_bytes() == b"three"
    assert files.delete(path, first) is False  # a stale version deletes nothing
    assert files.delete(path, second) is True
    assert files.read(path) is None and files.replace(path, b"x", second) is None
    assert sorted(p.name for p in path.parent.iterdir()) == []  # no temp file left behind


# --------------------------------------------------------------------------- leases


def test_a_live_claim_is_held_an_expired_one_is_taken_over_and_its_old_owner_can_neither_renew_nor_release_it(
    tmp_path,
):
    clock = Clock()
    claims = Claims(times=ClaimTimes(lease_s=60, renew_s=15), clock=clock)
    path = tmp_path / ".task.claim.json"
    dead, me = Owner("lost-host", 111, "run-a"), Owner("this-host", 222, "run-b")

    theirs = claims.take(path, dead, {"asset": "generation_response", "partition": "task"})
    assert isinstance(theirs, Claim) and theirs.took_over is None
    held = claims.take(path, me, {"asset": "generation_response", "partition": "task"})
    assert isinstance(held, Held)
    assert held.owner == "pid 111 on host lost-host (run run-a)"

    clock.now += 50
    assert claims.renew(theirs)  # renewed in time: good for another 60 s
    clock.now += 50
    assert isinstance(claims.take(path, me, {}), Held)

    clock.now += 11  # 61 s after the last renewal: the lease ran out
    mine = claims.take(path, me, {"partition": "task"})
    assert isinstance(mine, Claim)
    assert (mine.took_over["host"], mine.took_over["pid"], mine.took_over["run_id"]) == ("lost-host", 111, "run-a")
    record = json.loads(path.read_text())
    assert (record["host"], record["pid"], record["run_id"]) == ("this-host", 222, "run-b")
    assert record["expires_at"] == clock.now + 60

    assert not claims.renew(theirs) and not claims.release(theirs)  # the old owner woke up: too late
    assert json.loads(path.read_text())["run_id"] == "run-b"
    assert claims.release(mine) and not path.exists()


def test_an_unreadable_claim_is_taken_over(tmp_path):
    path = tmp_path / ".task.claim.json"
    path.write_text('{"host": "half-writ')

    claim = Claims().take(path, Owner("h", 1, "r"), {})

    assert isinstance(claim, Claim) and claim.took_over == {}


def test_the_heartbeat_keeps_a_claim_alive_past_its_lease_and_releases_it_on_close(tmp_path):
    # Renewed every 0.15 s, a lease of 1 s leaves 0.85 s for a renewal a loaded machine delays.
    claims = Claims(times=ClaimTimes(lease_s=1.0, renew_s=0.15))
    path = tmp_path / ".task.claim.json"
    claim = claims.take(path, Owner("h", 1, "r"), {})
    heartbeat = Heartbeat(claims)
    heartbeat.add(claim)

    time.sleep(2.5)  # more than two leases
    assert isinstance(claims.take(path, ALIVE, {}), Held)
    assert claims.holder(path) is not None

    heartbeat.close()
    assert not path.exists()


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"DAYDREAM_CLAIM_LEASE_S": "soon"}, "DAYDREAM_CLAIM_LEASE_S is 'soon'; give a number of seconds."),
        ({"DAYDREAM_CLAIM_RENEW_S": "90"}, "renewal interval (90 s) must be positive and shorter than its lease (60 s)"),
    ],
)
def test_bad_claim_times_fail_with_one_sentence(environ, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ClaimTimes.from_env(environ)
    assert ClaimTimes.from_env({"DAYDREAM_CLAIM_WAIT_S": "5"}).wait_s == 5.0


# --------------------------------------------------------------------------- processes racing for one claim

RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from daydreaming_dagster.store.claims import Claim, Claims, ClaimTimes, Owner

    path, start = Path(sys.argv[1]), float(sys.argv[2])
    claims = Claims(times=ClaimTimes(lease_s=float(sys.argv[3]), renew_s=0.01))
    time.sleep(max(0.0, start - time.time()))
    won = isinstance(claims.take(path, Owner("h", os.getpid(), "r"), {}), Claim)
    print(json.dumps({"won": won}))
    """
)


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "expired"])
def test_of_processes_racing_for_one_claim_exactly_one_wins(tmp_path, expired):
    path = tmp_path / ".task.claim.json"
    if expired:  # a dead owner's claim: every racer tries to take it over at once
        Claims(times=ClaimTimes(lease_s=0.02, renew_s=0.01)).take(path, Owner("dead", 1, "r0"), {})
        time.sleep(0.05)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time() + 1.5  # every racer has imported and waits for the same instant
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(path), str(start), "60"], stdout=subprocess.PIPE, env=env)
        for _ in range(8)
    ]
    outcomes = [json.loads(p.communicate(timeout=60)[0]) for p in racers]

    assert sum(o["won"] for o in outcomes) == 1
    assert json.loads(path.read_text())["pid"] in {p.pid for p in racers}


# --------------------------------------------------------------------------- the response assets and claims


def short_claims(pipeline, wait_s: float = 20.0, lease_s: float = 30.0) -> ResponseStore:
    store = ResponseStore(
        base_path=str(pipeline.root), claim_lease_s=lease_s, claim_renew_s=lease_s / 4, claim_wait_s=wait_s,
        claim_poll_s=0.05,
    )
    pipeline.resources["responses"] = store
    return store


def claim_of(pipeline, key: str) -> Path:
    return claim_path(pipeline.response_path(key))


def request_of(pipeline, key: str) -> LLMRequest:
    """The request generation_response makes for `key` (what the other run's answer must match)."""
    task = read_table(table_path(pipeline.root, "generation_tasks")).set_index("generation_task_id").loc[key]
    prompt = text_path(pipeline.root, "generation_prompt", key).read_text()
    return LLMRequest(task["generation_model_id"], task["generation_model"], prompt, 0.5, 300)


def hold(path: Path, owner: Owner = ALIVE, lease_s: float = 600.0) -> Claim:
    return Claims(times=ClaimTimes(lease_s=lease_s, renew_s=lease_s / 4)).take(path, owner, {})


def test_a_run_waits_for_the_live_owner_of_a_claim_and_reuses_its_answer_without_paying(pipeline, openai_server):
    short_claims(pipeline)
    key = pipeline.generation_keys()[0]
    assert pipeline.materialize(["generation_prompt"], key).success
    hold(claim_of(pipeline, key))

    def the_other_run_answers() -> None:
        time.sleep(1.0)
        response = pipeline.response_path(key)
        write_response_once(response, "The other run's answer.", {**request_of(pipeline, key).fingerprint()})
        Claims().release(Claim(claim_path(response), {}, LocalClaimFiles().read(claim_path(response))[1]))

    other = threading.Thread(target=the_other_run_answers)
    other.start()
    result = pipeline.generate(key)
    other.join()

    assert result.success, failure_text(result)
    assert openai_server.requests == []
    assert pipeline.response_path(key).read_text() == "The other run's answer."
    assert pipeline.response_metadata("generation_response", key)["reused"] is True
    assert claims_left(pipeline.root) == []


def test_a_live_owner_past_the_wait_bound_fails_the_partition_naming_it_and_nothing_is_paid(pipeline, openai_server):
    short_claims(pipeline, wait_s=0.5)
    key = pipeline.generation_keys()[0]
    held = hold(claim_of(pipeline, key))

    result = pipeline.generate(key)

    assert not result.success
    assert failure_text(result) == (
        f"generation_response partition '{key}' is being asked of the model by pid 4242 on host other-host "
        "(run run-of-the-other), which still held its claim after 0.5 s of waiting; it is not paid for twice, "
        "and re-running this partition once that run has finished reuses its answer."
    )
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    held_elsewhere = failure.step_failure_data.user_failure_data.metadata["held_elsewhere"].value
    assert held_elsewhere == {key: "pid 4242 on host other-host (run run-of-the-other)"}
    assert openai_server.requests == []
    assert claim_of(pipeline, key).read_bytes() == LocalClaimFiles().read(held.path)[0]  # untouched


def test_a_dead_owners_claim_is_taken_over_after_its_lease_and_the_takeover_names_it(pipeline, openai_server):
    short_claims(pipeline)
    key = pipeline.generation_keys()[0]
    hold(claim_of(pipeline, key), Owner("lost-host", 999, "run-killed"), lease_s=0.3)
    time.sleep(0.4)

    result = pipeline.generate(key)

    assert result.success, failure_text(result)
    assert len(openai_server.requests) == 1
    logs = [e.user_message for e in pipeline.instance.all_logs(result.run_id)]
    assert any(
        f"{key}: took over the claim of pid 999 on host lost-host (run run-killed)" in line for line in logs
    ), logs
    assert claims_left(pipeline.root) == []


def test_a_claim_left_beside_a_stored_answer_by_a_kill_is_reused_or_named_truthfully_when_replaced(
    pipeline, openai_server
):
    """A process SIGKILLed between storing its answer and letting go of its claim leaves an expired
    claim beside the answer. A run of the same request reuses the answer; a --replace-changed run
    of a changed request takes the claim over and says why it asks again: the answer stored is to
    an earlier version of the request (not that none was ever stored)."""
    short_claims(pipeline)
    key = pipeline.generation_keys()[0]
    assert pipeline.generate(key).success
    hold(claim_of(pipeline, key), Owner("lost-host", 999, "run-killed"), lease_s=0.3)
    time.sleep(0.4)

    assert pipeline.generate(key).success
    assert len(openai_server.requests) == 1  # reused beside the dead claim

    template = pipeline.root / "1_raw" / "generation_templates" / "gen-a.txt"
    template.write_text(template.read_text() + "Be bold.\n")
    pipeline.tables()
    replaced = pipeline.generate(key, REPLACE_CHANGED)

    assert replaced.success, failure_text(replaced)
    assert len(openai_server.requests) == 2
    [takeover] = [e.user_message for e in pipeline.instance.all_logs(replaced.run_id) if "took over" in e.user_message]
    assert f"{key}: took over the claim of pid 999 on host lost-host (run run-killed)" in takeover
    assert takeover.endswith("asking the model again, since the answer stored is to an earlier version of the request")
    assert claims_left(pipeline.root) == []


def test_a_claim_let_go_without_an_answer_is_taken_and_called_once(pipeline, openai_server):
    short_claims(pipeline)
    key = pipeline.generation_keys()[0]
    held = hold(claim_of(pipeline, key))
    threading.Timer(0.8, lambda: Claims().release(held)).start()  # the other run's call failed

    result = pipeline.generate(key)

    assert result.success, failure_text(result)
    assert len(openai_server.requests) == 1
    assert claims_left(pipeline.root) == []


@pytest.mark.parametrize("fault", ["refused", "truncated", "exception"])
def test_no_claim_leaks_when_a_call_or_the_step_fails(pipeline, openai_server, monkeypatch, fault):
    short_claims(pipeline)
    keys = pipeline.generation_keys()
    if fault == "refused":
        openai_server.behaviour_for = lambda body: status(400)
    elif fault == "truncated":
        openai_server.behaviour_for = lambda body: truncated()
    else:  # the disk fills up as the first answer is stored: the step itself raises
        def full(self, *args, **kwargs):
            raise StorageFull(28, "the disk is full where the answer is written")

        monkeypatch.setattr(Archive, "keep", full)
    result = pipeline.materialize_range(GENERATION, generation_order(pipeline))

    assert not result.success
    assert len(openai_server.requests) >= 1
    assert claims_left(pipeline.root) == []
    assert not any(p.name.endswith(".tmp") for p in pipeline.root.rglob("*"))
    assert len(keys) == 6
    if fault == "exception":
        assert "the disk is full where the answer is written." in failure_text(result)
    assert pipeline.instance.get_materialized_partitions(dg.AssetKey("generation_response")) == set()


def test_a_range_waiting_on_two_claims_keeps_waiting_for_one_after_the_other_is_let_go(pipeline, openai_server):
    """Two partitions of a range held by another live run: the first claim is let go without an
    answer (its call failed there), the second owner answers later. The step takes and asks the
    first, and keeps waiting for the second instead of forgetting it (which ended in a KeyError
    after a SIGKILL and a rerun: `StepClaims.wait` returned at the first freed claim and dropped
    the rest)."""
    short_claims(pipeline)
    keys = generation_order(pipeline)
    assert pipeline.materialize_range(["generation_prompt"], keys).success
    first, second = keys[0], keys[1]
    held_first, held_second = hold(claim_of(pipeline, first)), hold(claim_of(pipeline, second))
    threading.Timer(0.5, lambda: Claims().release(held_first)).start()

    def the_other_run_answers_the_second() -> None:
        time.sleep(2.0)
        write_response_once(pipeline.response_path(second), "The other run's answer.", request_of(pipeline, second).fingerprint())
        Claims().release(held_second)

    other = threading.Thread(target=the_other_run_answers_the_second)
    other.start()
    result = pipeline.materialize_range(GENERATION, keys)
    other.join()

    assert result.success, failure_text(result)
    asked = [(r.body["model"], r.body["messages"][0]["content"]) for r in openai_server.requests]
    assert (request_of(pipeline, second).model, request_of(pipeline, second).prompt) not in asked
    assert len(asked) == len(keys) - 1  # every partition but the second, each once
    assert pipeline.response_path(second).read_text() == "The other run's answer."
    assert claims_left(pipeline.root) == []
