"""The report's data: the experiment at a glance, the summaries and the generations x evaluation
methods matrix as compact JSON, and every text (prompt, answer, judge answers) in gzip chunks.

The matrix is columnar (one list per field, one cell per generation x method) so 100,000 pairs
stay a few megabytes of JSON the page parses at once; the texts, which are most of the bytes, are
grouped by generation into chunks the page inflates only when a generation is opened."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..analysis.tables import ALL_JUDGES, NO_RESPONSE, mean_score_matrix, score_scale, summarize
from ..experiment.stages import pair_key

# Raw JSON bytes per text chunk: big enough that gzip finds the repeats between a generation's
# texts and its neighbours' prompts, small enough to inflate in a few milliseconds on a click.
CHUNK_BYTES = 256 * 1024
# gzip level 3: a third of the time of the default level 6 for ~6% more bytes (measured on 10 MB of
# answers); at 100,000 pairs that is seconds of every results run.
COMPRESS_LEVEL = 3
DEFAULT_SCALE = (0.0, 10.0)
# Cell states of the matrix: no such pair, scored, parse failure, not answered yet.
NOT_A_PAIR, SCORED, FAILED, UNANSWERED = "-", "s", "f", "u"
USAGE_SHOWN = ["stage", "model_id", "backend", "calls", "prompt_tokens", "completion_tokens", "cost_usd"]


@dataclass(frozen=True)
class ReportTables:
    """The result tables the report shows (as the assets hand them over)."""

    parsed_scores: pd.DataFrame
    generation_tasks: pd.DataFrame
    concepts: pd.DataFrame
    evaluation_templates: pd.DataFrame
    judge_agreement: pd.DataFrame
    summaries: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    llm_usage: pd.DataFrame | None = None


@dataclass(frozen=True)
class ReportTexts:
    """Prompts and answers by generation_task_id; judge answers by pair key ("<method>|<generation>")."""

    prompts: Mapping[str, str]
    answers: Mapping[str, str]
    judge_answers: Mapping[str, str]


@dataclass(frozen=True)
class Payload:
    """What the page is made of: `data` for its JSON block, `chunks` for its text blocks."""

    data: dict
    chunks: list[bytes]  # gzip-compressed JSON, one list entry per generation of the chunk
    text_bytes: int  # the texts' JSON before compression


def _plain(value):
    """A JSON-ready scalar: NaN/NA become None, numpy numbers Python ones, whole floats ints."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else round(value, 4)
    return value


def table_json(df: pd.DataFrame | None) -> dict:
    if df is None:
        return {"columns": [], "rows": []}
    return {"columns": [str(c) for c in df.columns], "rows": [[_plain(v) for v in row] for row in df.itertuples(index=False)]}


def _positions(values: list[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(values)}


def _split_ids(value) -> list[str]:
    return [] if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).split(",")


def _by_concept(parsed: pd.DataFrame, names: Mapping[str, str]) -> pd.DataFrame:
    """Score statistics per concept, over every pair whose combination contains it."""
    exploded = parsed.assign(concept=parsed["concept_ids"].map(_split_ids)).explode("concept")
    exploded["concept"] = exploded["concept"].map(lambda c: names.get(c, c))
    return summarize(exploded.dropna(subset=["concept"]), ["concept"]).sort_values("mean", ascending=False)


def _spend(usage: pd.DataFrame | None) -> dict:
    if usage is None or usage.empty:
        return {"known": False}
    cost = pd.to_numeric(usage["cost_usd"], errors="coerce")
    offline = bool((usage["backend"] == "offline").all())
    return {
        "known": True,
        "offline": offline,
        "calls": int(usage["calls"].sum()),
        "tokens": int(pd.to_numeric(usage["total_tokens"], errors="coerce").fillna(0).sum()),
        "cost_usd": _plain(float(cost.sum())) if cost.notna().any() else None,
        "unpriced_models": sorted(set(usage.loc[cost.isna(), "model_id"].astype(str))),
    }


def _agreement(agreement: pd.DataFrame) -> dict:
    overall = agreement[agreement["judge_a"] == ALL_JUDGES]
    row = overall.iloc[-1] if len(overall) else None
    return {
        **table_json(agreement),
        "alpha": None if row is None else _plain(row["krippendorff_alpha"]),
        "n_items": 0 if row is None else int(row["n_items"]),
        "n_judges": 0 if row is None else int(row["n_judges"]),
    }


def _heatmap(parsed: pd.DataFrame) -> dict:
    means, counts = mean_score_matrix(parsed, "generation_template_id", "generation_model_id")
    return {
        "rows": [str(r) for r in means.index],
        "columns": [str(c) for c in means.columns],
        "mean": [[_plain(v) for v in row] for row in means.to_numpy(dtype=float).tolist()],
        "n": counts.to_numpy().tolist(),
    }


