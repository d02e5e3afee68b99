"""Shared by bench/throughput.py and bench/rerun.py: `daydream run` against a local OpenAI-protocol server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, busy_cpu_seconds, fresh_home

sys.path.insert(0, str(REPO))
from tests.openai_server import FakeOpenAIServer  # noqa: E402  (the test suite's scriptable server)


def judge_or_generation_answer(body) -> str:
    prompt = body["messages"][-1]["content"]
    if "SCORE" in prompt:
        return f"Clear and specific, somewhat new.\nSCORE: {len(prompt) % 11}"
    return "An idea that combines the concepts: " + prompt[:200].replace("\n", " ")


def start_server(latency_s: float) -> FakeOpenAIServer:
    server = FakeOpenAIServer().start()
    server.latency_s = latency_s
    server.default_answer = judge_or_generation_answer
    return server


def daydream_run(
    tmp: Path, data_root: Path, server: FakeOpenAIServer, concurrency: int, pool_limit: int, extra: list[str] = ()
) -> dict:
    """One `daydream run` (real backend) against `server`, with `extra` arguments; wall, CPU,
    requests and stage figures."""
    home = tmp / "home"
    if not home.exists():
        fresh_home(home)
        config = (home / "dagster.yaml").read_text()
        (home / "dagster.yaml").write_text(config.replace("default_limit: 8", f"default_limit: {pool_limit}"))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OPENROUTER_API_KEY": "bench-key",
        "OPENROUTER_BASE_URL": server.base_url,
    }
    before = len(server.requests)
    cpu0 = busy_cpu_seconds()
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--data-root", str(data_root), "--concurrency", str(concurrency), *extra],
        env=env, capture_output=True, text=True, cwd=tmp,
    )
    wall = time.perf_counter() - started
    cpu = busy_cpu_seconds() - cpu0
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-3000:])
    stages = {
        m.group(1): {"ran": int(m.group(2)), "seconds": float(m.group(3))}
        for m in re.finditer(r"(\w+): (\d+) ran, \d+ skipped(?:, \d+ left to another run)?, \d+ failed in ([\d.]+) s", out.stdout)
    }
    return {
        "wall": wall,
        "cpu": cpu,
        "requests": len(server.requests) - before,
        "stages": stages,
        "log": out.stderr.splitlines(),
    }
