"""Process-level settings read from the environment (and `.env`), shared by definitions and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .llm.openai_backend import DEFAULT_DEADLINE_S, DEFAULT_TIMEOUT_S
from .store.roots import data_path

# The package's own folder: its code is part of what the task tables are built from (a change
# rebuilds them), and the project's instance configuration lies beside it.
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
BACKENDS = ("openai", "offline")
# LLM calls in flight at once from this machine to one API, across every process (runs the daemon
# launches, `daydream run`'s workers): DAYDREAM_MAX_CALLS_IN_FLIGHT.
DEFAULT_MAX_CALLS_IN_FLIGHT = 16


@dataclass(frozen=True)
class Settings:
    """Which experiment, which backend, and where outputs go.

    Offline runs write under `<data_root>/offline`, so a dry run can never touch or block real results."""

    data_root: Path
    backend: str
    base_url: str
    max_calls_in_flight: int = DEFAULT_MAX_CALLS_IN_FLIGHT
    request_timeout_s: float = DEFAULT_TIMEOUT_S  # DAYDREAM_REQUEST_TIMEOUT_S
    call_deadline_s: float = DEFAULT_DEADLINE_S  # DAYDREAM_CALL_DEADLINE_S

    @property
    def offline(self) -> bool:
        return self.backend == "offline"

    @property
    def output_root(self) -> Path:
        override = os.environ.get("DAYDREAM_OUTPUT_ROOT")
        if override:
            return data_path(override)
        return self.data_root / "offline" if self.offline else self.data_root

    @classmethod
    def from_env(cls) -> "Settings":
        backend = os.environ.get("DAYDREAM_BACKEND", "openai").strip().lower() or "openai"
        if backend not in BACKENDS:
            raise ValueError(f"DAYDREAM_BACKEND is {backend!r}; use one of {', '.join(BACKENDS)}.")
        calls = os.environ.get("DAYDREAM_MAX_CALLS_IN_FLIGHT", str(DEFAULT_MAX_CALLS_IN_FLIGHT)).strip()
        if not calls.isdigit() or int(calls) < 1:
            raise ValueError(f"DAYDREAM_MAX_CALLS_IN_FLIGHT is {calls!r}; use a whole number of at least 1.")
        return cls(
            data_root=data_path(os.environ.get("DAYDREAM_DATA_ROOT", "data")),
            backend=backend,
            base_url=os.environ.get("OPENROUTER_BASE_URL", DEFAULT_BASE_URL),
            max_calls_in_flight=int(calls),
            request_timeout_s=_seconds("DAYDREAM_REQUEST_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            call_deadline_s=_seconds("DAYDREAM_CALL_DEADLINE_S", DEFAULT_DEADLINE_S),
        )


def _seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment, or `default` when it is not set."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{variable} is {raw!r}; give a number of seconds above 0.")
    return value
