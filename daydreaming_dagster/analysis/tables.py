"""The result tables as pure functions of the parsed scores: one score per pair (or why there is
none), parse rates, summaries along each axis, the top generations and judge agreement.

A pair without a valid verdict has an empty `score` and the reason in `parse_error`: a parse
failure is counted, never scored."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..experiment.stages import pair_key
from .agreement import overall_reliability, pairwise_agreement, score_summary
from .reliability import METHOD, with_methods
from .scoring import read_verdict

PARSED_SCORE_COLUMNS = [
    "generation_task_id",
    "evaluation_task_id",
    "combo_id",
    "concept_ids",
    "generation_template_id",
    "generation_model_id",
    "evaluation_template_id",
    "evaluation_model_id",
    "generation_replicate",
    "evaluation_replicate",
    "score",
    "parse_error",
    "response_path",
    "score_line",
]
NO_RESPONSE = "no evaluation response stored"
# A stored judge answer that does not match its sidecar (edited or cut short) is not read: it is
# neither scored nor a parse failure (store/write_once.py, read_stored).
UNVERIFIED = "the stored answer does not match its sidecar"
# A method whose judge answers parse less often than this needs a look (prompt, parser or model).
MIN_PARSE_RATE_PERCENT = 95
TOP_N = 20
SUMMARY_STATS = ["n_scored", "n_failed", "mean", "std", "min", "max"]
TOP_COLUMNS = [
    "rank",
    "generation_task_id",
    "mean_score",
    "n_evaluations",
    "min_score",
    "max_score",
    "concept_ids",
    "generation_template_id",
    "generation_model_id",
    "response_path",
]
AGREEMENT_COLUMNS = ["judge_a", "judge_b", "n_judges", "n_items", "spearman", "mean_abs_diff", "krippendorff_alpha"]
ALL_JUDGES = "all judges"
DECIMALS = 3


def parse_scores(
    evaluation_tasks: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    answers: dict[str, str],
    response_path,
    unverified: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per pair of the evaluation table: the judge's score, or why there is none, and
    `score_line`, the line of the answer (1-based) the score statement was read from. A pair in
    `unverified` (pair key -> why its stored answer does not match its sidecar) has no score."""
    unverified = unverified or {}
    scales = evaluation_templates.set_index("template_id")[["score_min", "score_max"]]
    generation_tasks = _with_replicate(generation_tasks, "generation_replicate")
    table = _with_replicate(evaluation_tasks, "evaluation_replicate").merge(
        generation_tasks[
            [
                "generation_task_id",
                "combo_id",
                "concept_ids",
                "generation_template_id",
                "generation_model_id",
                "generation_replicate",
            ]
        ],
        on="generation_task_id",
        how="left",
    )
    scores, errors, paths, lines = [], [], [], []
    for row in table.itertuples(index=False):
        key = pair_key(row.generation_task_id, row.evaluation_task_id)
        text = answers.get(key)
        paths.append(str(response_path(row.generation_task_id, row.evaluation_task_id)))
        if text is None:
            scores.append(None)
            errors.append(f"{UNVERIFIED} ({unverified[key]})" if key in unverified else NO_RESPONSE)
            lines.append(None)
            continue
        scale = tuple(scales.loc[row.evaluation_template_id]) if row.evaluation_template_id in scales.index else (0.0, 10.0)
        verdict = read_verdict(text, scale)
        scores.append(None if verdict.reason else verdict.score)
        errors.append(verdict.reason or None)
        lines.append(None if verdict.line is None else verdict.line + 1)
    table["score"] = pd.Series(scores, index=table.index, dtype="float64")
    table["parse_error"] = pd.Series(errors, index=table.index, dtype="object")
    table["response_path"] = paths
    table["score_line"] = pd.array(lines, dtype="Int64")
    return table[PARSED_SCORE_COLUMNS]


