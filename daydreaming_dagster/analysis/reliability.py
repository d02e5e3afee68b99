"""What replicates tell: the spread of a method's scores over its replicates on each generation,
each judge method's test-retest reliability, and how much of the score variance is judge noise
and how much lies between generations, templates and models.

Pure functions of the parsed scores (one row per evaluation pair). A replicate of an evaluation
method is a method key of its own (`<template>__<judge>__r2`); here the replicates of a method are
brought back together under its method id (`<template>__<judge>`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..experiment.ids import without_replicate
from .agreement import overall_reliability

DECIMALS = 3
METHOD = "evaluation_method_id"
REPLICATE_SCORE_COLUMNS = [
    "generation_task_id",
    METHOD,
    "combo_id",
    "generation_template_id",
    "generation_model_id",
    "evaluation_template_id",
    "evaluation_model_id",
    "n_replicates",
    "n_scored",
    "mean",
    "std",
    "min",
    "max",
]
RELIABILITY_COLUMNS = [
    METHOD,
    "evaluation_template_id",
    "evaluation_model_id",
    "n_replicates",
    "n_items",
    "krippendorff_alpha",
    "noise_std",
    "between_std",
    "exact_agreement",
]
VARIANCE_COLUMNS = ["component", "grouped_by", "levels", "sum_of_squares", "share", "note"]
# (component, the columns that define its groups): the main effects, in the order a reader asks.
MAIN_EFFECTS = [
    ("generation template", ["generation_template_id"]),
    ("generation model", ["generation_model_id"]),
    ("concept combination", ["combo_id"]),
    ("evaluation method (template x judge)", [METHOD]),
]
GENERATION = ["combo_id", "generation_template_id", "generation_model_id"]


def with_methods(parsed: pd.DataFrame) -> pd.DataFrame:
    """The parsed scores with `evaluation_method_id`: the evaluation_task_id without its replicate."""
    return parsed.assign(**{METHOD: [without_replicate(str(t), 2) for t in parsed["evaluation_task_id"]]})


def replicate_scores(parsed: pd.DataFrame) -> pd.DataFrame:
    """Per generation task x evaluation method: replicates asked, replicates scored, and the mean,
    sample std, min and max of their scores (std is empty below two scores)."""
    df = with_methods(parsed)
    keys = ["generation_task_id", METHOD]
    context = [*GENERATION, "evaluation_template_id", "evaluation_model_id"]
    grouped = df.groupby(keys, sort=True)
    out = grouped[context].first()
    out["n_replicates"] = grouped.size()
    stats = grouped["score"].agg(["count", "mean", "std", "min", "max"]).rename(columns={"count": "n_scored"})
    out = out.join(stats).reset_index()
    out[["mean", "std", "min", "max"]] = out[["mean", "std", "min", "max"]].round(DECIMALS)
    return out[REPLICATE_SCORE_COLUMNS]


def judge_reliability(parsed: pd.DataFrame) -> pd.DataFrame:
    """Test-retest reliability of every evaluation method over its replicates.

    Per method: `n_items`, the generations scored by at least two of its replicates;
    `krippendorff_alpha` (interval), with the replicates as the coders, 1 = a replicate always
    repeats the verdict, 0 = no better than chance (empty when undefined: fewer than two such
    generations, or no variation at all); `noise_std`, the typical distance in points between a
    replicate's score and the method's mean on that generation (pooled within-generation standard
    deviation); `between_std`, the spread of those means across generations (the signal the
    noise is measured against); `exact_agreement`, the share of generations on which every
    replicate gave the same score."""
    df = with_methods(parsed)
    rows = []
    for method, scores in df.groupby(METHOD, sort=True):
        first = scores.iloc[0]
        reliability = overall_reliability(scores, "generation_task_id", "evaluation_task_id", "score")
        scored = scores[scores["score"].notna()]
        per_item = scored.groupby("generation_task_id")["score"]
        counts = per_item.count()
        repeated = counts[counts >= 2].index
        within = per_item.var(ddof=1).reindex(repeated)
        spread = per_item.agg(lambda s: s.max() - s.min()).reindex(repeated)
        means = per_item.mean()
        rows.append(
            {
                METHOD: method,
                "evaluation_template_id": first["evaluation_template_id"],
                "evaluation_model_id": first["evaluation_model_id"],
                "n_replicates": int(scores["evaluation_task_id"].nunique()),
                "n_items": len(repeated),
                "krippendorff_alpha": reliability["krippendorff_alpha_interval"],
                "noise_std": math.sqrt(within.mean()) if len(repeated) else np.nan,
                "between_std": float(means.std(ddof=1)) if len(means) >= 2 else np.nan,
                "exact_agreement": float((spread == 0).mean()) if len(repeated) else np.nan,
            }
        )
    out = pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)
    numeric = ["krippendorff_alpha", "noise_std", "between_std", "exact_agreement"]
    out[numeric] = out[numeric].astype("float64").round(DECIMALS)
    return out


def _sum_of_squares(values: pd.Series, by: pd.DataFrame, around: pd.Series) -> float:
    """Sum over scores of (mean of the score's group - `around`)^2."""
    means = values.groupby([by[c] for c in by.columns]).transform("mean")
    return float(((means - around) ** 2).sum())


def variance_components(parsed: pd.DataFrame) -> pd.DataFrame:
    """How the variance of the scores splits, as shares of the total sum of squares.

    Main effects: how far the mean score of each generation template, generation model, concept
    combination and evaluation method lies from the overall mean. Generation sampling: how far the
    mean score of each generation replicate lies from the mean of its (combination, template,
    model), i.e. how much the answer a generator happens to sample moves its scores. Judge noise:
    how far each score lies from the mean of its replicates (same generation, same method), i.e.
    how much a judge disagrees with itself. What remains is interactions (a template that suits one
    model better than another, a judge that prefers one template, ...). With a complete design every
    part is a separate share and they add up to the total; with missing scores they are close.
    `share` is the part's share of the total sum of squares (eta squared); the judge-noise row also
    notes the noise variance of one score, which is what a single judge verdict carries."""
    df = with_methods(parsed)
    df = df[df["score"].notna()]
    if len(df) < 2:
        return pd.DataFrame(columns=VARIANCE_COLUMNS)
    y = df["score"].astype(float)
    grand = pd.Series(y.mean(), index=y.index)
    total = float(((y - grand) ** 2).sum())
    rows = []
    for component, columns in MAIN_EFFECTS:
        rows.append(_row(component, columns, df, _sum_of_squares(y, df[columns], grand), total))
    by_generation = y.groupby([df[c] for c in GENERATION]).transform("mean")
    sampled = df["generation_task_id"].nunique() > df.groupby(GENERATION).ngroups
    rows.append(
        _row(
            "generation sampling (between generation replicates)",
            ["generation_task_id"],
            df,
            _sum_of_squares(y, df[["generation_task_id"]], by_generation),
            total,
            "" if sampled else "needs generation_replicates >= 2",
        )
    )
    cell_of = [df["generation_task_id"], df[METHOD]]
    noise = float(((y - y.groupby(cell_of).transform("mean")) ** 2).sum())
    n_cells = df.groupby(["generation_task_id", METHOD]).ngroups
    if len(df) > n_cells:
        # The sum of squares within (generation, method) holds (r-1)/r of the noise of r replicates;
        # its mean square is the noise variance of one score.
        per_score = noise / (len(df) - n_cells)
        note = f"noise variance of one score {per_score:.3g} = {per_score / (total / (len(df) - 1)):.0%} of the score variance"
    else:
        note = "needs evaluation_replicates >= 2"
    rows.append(_row("judge noise (between evaluation replicates)", ["generation_task_id", METHOD], df, noise, total, note))
    rest = max(total - sum(r["sum_of_squares"] for r in rows), 0.0)
    rows.append(_row("interactions and the rest", [], df, rest, total, "what the parts above leave unexplained"))
    rows.append(_row("total", [], df, total, total, "all scored pairs"))
    out = pd.DataFrame(rows, columns=VARIANCE_COLUMNS)
    out[["sum_of_squares", "share"]] = out[["sum_of_squares", "share"]].astype("float64").round(DECIMALS)
    return out


def _row(component: str, columns: list[str], df: pd.DataFrame, ss: float, total: float, note: str = "") -> dict:
    """One component; `levels` is its number of groups (for the total: of scores)."""
    return {
        "component": component,
        "grouped_by": " x ".join(columns),
        "levels": int(df.groupby(columns).ngroups) if columns else (len(df) if component == "total" else np.nan),
        "sum_of_squares": ss,
        "share": ss / total if total else np.nan,
        "note": note,
    }
