"""Processes started in a session of their own (start_new_session=True), stopped with all they started."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, with its children (code servers, runs):
    SIGTERM to the group, SIGKILL if it has not exited within 60 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
