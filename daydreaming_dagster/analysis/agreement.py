"""Agreement statistics between LLM judges, over a long table of scores.

Input is one row per (item, judge) score.  If a judge scored the same item
more than once (replicates), the replicate scores are averaged before any
agreement statistic is computed.  Missing scores (NaN/None, e.g. parse
failures) -- and any non-numeric value, which is coerced to NaN -- are treated
as "not rated".
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd

# scipy.stats and krippendorff are imported where used: they add ~3 s to the start of every
# process that loads the code location (each run launched by the daemon is one).

PAIRWISE_COLUMNS = ["judge_a", "judge_b", "n_items", "spearman", "mean_abs_diff"]


def _item_by_judge(scores: pd.DataFrame, item_col: str, judge_col: str, score_col: str) -> pd.DataFrame:
    """Wide table: one row per item, one column per judge, mean score (NaN = not rated)."""
    values = pd.to_numeric(scores[score_col], errors="coerce")
    return values.groupby([scores[item_col], scores[judge_col]]).mean().unstack(judge_col)


def pairwise_agreement(
    scores: pd.DataFrame, item_col: str, judge_col: str, score_col: str
) -> pd.DataFrame:
    """One row per unordered judge pair (``judge_a < judge_b``) sharing >= 2 rated items.

    Columns: ``judge_a, judge_b, n_items, spearman, mean_abs_diff``.  Items that
    either judge left unrated are excluded from that pair.  ``spearman`` is NaN
    when undefined (e.g. one judge gave every shared item the same score).
    """
    wide = _item_by_judge(scores, item_col, judge_col, score_col)
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        shared = wide[[a, b]].dropna()
        if len(shared) < 2:
            continue
        with warnings.catch_warnings():
            from scipy import stats

            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho = stats.spearmanr(shared[a], shared[b]).statistic
        rows.append(
            {
                "judge_a": a,
                "judge_b": b,
                "n_items": len(shared),
                "spearman": float(rho),
                "mean_abs_diff": float((shared[a] - shared[b]).abs().mean()),
            }
        )
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def overall_reliability(
    scores: pd.DataFrame, item_col: str, judge_col: str, score_col: str
) -> dict:
    """Krippendorff's alpha (interval) across all judges.

    Returns ``{"krippendorff_alpha_interval", "n_items", "n_judges"}`` where
    ``n_items`` counts items rated by at least two judges (the only items that
    carry information about agreement) and ``n_judges`` counts judges with at
    least one rating.  Alpha is NaN when there are fewer than 2 judges, fewer
    than 2 such items, or no variation at all in the pooled scores.
    """
    wide = _item_by_judge(scores, item_col, judge_col, score_col)
    pairable = wide[wide.notna().sum(axis=1) >= 2]
    n_items = len(pairable)
    n_judges = int(wide.notna().any(axis=0).sum())
    alpha = math.nan
    if n_judges >= 2 and n_items >= 2:
        data = pairable.loc[:, pairable.notna().any(axis=0)].T.to_numpy(dtype=float)
        if np.unique(data[~np.isnan(data)]).size > 1:
            import krippendorff

            alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
    return {"krippendorff_alpha_interval": alpha, "n_items": n_items, "n_judges": n_judges}


def score_summary(scores: pd.DataFrame, by: list[str], score_col: str = "score") -> pd.DataFrame:
    """Per group: ``count`` (non-null), ``mean``, ``std``, ``min``, ``max``, ``n_failed`` (null scores).

    ``std`` is the sample standard deviation (NaN for a single score).  Rows are
    sorted by the group columns; groups whose key is NaN are kept.
    """
    values = pd.to_numeric(scores[score_col], errors="coerce")
    frame = scores[by].assign(_score=values, _failed=values.isna())
    grouped = frame.groupby(by, dropna=False, sort=True)
    out = grouped["_score"].agg(["count", "mean", "std", "min", "max"])
    out["n_failed"] = grouped["_failed"].sum().astype(int)
    return out.reset_index().sort_values(by, kind="stable", ignore_index=True)


def warm_up() -> None:
    """Import scipy.stats and krippendorff now, so a process can pay for them while it waits and
    compute the agreement tables at once later."""
    import krippendorff  # noqa: F401
    from scipy import stats  # noqa: F401
