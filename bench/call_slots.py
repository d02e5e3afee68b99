"""Benchmark: the CPU that calls waiting for machine-wide call slots (llm/slots.py) cost.

`--waiters` threads of one process each take a slot of `--slots`, hold it for `--hold` seconds
(a call in flight) and take another, for `--seconds`: most of them wait most of the time, as the
calls of a backfill run with `parallel_calls` above its share of DAYDREAM_MAX_CALLS_IN_FLIGHT do.
Prints the process's CPU seconds over the wall seconds (with one poller per process, waiting costs
little; with every waiter scanning the slot files each 20 ms, 64 waiters for 16 slots cost ~6 s of
CPU in 14 s).

    uv run python bench/call_slots.py [--waiters 64] [--slots 16] [--hold 2] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time

from common import REPO

sys.path.insert(0, str(REPO))
from daydreaming_dagster.llm.slots import FileCallSlots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiters", type=int, default=64)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--hold", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    slots = FileCallSlots(tempfile.mkdtemp(prefix="daydream-slots-"), args.slots)
    stop = time.monotonic() + args.seconds
    held = [0]

    def call() -> None:
        while time.monotonic() < stop:
            with slots.hold():
                held[0] += 1
                time.sleep(args.hold)

    threads = [threading.Thread(target=call) for _ in range(args.waiters)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - started
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(
        f"load average {os.getloadavg()[0]:.1f}; {args.waiters} waiters, {args.slots} slots held {args.hold:g} s each"
    )
    print(f"  {held[0]} holds in {wall:.1f} s; CPU {cpu:.2f} s ({cpu / wall:.0%} of one core)")


if __name__ == "__main__":
    main()
