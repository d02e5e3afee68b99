import math
import warnings

import numpy as np
import pandas as pd
import pytest

from daydreaming_dagster.analysis.agreement import overall_reliability, pairwise_agreement, score_summary


def long_table(wide: dict[str, list]) -> pd.DataFrame:
    """{judge: [score per item i1, i2, ...]} -> long table (item, judge, score)."""
    return pd.DataFrame(
        [
            {"item": f"i{k + 1}", "judge": judge, "score": s}
            for judge, col in wide.items()
            for k, s in enumerate(col)
        ]
    )


def pairwise(wide):
    return pairwise_agreement(long_table(wide), "item", "judge", "score")


def reliability(wide):
    return overall_reliability(long_table(wide), "item", "judge", "score")


# ---------------------------------------------------------------- pairwise


def test_pairwise_perfect_monotone():
    # ranks identical -> rho = 1; |1-2| + |2-4| + |3-6| = 1 + 2 + 3 = 6, / 3 = 2.0
    out = pairwise({"a": [1, 2, 3], "b": [2, 4, 6]})
    assert list(out.columns) == ["judge_a", "judge_b", "n_items", "spearman", "mean_abs_diff"]
    assert out.to_dict("records") == [
        {"judge_a": "a", "judge_b": "b", "n_items": 3, "spearman": pytest.approx(1.0), "mean_abs_diff": 2.0}
    ]