def _matrix(parsed: pd.DataFrame, generation_ids: list[str], methods: list[str]) -> dict:
    """One cell per generation x method (row-major): state, score, verdict line, failure reason."""
    g_index = {g: i for i, g in enumerate(generation_ids)}
    m_index = {m: i for i, m in enumerate(methods)}
    known = parsed[parsed["generation_task_id"].isin(g_index)]
    cells = (
        known["generation_task_id"].map(g_index).to_numpy(dtype=np.int64) * len(methods)
        + known["evaluation_task_id"].map(m_index).to_numpy(dtype=np.int64)
    )
    size = len(generation_ids) * len(methods)
    state = np.full(size, NOT_A_PAIR, dtype="<U1")
    score = np.full(size, np.nan)
    line = np.zeros(size, dtype=np.int64)
    scored = known["score"].notna().to_numpy()
    unanswered = known["parse_error"].eq(NO_RESPONSE).to_numpy()
    state[cells] = np.where(scored, SCORED, np.where(unanswered, UNANSWERED, FAILED))
    score[cells] = known["score"].to_numpy(dtype=float)
    if "score_line" in known.columns:
        line[cells] = pd.to_numeric(known["score_line"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
    failed = ~scored & ~unanswered
    reasons = sorted(set(known.loc[failed, "parse_error"].astype(str)))
    reason_index = {r: i for i, r in enumerate(reasons)}
    return {
        "state": "".join(state.tolist()),
        "score": [_plain(v) for v in score.tolist()],
        "line": line.tolist(),
        "reasons": reasons,
        # [cell, reason index] for each parse failure: few, so a sparse list.
        "failures": [[int(c), reason_index[str(r)]] for c, r in zip(cells[failed], known.loc[failed, "parse_error"])],
    }


def _rank(parsed: pd.DataFrame, generation_ids: list[str]) -> tuple[list, list, list]:
    """Mean score, number of scores and rank (1 = best, ties share) of every generation."""
    stats = parsed[parsed["score"].notna()].groupby("generation_task_id")["score"].agg(["mean", "count"])
    stats = stats.reindex(generation_ids)
    means = stats["mean"].round(3)
    ranks = means.rank(method="min", ascending=False)
    return (
        [_plain(v) for v in means.tolist()],
        stats["count"].fillna(0).astype(int).tolist(),
        [_plain(v) for v in ranks.tolist()],
    )


def _chunks(generation_ids: list[str], methods: list[str], texts: ReportTexts) -> tuple[list[bytes], list, list, int]:
    """The texts grouped by generation into gzip chunks; returns them with each generation's chunk
    and slot in it, and the bytes before compression."""
    chunks, chunk_of, slot_of = [], [], []
    current, size, total = [], 0, 0

    def flush() -> None:
        nonlocal current, size, total
        raw = json.dumps(current, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        total += len(raw)
        chunks.append(gzip.compress(raw, compresslevel=COMPRESS_LEVEL, mtime=0))
        current, size = [], 0

    for g in generation_ids:
        judges = [texts.judge_answers.get(pair_key(g, m)) for m in methods]
        entry = [texts.prompts.get(g), texts.answers.get(g), judges]
        chunk_of.append(len(chunks))
        slot_of.append(len(current))
        current.append(entry)
        size += sum(len(t) for t in (entry[0], entry[1], *judges) if t) + 16
        if size >= CHUNK_BYTES:
            flush()
    if current or not chunks:
        flush()
    return chunks, chunk_of, slot_of, total


def build_payload(tables: ReportTables, texts: ReportTexts, *, title: str, generated: str) -> Payload:
    """Everything the page shows, from the result tables and the texts."""
    parsed, tasks = tables.parsed_scores, tables.generation_tasks
    generation_ids = tasks["generation_task_id"].astype(str).tolist()
    methods = sorted(parsed["evaluation_task_id"].astype(str).unique())
    method_rows = parsed.drop_duplicates("evaluation_task_id").set_index("evaluation_task_id")
    names = dict(zip(tables.concepts["concept_id"].astype(str), tables.concepts["name"].astype(str)))
    gen_concepts = [_split_ids(v) for v in tasks["concept_ids"]]
    concept_ids = sorted({c for ids in gen_concepts for c in ids}, key=lambda c: names.get(c, c).lower())
    concept_index = {c: i for i, c in enumerate(concept_ids)}
    templates = sorted(tasks["generation_template_id"].astype(str).unique())
    models = sorted(tasks["generation_model_id"].astype(str).unique())
    scale = score_scale(tables.evaluation_templates, parsed["evaluation_template_id"])
    matrix = _matrix(parsed, generation_ids, methods)
    means, n_scores, ranks = _rank(parsed, generation_ids)
    chunks, chunk_of, slot_of, text_bytes = _chunks(generation_ids, methods, texts)
    summaries = {name: table_json(df) for name, df in tables.summaries.items()}
    summaries["concept"] = table_json(_by_concept(parsed, names))
    data = {
        "title": title,
        "generated": generated,
        "scale": list(DEFAULT_SCALE if scale[0] is None else scale),
        "spend": _spend(tables.llm_usage),
        "counts": {
            "generations": len(generation_ids),
            "answered": sum(1 for g in generation_ids if g in texts.answers),
            "pairs": len(matrix["state"]) - matrix["state"].count(NOT_A_PAIR),
            "scored": matrix["state"].count(SCORED),
            "failed": matrix["state"].count(FAILED),
            "unanswered": matrix["state"].count(UNANSWERED),
        },
        "concepts": [{"id": c, "name": names.get(c, c)} for c in concept_ids],
        "templates": templates,
        "models": models,
        "methods": [
            {
                "id": m,
                "template": str(method_rows.loc[m, "evaluation_template_id"]),
                "judge": str(method_rows.loc[m, "evaluation_model_id"]),
            }
            for m in methods
        ],
        "generations": {
            "id": generation_ids,
            "concepts": [[concept_index[c] for c in ids] for ids in gen_concepts],
            "template": tasks["generation_template_id"].astype(str).map(_positions(templates)).tolist(),
            "model": tasks["generation_model_id"].astype(str).map(_positions(models)).tolist(),
            "mean": means,
            "n": n_scores,
            "rank": ranks,
            "chunk": chunk_of,
            "slot": slot_of,
        },
        "cells": matrix,
        "heatmap": _heatmap(parsed),
        "summaries": summaries,
        "agreement": _agreement(tables.judge_agreement),
        "usage": table_json(None if tables.llm_usage is None else tables.llm_usage.reindex(columns=USAGE_SHOWN)),
    }
    return Payload(data=data, chunks=chunks, text_bytes=text_bytes)