def _with_replicate(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """A task table with its replicate column (tables built before replicates existed lack it: 1)."""
    return table if column in table.columns else table.assign(**{column: 1})


def parse_rates(parsed: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation method: pairs, judge answers stored, answers parsed, and the parse rate.

    The rate is parsed / answered: a pair whose judge has not answered yet, or whose stored answer
    does not match its sidecar, is not a parse failure (it is counted in `unanswered`).
    `parse_rate` is NaN for a method with no answers."""
    answered = ~unanswered(parsed)
    frame = pd.DataFrame(
        {
            "evaluation_task_id": parsed["evaluation_task_id"],
            "pairs": 1,
            "answered": answered.astype(int),
            "parsed": parsed["score"].notna().astype(int),
        }
    )
    out = frame.groupby("evaluation_task_id", sort=True)[["pairs", "answered", "parsed"]].sum().reset_index()
    out["parse_failures"] = out["answered"] - out["parsed"]
    out["unanswered"] = out["pairs"] - out["answered"]
    out["parse_rate"] = out["parsed"] / out["answered"].where(out["answered"] > 0)
    # Integer comparison, so exactly 95% passes whatever the float rounding.
    out["below_threshold"] = (out["answered"] > 0) & (out["parsed"] * 100 < MIN_PARSE_RATE_PERCENT * out["answered"])
    return out


def unanswered(parsed: pd.DataFrame) -> pd.Series:
    """The pairs with no judge answer to read: none stored, or one that does not match its sidecar."""
    errors = parsed["parse_error"].astype("string")
    return errors.eq(NO_RESPONSE).fillna(False) | errors.str.startswith(UNVERIFIED).fillna(False)


def parse_rate_markdown(rates: pd.DataFrame) -> str:
    if rates.empty:
        return "_no evaluation pairs_"
    lines = [
        "| evaluation method | pairs | answered | parsed | parse failures | parse rate | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rates.itertuples(index=False):
        rate = "–" if pd.isna(r.parse_rate) else f"{100 * r.parse_rate:.1f}%"
        status = (
            "no answers yet" if r.answered == 0 else f"below {MIN_PARSE_RATE_PERCENT}%" if r.below_threshold else "ok"
        )
        lines.append(
            f"| {r.evaluation_task_id} | {r.pairs} | {r.answered} | {r.parsed} | {r.parse_failures} | {rate} | {status} |"
        )
    return "\n".join(lines)


def summarize(parsed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Score statistics per group: scored and failed counts, mean, sample std, min and max."""
    df = score_summary(parsed, by).rename(columns={"count": "n_scored"})
    df[["mean", "std", "min", "max"]] = df[["mean", "std", "min", "max"]].round(DECIMALS)
    return df[[*by, *SUMMARY_STATS]]


def top_generations_table(parsed: pd.DataFrame, response_path, n: int = TOP_N) -> pd.DataFrame:
    """The `n` generations with the highest mean score over all their parsed judge scores.

    Ties share a rank and are listed by generation_task_id; generations with no score are left out."""
    scored = parsed[parsed["score"].notna()]
    info_columns = ["concept_ids", "generation_template_id", "generation_model_id"]
    stats = scored.groupby("generation_task_id")["score"].agg(["mean", "count", "min", "max"]).reset_index()
    stats.columns = ["generation_task_id", "mean_score", "n_evaluations", "min_score", "max_score"]
    info = parsed.drop_duplicates("generation_task_id").set_index("generation_task_id")[info_columns]
    stats = stats.join(info, on="generation_task_id")
    stats["mean_score"] = stats["mean_score"].round(DECIMALS)
    stats = stats.sort_values(["mean_score", "generation_task_id"], ascending=[False, True], ignore_index=True)
    stats["rank"] = stats["mean_score"].rank(method="min", ascending=False).astype(int)
    top = stats.head(n).copy()
    top["response_path"] = [str(response_path(g)) for g in top["generation_task_id"]]
    return top[TOP_COLUMNS]


def judge_agreement_table(parsed: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Agreement of every pair of evaluation methods over the generations both scored, plus all of them.

    One row per pair (Spearman, mean absolute difference, Krippendorff's alpha of the two), then a
    last row `all judges` with the overall alpha (interval) over every generation scored at least
    twice. Returns the table and the overall reliability dict. The replicates of a method count
    as that one method, by their mean score (their agreement with each other is judge_reliability's)."""
    parsed = with_methods(parsed)
    args = ("generation_task_id", METHOD, "score")
    pairs = pairwise_agreement(parsed, *args)
    alphas = [
        overall_reliability(parsed[parsed[METHOD].isin([a, b])], *args)["krippendorff_alpha_interval"]
        for a, b in zip(pairs["judge_a"], pairs["judge_b"])
    ]
    pairs = pairs.assign(n_judges=2, krippendorff_alpha=pd.Series(alphas, index=pairs.index, dtype="float64"))
    overall = overall_reliability(parsed, *args)
    total = pd.DataFrame(
        [
            {
                "judge_a": ALL_JUDGES,
                "judge_b": ALL_JUDGES,
                "n_judges": overall["n_judges"],
                "n_items": overall["n_items"],
                "spearman": np.nan,
                "mean_abs_diff": np.nan,
                "krippendorff_alpha": overall["krippendorff_alpha_interval"],
            }
        ]
    )
    table = pd.concat([pairs[AGREEMENT_COLUMNS], total], ignore_index=True) if len(pairs) else total
    numeric = ["spearman", "mean_abs_diff", "krippendorff_alpha"]
    table[numeric] = table[numeric].astype("float64").round(DECIMALS)
    return table[AGREEMENT_COLUMNS], overall


def mean_score_matrix(parsed: pd.DataFrame, rows: str, columns: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean parsed score and number of scores per (rows value, columns value); NaN mean = no score."""
    grouped = parsed.groupby([rows, columns], dropna=False)["score"]
    means = grouped.mean().unstack(columns)
    counts = grouped.count().unstack(columns).reindex_like(means).fillna(0).astype(int)
    return means, counts


def score_scale(evaluation_templates: pd.DataFrame, template_ids) -> tuple[float, float] | tuple[None, None]:
    """The span of the score scales of the evaluation templates in use (None when unknown)."""
    used = evaluation_templates[evaluation_templates["template_id"].isin(set(template_ids))]
    if used.empty:
        return None, None
    return float(used["score_min"].min()), float(used["score_max"].max())
