"""How long the test server takes to answer a request: a fixed delay, or a seeded heavy-tailed one.

Real providers answer a judge prompt in anywhere from 3 to 60 s. `HeavyTailedLatency` draws a
log-normal latency (median and 95th percentile as given, capped) from a digest of the seed and the
request's model and prompt, so the same call waits the same time in every run and from every
client: the benchmarks' asyncio floor and `daydream run` see identical latencies for identical calls.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

_Z95 = NormalDist().inv_cdf(0.95)


def request_digest(body: Any) -> bytes:
    """A digest of what identifies a call: its model and its messages."""
    if not isinstance(body, dict):
        return hashlib.sha256(repr(body).encode()).digest()
    messages = body.get("messages") or []
    prompt = "\x1e".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return hashlib.sha256(f"{body.get('model')}\x1f{prompt}".encode()).digest()


@dataclass(frozen=True)
class HeavyTailedLatency:
    """Seconds before the server answers `body`: log-normal with this median and 95th percentile,
    at most `cap_s`, the same for the same request and seed."""

    seed: int = 0
    median_s: float = 4.0
    p95_s: float = 20.0
    cap_s: float = 60.0

    @property
    def sigma(self) -> float:
        return math.log(self.p95_s / self.median_s) / _Z95

    def quantile(self, u: float) -> float:
        """The latency at quantile `u` of the distribution (0 < u < 1)."""
        return min(self.cap_s, self.median_s * math.exp(self.sigma * NormalDist().inv_cdf(u)))

    def __call__(self, body: Any) -> float:
        digest = hashlib.sha256(self.seed.to_bytes(8, "big", signed=True) + request_digest(body)).digest()
        u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
        return self.quantile(u)

    def describe(self) -> str:
        return f"log-normal, median {self.median_s:g} s, p95 {self.p95_s:g} s, at most {self.cap_s:g} s, seed {self.seed}"