def test_pairwise_hand_computed_rho_and_order():
    # a = [1,2,3,4], b = [1,3,2,4]: rank differences d = 0,-1,1,0, sum d^2 = 2
    # rho = 1 - 6*2 / (4*(16-1)) = 1 - 12/60 = 0.8;  mean|diff| = (0+1+1+0)/4 = 0.5
    # c = [4,3,2,1] is a reversed: rho(a,c) = -1; |diffs| = 3,1,1,3 -> 2.0
    # b vs c: ranks b = 1,3,2,4 and c = 4,3,2,1: d = -3,0,0,3, sum d^2 = 18
    # rho = 1 - 6*18/60 = -0.8;  |diffs| = 3,0,0,3 -> 1.5
    # Judges are given in non-sorted order to check judge_a < judge_b.
    out = pairwise({"c": [4, 3, 2, 1], "b": [1, 3, 2, 4], "a": [1, 2, 3, 4]})
    assert list(zip(out.judge_a, out.judge_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert out.n_items.tolist() == [4, 4, 4]
    assert out.spearman.tolist() == pytest.approx([0.8, -1.0, -0.8])
    assert out.mean_abs_diff.tolist() == pytest.approx([0.5, 2.0, 1.5])


def test_pairwise_with_ties():
    # a = [1,1,2], b = [1,2,3]: ranks a = 1.5,1.5,3, b = 1,2,3
    # Pearson on ranks: centred a = -.5,-.5,1; centred b = -1,0,1
    # cov = .5+0+1 = 1.5; |a| = sqrt(.25+.25+1) = sqrt(1.5); |b| = sqrt(2)
    # rho = 1.5 / sqrt(3) = sqrt(3)/2;  mean|diff| = (0+1+1)/3 = 2/3
    out = pairwise({"a": [1, 1, 2], "b": [1, 2, 3]})
    assert out.spearman[0] == pytest.approx(math.sqrt(3) / 2)
    assert out.mean_abs_diff[0] == pytest.approx(2 / 3)


def test_pairwise_nan_items_excluded_from_that_pair_only():
    # a-b share i1, i2, i4 (b missing i3): a = [1,2,4], b = [3,2,1] -> rho = -1
    #   mean|diff| = (2 + 0 + 3)/3 = 5/3
    # a-c share all four: a = [1,2,3,4], c = [1,2,3,5] -> rho = 1, mean|diff| = 1/4
    # b-c share i1, i2, i4: b = [3,2,1], c = [1,2,5] -> rho = -1, (2+0+4)/3 = 2
    out = pairwise({"a": [1, 2, 3, 4], "b": [3, 2, np.nan, 1], "c": [1, 2, 3, 5]})
    assert out.n_items.tolist() == [3, 4, 3]
    assert out.spearman.tolist() == pytest.approx([-1.0, 1.0, -1.0])
    assert out.mean_abs_diff.tolist() == pytest.approx([5 / 3, 0.25, 2.0])


def test_pairwise_pair_without_enough_shared_items_is_absent():
    # a and b share no item; a and c share only i1 -> neither pair appears.
    # b and c share i2, i3: b = [5, 6], c = [7, 9] -> rho = 1, (2 + 3)/2 = 2.5
    scores = pd.DataFrame(
        {
            "item": ["i1", "i2", "i3", "i1", "i2", "i3"],
            "judge": ["a", "b", "b", "c", "c", "c"],
            "score": [1, 5, 6, 3, 7, 9],
        }
    )
    out = pairwise_agreement(scores, "item", "judge", "score")
    assert out.to_dict("records") == [
        {"judge_a": "b", "judge_b": "c", "n_items": 2, "spearman": pytest.approx(1.0), "mean_abs_diff": 2.5}
    ]


def test_pairwise_constant_scores_give_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pairwise({"a": [5, 5, 5], "b": [1, 2, 3]})
    assert math.isnan(out.spearman[0])
    assert out.mean_abs_diff[0] == pytest.approx((4 + 3 + 2) / 3)


def test_pairwise_empty_result_keeps_columns():
    out = pairwise({"a": [1, 2, 3]})
    assert out.empty
    assert list(out.columns) == ["judge_a", "judge_b", "n_items", "spearman", "mean_abs_diff"]


def test_pairwise_replicates_are_averaged():
    # a scored i1 twice (1 and 3 -> 2); a = [2, 4], b = [2, 5] -> rho 1, (0 + 1)/2 = 0.5
    scores = pd.DataFrame(
        {
            "item": ["i1", "i1", "i2", "i1", "i2"],
            "judge": ["a", "a", "a", "b", "b"],
            "score": [1, 3, 4, 2, 5],
        }
    )
    out = pairwise_agreement(scores, "item", "judge", "score")
    assert out.mean_abs_diff.tolist() == pytest.approx([0.5])
    assert out.n_items.tolist() == [2]


# ---------------------------------------------------------- krippendorff


def test_alpha_two_judges_complete_data_hand_computed():
    # Interval alpha = 1 - D_o / D_e, n = number of pairable values.
    # a = [1,2,3], b = [1,2,4]; n = 6.
    # D_o = (1/n) * sum_u sum_{ordered pairs c!=k} (v_c - v_k)^2 / (m_u - 1)
    #     = (1/6) * (0 + 0 + 2*(3-4)^2 / 1) = 2/6 = 1/3
    # D_e = sum_{ordered i!=j} (v_i - v_j)^2 / (n (n-1)) over pooled 1,1,2,2,3,4
    #     sum_{i<j} = n*sum(v^2) - (sum v)^2 = 6*35 - 13^2 = 41 -> ordered 82
    #     D_e = 82 / 30 = 41/15
    # alpha = 1 - (1/3) / (41/15) = 1 - 5/41 = 36/41
    out = reliability({"a": [1, 2, 3], "b": [1, 2, 4]})
    assert out["krippendorff_alpha_interval"] == pytest.approx(36 / 41)
    assert (out["n_items"], out["n_judges"]) == (3, 2)


def test_alpha_with_missing_values_hand_computed():
    # items:  i1   i2   i3   i4
    #   x      1    2    3    5
    #   y      2    2    -    -
    #   z      -    3    3    -
    # i4 has one rating -> not pairable, ignored. Pairable values: n = 7.
    # D_o: i1 {1,2}: 2*1/(2-1) = 2;  i2 {2,2,3}: 4 ordered pairs of diff 1 -> 4/(3-1) = 2;
    #      i3 {3,3}: 0.  D_o = 4/7
    # D_e: pooled 1,2,2,2,3,3,3: sum = 16, sum sq = 40; sum_{i<j} = 7*40 - 256 = 24
    #      ordered 48; D_e = 48 / (7*6) = 8/7
    # alpha = 1 - (4/7)/(8/7) = 0.5
    out = reliability({"x": [1, 2, 3, 5], "y": [2, 2, np.nan, np.nan], "z": [np.nan, 3, 3, np.nan]})
    assert out["krippendorff_alpha_interval"] == pytest.approx(0.5)
    assert (out["n_items"], out["n_judges"]) == (3, 3)


def test_alpha_perfect_agreement_is_one():
    out = reliability({"a": [1, 5, 9], "b": [1, 5, 9], "c": [1, 5, 9]})
    assert out["krippendorff_alpha_interval"] == pytest.approx(1.0)


def test_alpha_nan_with_one_judge():
    out = reliability({"a": [1, 2, 3]})
    assert math.isnan(out["krippendorff_alpha_interval"])
    assert (out["n_items"], out["n_judges"]) == (0, 1)


def test_alpha_nan_with_fewer_than_two_pairable_items():
    # only i1 is rated by both judges
    out = reliability({"a": [1, 2, 3], "b": [2, np.nan, np.nan]})
    assert math.isnan(out["krippendorff_alpha_interval"])
    assert (out["n_items"], out["n_judges"]) == (1, 2)


def test_alpha_nan_when_every_score_is_identical():
    # D_e = 0: alpha is undefined (the library would raise)
    out = reliability({"a": [7, 7], "b": [7, 7]})
    assert math.isnan(out["krippendorff_alpha_interval"])
    assert (out["n_items"], out["n_judges"]) == (2, 2)


def test_alpha_judge_with_only_failed_scores_is_not_counted():
    out = reliability({"a": [1, 2, 3], "b": [1, 2, 4], "c": [np.nan, np.nan, np.nan]})
    assert out["krippendorff_alpha_interval"] == pytest.approx(36 / 41)
    assert out["n_judges"] == 2


# ------------------------------------------------------------- summary


def test_score_summary_exact_values():
    scores = pd.DataFrame(
        {
            "model": ["m2", "m1", "m1", "m1", "m2", "m2", "m3"],
            "score": [4.0, 1.0, 3.0, 2.0, None, None, None],
        }
    )
    out = score_summary(scores, by=["model"])
    assert list(out.columns) == ["model", "count", "mean", "std", "min", "max", "n_failed"]
    assert out.model.tolist() == ["m1", "m2", "m3"]
    assert out["count"].tolist() == [3, 1, 0]
    assert out["n_failed"].tolist() == [0, 2, 1]
    # m1: [1,2,3] mean 2, sample std sqrt(((1)^2+0+(1)^2)/2) = 1
    m1 = out.iloc[0]
    assert (m1["mean"], m1["std"], m1["min"], m1["max"]) == (2.0, 1.0, 1.0, 3.0)
    # m2: one score -> std NaN
    m2 = out.iloc[1]
    assert (m2["mean"], m2["min"], m2["max"]) == (4.0, 4.0, 4.0)
    assert math.isnan(m2["std"])
    # m3: nothing parsed
    assert out.iloc[2][["mean", "std", "min", "max"]].isna().all()


def test_score_summary_multiple_group_columns_sorted():
    scores = pd.DataFrame(
        {
            "judge": ["j2", "j1", "j1", "j2", "j1"],
            "model": ["a", "b", "a", "a", "a"],
            "value": [6.0, 5.0, 2.0, 8.0, 4.0],
        }
    )
    out = score_summary(scores, by=["judge", "model"], score_col="value")
    assert list(out.columns) == ["judge", "model", "count", "mean", "std", "min", "max", "n_failed"]
    assert list(zip(out.judge, out.model)) == [("j1", "a"), ("j1", "b"), ("j2", "a")]
    assert out["count"].tolist() == [2, 1, 2]
    assert out["mean"].tolist() == [3.0, 5.0, 7.0]
    # j1/a: [2,4] -> std sqrt((1+1)/1) = sqrt(2); j2/a: [6,8] -> sqrt(2)
    assert out["std"].tolist()[0] == pytest.approx(math.sqrt(2))
    assert out["std"].tolist()[2] == pytest.approx(math.sqrt(2))
    assert out["n_failed"].tolist() == [0, 0, 0]
