"""Call slots: machine-wide ones (at most N calls in flight across threads and processes, a killed
holder's slot free at once, the LLM client holding one per call against the real test server), and
`daydream run`'s shared ones, which count the calls each run starts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from daydreaming_dagster.llm import slots as llm_slots
from daydreaming_dagster.llm.openai_backend import OpenAIBackend
from daydreaming_dagster.llm.requests import LLMRequest
from daydreaming_dagster.llm.slots import FileCallSlots, SharedCallSlots
from daydreaming_dagster.resources.llm import LLMClientResource, machine_slots_folder

KEY = "sk-or-v1-SLOTS-0123456789abcdef"


def test_no_more_than_count_holders_at_once(tmp_path: Path):
    slots = FileCallSlots(tmp_path / "slots", 3, poll_s=0.005)
    lock, holding, most, held = threading.Lock(), [0], [0], []

    def work(_):
        with slots.hold() as number:
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
                held.append(number)
            time.sleep(0.05)
            with lock:
                holding[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(24)))
    assert most[0] == 3
    assert sorted(set(held)) == [0, 1, 2] and len(held) == 24


HOLDER = """
import sys, time
from daydreaming_dagster.llm.slots import FileCallSlots
with FileCallSlots(sys.argv[1], 1).hold():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_frees_its_slot_at_once(tmp_path: Path):
    folder = tmp_path / "slots"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waiting = threading.Thread(target=lambda: FileCallSlots(folder, 1, poll_s=0.005).hold().__enter__())
        waiting.daemon = True
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive(), "the only slot is held by another process"
        os.kill(holder.pid, signal.SIGKILL)
        waiting.join(5)
        assert not waiting.is_alive(), "the slot of a SIGKILLed holder is free again"
    finally:
        holder.kill()
        holder.wait()


class CountingSlots(FileCallSlots):
    """FileCallSlots that counts its passes over the slot files."""

    scans = 0

    def _scan(self):
        type(self).scans += 1
        return super()._scan()


def test_waiting_calls_of_one_process_poll_the_files_one_at_a_time(tmp_path: Path):
    # Eight threads wait while another process holds the only slot. Each pass is followed by a
    # sleep of at least poll_s / 2, so one poller makes at most 2 * wait / poll_s + 1 passes; eight
    # pollers each polling would make ~8 * wait / poll_s.
    folder, poll_s, wait_s = tmp_path / "slots", 0.01, 0.6
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        slots = CountingSlots(folder, 1, poll_s=poll_s)
        waiting = [threading.Thread(target=lambda: slots.hold().__enter__(), daemon=True) for _ in range(8)]
        started = time.monotonic()
        for thread in waiting:
            thread.start()
        time.sleep(wait_s)
        scans, elapsed = CountingSlots.scans, time.monotonic() - started
        assert all(thread.is_alive() for thread in waiting)
        assert 1 <= scans <= 2 * elapsed / poll_s + 1
    finally:
        holder.kill()
        holder.wait()


def test_the_client_holds_one_machine_slot_per_call(openai_server):
    # The slot folder is derived from the base URL, whose port is this test server's own.
    openai_server.latency_s = 0.4
    client = LLMClientResource(api_key=KEY, base_url=openai_server.base_url, max_calls_in_flight=2, timeout_s=5.0)
    assert machine_slots_folder(openai_server.base_url) != machine_slots_folder("https://openrouter.ai/api/v1")
    request = LLMRequest(model_id="m", model="vendor/m", prompt="Say something.", temperature=0.0, max_tokens=20)
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.complete(request), range(6)))
    wall = time.monotonic() - started
    assert len(answers) == 6 and len(openai_server.requests) == 6
    # Six calls of 0.4 s through two slots: three waves, never six at once (lower bounds only:
    # a loaded machine can make them later, never earlier).
    arrivals = sorted(r.received_at for r in openai_server.requests)
    assert wall >= 1.1
    assert arrivals[2] - arrivals[0] >= 0.3 and arrivals[4] - arrivals[2] >= 0.3


def test_daydream_runs_call_slots_count_the_calls_each_run_starts(openai_server, monkeypatch):
    # The runner hands a run of five partitions out; three of them call (the others, say, reuse a
    # stored answer). Each call takes one off the queued count as it takes its slot; the rest is the
    # runner's to settle when the run ends.
    monkeypatch.setattr(llm_slots, "_shared_call_slots", None)
    slots = SharedCallSlots(multiprocessing.get_context(), 2)
    llm_slots.share_call_slots(slots)
    openai_server.latency_s = 0.3
    slots.add_unstarted(5)
    with llm_slots.counting_calls() as calls:
        counted = OpenAIBackend(api_key=KEY, base_url=openai_server.base_url, timeout_s=5.0)
    uncounted = OpenAIBackend(api_key=KEY, base_url=openai_server.base_url, timeout_s=5.0)
    request = LLMRequest(model_id="m", model="vendor/m", prompt="Say something.", temperature=0.0, max_tokens=20)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: counted.complete(request), range(3)))
    assert calls.started == 3 and slots.unstarted == 2
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: uncounted.complete(request), range(2)))  # no run's calls: nothing to count
    assert calls.started == 3 and slots.unstarted == 2

    arrivals = sorted(r.received_at for r in openai_server.requests)
    assert arrivals[2] - arrivals[0] >= 0.25  # two slots: the third call waited for one


def test_daydream_runs_call_slots_go_to_the_calls_of_a_process_in_the_order_they_asked():
    slots = SharedCallSlots(multiprocessing.get_context(), 1)
    order, lock = [], threading.Lock()

    def call(number: int) -> None:
        with slots.hold():
            with lock:
                order.append(number)
            time.sleep(0.02)

    with slots.hold():  # the only slot is taken while eight calls line up
        threads = []
        for number in range(8):
            threads.append(threading.Thread(target=call, args=(number,)))
            threads[-1].start()
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert order == list(range(8))
