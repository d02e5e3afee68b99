"""The offline backend: instant, deterministic answers from (model_id, prompt, replicate), with no
key and no network, so the whole pipeline runs on a fresh machine. Judge prompts (any prompt that
mentions a score) get a few remarks and a final `SCORE: n` line that varies with the input; a
judge's replicates land within a few points of its first verdict."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from .requests import LLMRequest, LLMResponse, now_iso

# How far (in points) an offline judge's replicate may land from its first verdict on an answer.
JUDGE_NOISE = 2

_STOPWORDS = frozenset(
    """
    about above after again against also among another answer because been before being below
    between both brief could does doing down during each either every from further have having
    here into itself just like made make many more most much must only other ought over please
    same should some such than that their them then there these they this those through under
    until upon very want were what when where which while will with within without would write
    your yours combine combination following given concept concepts response using task
    """.split()
)

_OPENINGS = [
    "Consider {a} and {b} as two halves of one mechanism.",
    "Start from {a}, then let {b} reshape it.",
    "The overlooked link between {a} and {b} is a shared constraint.",
    "Suppose {a} were treated as an instance of {b}.",
    "A small experiment could pair {a} with {b} and watch what breaks.",
    "Placing {a} next to {b} reveals a missing intermediate step.",
]
_MIDDLES = [
    "The interesting part is how {a} turns a cost into a signal.",
    "This suggests a feedback loop in which {b} amplifies whatever {a} selects.",
    "Seen this way, {a} stops being a tool and becomes a search process.",
    "The combination predicts something neither {a} nor {b} predicts alone.",
    "A concrete test would vary {b} while holding {a} fixed.",
    "The risk is that {a} only looks novel because {b} is poorly measured.",
    "One could prototype this with existing data about {b}.",
    "It reframes {a} as a question of timing rather than of content.",
]
_CLOSINGS = [
    "If it holds, the idea generalises beyond {a}.",
    "The next step is to write down where {b} would fail.",
    "That is the core of the proposal.",
    "Whether it survives contact with real data is the open question.",
]
_JUDGE_LINES = [
    "The answer connects the concepts rather than listing them side by side.",
    "The central mechanism is stated, but its justification is thin.",
    "Several claims are plausible yet untested.",
    "The proposal is specific enough to be checked by an experiment.",
    "The reasoning repeats itself in places and loses focus.",
    "There is a genuinely unexpected link between the ideas.",
    "The text stays close to familiar territory.",
    "The practical consequences are spelled out clearly.",
]


def _byte_stream(seed: bytes) -> Iterator[int]:
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1


def _prompt_keywords(prompt: str) -> list[str]:
    first_lines = [line for line in prompt.splitlines() if line.strip()][:5]
    words: list[str] = []
    for word in re.findall(r"[A-Za-z][A-Za-z'-]{3,}", " ".join(first_lines)):
        word = word.lower().strip("'-")
        if len(word) >= 4 and word not in _STOPWORDS and word not in words:
            words.append(word)
    return words or ["the idea", "the problem"]


def _offline_text(model_id: str, prompt: str, replicate: int = 1) -> str:
    base = hashlib.sha256(f"{model_id}\x00{prompt}".encode("utf-8")).digest()
    # Replicate 1 answers from the base seed, as before replicates existed; each later replicate
    # samples again from a seed of its own, so replicates differ like real samples do.
    seed = base if replicate == 1 else hashlib.sha256(base + b"replicate" + replicate.to_bytes(4, "big")).digest()
    rng = _byte_stream(seed)

    def pick(items: list[str]) -> str:
        return items[next(rng) % len(items)]

    if "score" in prompt.lower():
        reasons = [pick(_JUDGE_LINES) for _ in range(2 + next(rng) % 3)]
        reasons = list(dict.fromkeys(reasons))  # no line twice
        # The judge's view of the answer comes from the base seed; a replicate judges the same
        # answer again and lands within JUDGE_NOISE points of it: a judge consistent with itself,
        # but not perfectly, so the reliability tables of an offline run have something to show.
        score = int.from_bytes(base[:2], "big") % 11
        if replicate != 1:
            score = min(10, max(0, score + next(rng) % (2 * JUDGE_NOISE + 1) - JUDGE_NOISE))
        return "\n".join([*reasons, f"SCORE: {score}"])

    keywords = _prompt_keywords(prompt)

    def fill(template: str) -> str:
        a = pick(keywords)
        b = pick([w for w in keywords if w != a] or keywords)
        return template.format(a=a, b=b)

    middles = [fill(pick(_MIDDLES)) for _ in range(1 + next(rng) % 4)]
    sentences = [fill(pick(_OPENINGS)), *dict.fromkeys(middles), fill(pick(_CLOSINGS))]
    return " ".join(sentences)



class OfflineBackend:
    """Answers every request at once, deterministically; nothing to configure, nothing to close."""

    name = "offline"

    def check_ready(self) -> None:
        return None

    def complete(self, request: LLMRequest) -> LLMResponse:
        text = _offline_text(request.model_id, request.prompt, request.replicate)
        prompt_tokens = len(request.prompt.split())
        completion_tokens = len(text.split())
        provenance = {
            "backend": "offline",
            **request.fingerprint(),
            "finish_reason": "stop",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_chars": len(request.prompt),
            "latency_s": 0.0,
            "attempts": 1,
            "generation_id": None,
            "created_at": now_iso(),
        }
        return LLMResponse(text=text, provenance=provenance)

    def close(self) -> None:
        return None
