"""The forkserver of `daydream run`'s worker pool (pool.py): started deaf to Ctrl-C, and stopped
while it is still importing when the command turns out to need no worker at all.

The forkserver imports the code location (~3 s of CPU) before it forks the first worker, and a
worker's start waits for it. A rerun with nothing to do is done before then; waiting for the import
to end, for the workers to start and to exit again, made it 1.3-1.6 s slower (measured: a no-op
rerun of the 200-pair experiment, 4.5 s with its workers, 3.2 s without). The standard library has
no public way to stop a forkserver (Python 3.12 adds the private `ForkServer._stop`); this module
holds the one private attribute it reads, `multiprocessing.forkserver._forkserver._forkserver_pid`,
and tests/test_pool.py checks that it is there."""

from __future__ import annotations

import os
import signal
import threading
from multiprocessing import forkserver


def running_pid() -> int | None:
    """The pid of this process's forkserver, None when none was started."""
    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def start_deaf_to_ctrl_c() -> int | None:
    """Start the forkserver now, with Ctrl-C ignored: it ignores it itself only once its imports are
    done (~3 s), and a Ctrl-C before that printed its traceback. Ctrl-C is the runner's to handle.
    Returns its pid when this call started it (None when it was running already or was not started)."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may change a signal's handler; it starts with the first worker
    before = running_pid()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored signals stay ignored across exec
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
    started = running_pid()
    return started if started != before else None


def stop(pid: int) -> bool:
    """Kill the forkserver `pid` if it is still this process's forkserver; True once it is dead.

    It is left unreaped: the next `ensure_running` reaps it and starts a new one. The wait for its
    death does not reap it (WNOWAIT), so that call cannot mistake a dying forkserver for a live one."""
    if running_pid() != pid:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except (ProcessLookupError, ChildProcessError):
        return False
    return True
