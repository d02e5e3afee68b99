"""The test server's latency models: the heavy-tailed one has the shape the benchmarks promise, gives
the same call the same latency in every run, and the server waits that long before answering."""

from __future__ import annotations

import openai

from tests.latency_models import HeavyTailedLatency


def body(model: str, prompt: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def test_heavy_tailed_latency_has_the_median_the_95th_percentile_and_the_cap_it_is_given():
    model = HeavyTailedLatency(seed=7)
    latencies = sorted(model(body(f"m{i % 3}", f"prompt {i}")) for i in range(20_000))

    assert 3.8 <= latencies[len(latencies) // 2] <= 4.2
    assert 18.5 <= latencies[int(len(latencies) * 0.95)] <= 21.5
    assert latencies[-1] == 60.0 and latencies[0] > 0.05
    assert 20 <= sum(1 for s in latencies if s >= 50) <= 150  # a few calls near the cap, not none


def test_the_same_call_waits_the_same_time_and_another_seed_or_call_does_not():
    model = HeavyTailedLatency(seed=1)
    call = body("judge/a", "Rate this idea.")

    assert model(call) == HeavyTailedLatency(seed=1)(dict(call)) == model(body("judge/a", "Rate this idea."))
    assert model(call) != HeavyTailedLatency(seed=2)(call)
    assert model(call) != model(body("judge/b", "Rate this idea.")) != model(body("judge/a", "Rate that idea."))


def test_the_server_answers_each_call_after_its_own_latency(openai_server):
    model = HeavyTailedLatency(seed=3, median_s=0.15, p95_s=0.4, cap_s=0.6)
    openai_server.latency_for = model
    client = openai.OpenAI(api_key="test", base_url=openai_server.base_url, max_retries=0)
    for prompt in ("first", "second", "third"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])

    # Measured at the server (the client's own start, ~1 s under load, is not the server's wait).
    for request in openai_server.requests:
        latency = model(request.body)
        assert latency <= request.answered_at - request.received_at < latency + 0.5
    assert len({model(r.body) for r in openai_server.requests}) == 3  # each call its own latency
