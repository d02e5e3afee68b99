"""A synthetic large experiment's report inputs, built directly (no pipeline): the tables the
results assets would hand the report, and texts of realistic length (random words, so they
compress about as well as prose). Used by tests/test_report_scale.py and bench/report.py."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd

from daydreaming_dagster.analysis.tables import (
    NO_RESPONSE,
    PARSED_SCORE_COLUMNS,
    judge_agreement_table,
    summarize,
)
from daydreaming_dagster.experiment.ids import combo_id, evaluation_task_id, generation_task_id
from daydreaming_dagster.experiment.stages import pair_key
from daydreaming_dagster.report.payload import ReportTables, ReportTexts

GENERATION_TEMPLATES = ("creative-synthesis", "research-proposal")
GENERATORS = ("deepseek-chat", "qwen3-235b")
EVALUATION_TEMPLATES = ("novelty-rubric", "insight-check")
JUDGES = ("claude-sonnet-4", "gemini-2.5-flash", "gpt-5-mini", "llama-4", "mistral-large")
FAILURE = "no score statement found"


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ra", "ti", "su", "ve", "po", "da", "ri", "an", "el", "or", "is", "um"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(size)]


class _Prose:
    """Texts of random words cut from one long random sequence (fast; no two texts of a chunk share
    words beyond chance, so they compress like the real thing would)."""

    def __init__(self, rng: random.Random, size: int = 500_000) -> None:
        self.words = rng.choices(_vocabulary(rng), k=size)
        self.rng = rng

    def __call__(self, n: int, per_line: int = 14) -> str:
        start = self.rng.randrange(len(self.words) - n)
        chosen = self.words[start : start + n]
        return "\n".join(" ".join(chosen[i : i + per_line]) for i in range(0, n, per_line))


def large_report_inputs(
    n_concepts: int = 72, answer_words: int = 180, judge_words: int = 60, seed: int = 7
) -> tuple[ReportTables, ReportTexts]:
    """C(n_concepts, 2) combinations x 2 templates x 2 generators, each judged by 2 templates x 5
    judges: 72 concepts make 10,224 generations and 102,240 pairs. About 2% of the judge answers
    give no score and 1% are not answered yet; `*_words` set the length of the texts."""
    rng = random.Random(seed)
    prose = _Prose(rng)
    concept_ids = [f"concept-{i:03d}" for i in range(n_concepts)]
    concepts = pd.DataFrame({"concept_id": concept_ids, "name": [f"Concept {i}" for i in range(n_concepts)]})
    description = {c: prose(80, per_line=80) for c in concept_ids}
    tasks = []
    for a, b in itertools.combinations(concept_ids, 2):
        combo = combo_id([a, b])
        for template, model in itertools.product(GENERATION_TEMPLATES, GENERATORS):
            tasks.append((generation_task_id(combo, template, model), combo, f"{a},{b}", template, model))
    generation_tasks = pd.DataFrame(
        tasks, columns=["generation_task_id", "combo_id", "concept_ids", "generation_template_id", "generation_model_id"]
    )
    methods = [(evaluation_task_id(t, j), t, j) for t in EVALUATION_TEMPLATES for j in JUDGES]

    method_table = pd.DataFrame(methods, columns=["evaluation_task_id", "evaluation_template_id", "evaluation_model_id"])
    pairs = generation_tasks.merge(method_table, how="cross")
    draw = np.random.default_rng(seed)
    fate = draw.random(len(pairs))
    scores = draw.integers(0, 11, len(pairs)).astype(float)
    failed, unanswered = fate < 0.02, (fate >= 0.02) & (fate < 0.03)
    pairs["score"] = np.where(failed | unanswered, np.nan, scores)
    pairs["parse_error"] = np.where(failed, FAILURE, np.where(unanswered, NO_RESPONSE, None))
    pairs["response_path"] = ""
    judge_lines = -(-judge_words // 14)
    pairs["score_line"] = pd.array(np.where(failed | unanswered, None, judge_lines + 1), dtype="Int64")
    pairs["generation_replicate"] = pairs["evaluation_replicate"] = 1
    parsed = pairs[PARSED_SCORE_COLUMNS]

    prompts, answers, judge_answers = {}, {}, {}
    columns = ["generation_task_id", "concept_ids", "generation_template_id"]
    for g, concept_pair, template in generation_tasks[columns].itertuples(index=False):
        a, b = concept_pair.split(",")
        prompts[g] = (f"[{template}] Combine these concepts into one new idea.\n\n## {a}\n{description[a]}\n\n"
                      f"## {b}\n{description[b]}\n\nAnswer in 300 to 600 words.")
        answers[g] = prose(answer_words)
    for g, m, score, fail in zip(parsed["generation_task_id"], parsed["evaluation_task_id"], parsed["score"], failed):
        if np.isnan(score) and not fail:
            continue
        body = prose(judge_words)
        judge_answers[pair_key(g, m)] = body if fail else f"{body}\nSCORE: {int(score)}"

    # Agreement over the first 1,000 generations: the full table is the judge_agreement asset's
    # cost (~10 s at this size), not the report's, and its size does not depend on the pairs.
    agreement, _ = judge_agreement_table(parsed[parsed["generation_task_id"].isin(generation_tasks["generation_task_id"][:1000])])
    tables = ReportTables(
        parsed_scores=parsed,
        generation_tasks=generation_tasks,
        concepts=concepts,
        evaluation_templates=pd.DataFrame(
            {"template_id": list(EVALUATION_TEMPLATES), "score_min": 0.0, "score_max": 10.0}
        ),
        judge_agreement=agreement,
        summaries={
            "generation_template": summarize(parsed, ["generation_template_id"]),
            "generation_model": summarize(parsed, ["generation_model_id"]),
            "evaluation_method": summarize(parsed, ["evaluation_task_id", "evaluation_template_id", "evaluation_model_id"]),
            "combination": summarize(parsed, ["combo_id", "concept_ids"]),
        },
        llm_usage=None,
    )
    return tables, ReportTexts(prompts=prompts, answers=answers, judge_answers=judge_answers)
