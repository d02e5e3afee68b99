"""Results that replicates make possible: each method's spread over its replicates on every
generation, each judge method's test-retest reliability, and how the variance of the scores splits
between generations, templates, models and judge noise. Same group and folder as results.py."""

import dagster as dg
import numpy as np
import pandas as pd

from ..analysis import reliability as stats
from .common import md_preview
from .results import RESULTS_META

GROUP = "results"


def _number(value: float, reason: str) -> dg.MetadataValue:
    return dg.MetadataValue.float(float(value)) if np.isfinite(value) else dg.MetadataValue.text(reason)


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def replicate_scores(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Per generation task x evaluation method (template x judge): how many replicates were asked and
    scored, and the mean, std, min and max of their scores."""
    df = stats.replicate_scores(parsed_scores)
    spread = df["std"].dropna()
    return dg.Output(
        df,
        metadata={
            "rows": len(df),
            "max_replicates": int(df["n_replicates"].max()) if len(df) else 0,
            "median_std": _number(float(spread.median()) if len(spread) else np.nan, "needs evaluation_replicates >= 2"),
            "preview": md_preview(df, ["generation_task_id", "evaluation_method_id", "n_scored", "mean", "std"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def judge_reliability(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Test-retest reliability of every evaluation method over its replicates: Krippendorff's alpha
    (interval) with the replicates as coders, the noise of one verdict in points (`noise_std`)
    against the spread between generations (`between_std`), and how often every replicate agreed."""
    df = stats.judge_reliability(parsed_scores)
    alphas = df["krippendorff_alpha"].dropna()
    return dg.Output(
        df,
        metadata={
            "methods": len(df),
            "lowest_alpha": _number(float(alphas.min()) if len(alphas) else np.nan, "needs evaluation_replicates >= 2"),
            "preview": md_preview(df),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def score_variance(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """How the variance of the scores splits: between generation templates, generation models,
    concept combinations and evaluation methods; between generation replicates (what the generator
    happened to sample); judge noise (between evaluation replicates); and interactions."""
    df = stats.variance_components(parsed_scores)
    noise = df.loc[df["component"].str.startswith("judge noise"), "share"]
    return dg.Output(
        df,
        metadata={
            "judge_noise_share": _number(float(noise.iloc[0]) if len(noise) else np.nan, "no scores yet"),
            "preview": md_preview(df),
        },
    )
