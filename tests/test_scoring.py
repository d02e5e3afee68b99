import re

import pytest

from daydreaming_dagster.analysis.scoring import Verdict, explain_parse, parse_score, read_verdict

CASES = [
    # --- the formats judges actually produce -------------------------------
    ("plain", "Reasoning...\n\nSCORE: 7", 7.0),
    ("bold label and fraction", "Good idea.\n**SCORE:** **6/10**", 6.0),
    ("markdown heading final score", "## Analysis\n...\n### **Final Score:** **8/10**", 8.0),
    ("value on the next line", "Some analysis.\n\nFinal Score\n**2/10**", 2.0),
    ("value on the line after a blank line", "Final Score:\n\n**5/10**\n", 5.0),
    (
        "rounding then explicit SCORE",
        "Novelty: 2/3\nTotal Score: 6.5/10 → Rounded to **7/10**\n\nJustification...\n**SCORE:** 7",
        7.0,
    ),
    ("rounding statement alone", "Total Score: 6.5/10 → Rounded to **7/10**", 7.0),
    ("rounded up to", "Overall score: 7.5, rounded up to 8", 8.0),
    (
        "reasoning model thinks aloud first",
        "Let me add it up. Total score 8 ... Hmm, that's too generous. "
        "I'll go with 6.\n\nSCORE: 6",
        6.0,
    ),
    ("think block ignored", "<think>SCORE: 3? no...</think>\nRating: 8/10", 8.0),
    ("decimal", "Score: 7.5", 7.5),
    ("equals sign", "score = 8", 8.0),
    ("rating fraction", "Rating: 9/10", 9.0),
    ("out of", "Overall: 7 out of 10", 7.0),
    ("square brackets", "SCORE: [7]", 7.0),
    ("trailing full stop", "SCORE: 7.", 7.0),
    ("dash separator", "SCORE - 4", 4.0),
    ("no space after colon", "SCORE:9", 9.0),
    ("lower case final score prose", "All things considered, the final score is 9.", 9.0),
    ("score would be", "My score would be 4 out of 10.", 4.0),
    ("boxed", "SCORE: \\boxed{7}", 7.0),
    ("backticks", "SCORE: `3`", 3.0),
    ("json", '{"novelty": 2, "final_score": 8}', 8.0),
    ("zero is a real score", "SCORE: 0", 0.0),
    ("top of the scale", "SCORE: 10/10", 10.0),
    # --- several candidate numbers: only the final verdict counts -----------
    ("sub-score fraction then verdict", "Score: 3/5 for novelty ... SCORE: 8", 8.0),
    ("criteria lines ignored", "Novelty: 1/2\nFeasibility (2/3)\nImpact: 2/2\n\nSCORE: 5", 5.0),
    ("criterion-qualified score ignored", "Novelty score: 2\nFeasibility score: 1\nOverall: 7/10", 7.0),
    ("last of several verdicts", "SCORE: 7\n\nOn reflection, that is too high.\nFinal Score: 6", 6.0),
    ("explicit SCORE beats a later total", "SCORE: 8\nTotal score: 5/10 (sum of criteria)", 8.0),
    ("labelled verdict beats later prose", "Rating: 8/10\nA score of 9 would need more rigour.", 8.0),
    ("heading followed by numbered list", "## Score\n1. Novelty: 2/3\n2. Rigour: 1/2\n\nTotal: 3", 3.0),
    # --- whitespace and line endings ---------------------------------------
    ("trailing blank lines", "SCORE: 5\n\n\n   \n", 5.0),
    ("windows line endings", "Reasoning\r\n\r\nFinal Score\r\n**4/10**\r\n", 4.0),
    ("old mac line endings", "Reasoning\rSCORE: 6\r", 6.0),
    # --- failures return None, never a low score ---------------------------
    ("no score at all", "I cannot evaluate this.", None),
    ("empty", "", None),
    ("whitespace only", "  \n\t", None),
    ("bare fraction without label", "Overall a decent idea. 7/10", None),
    ("criteria only", "Novelty: 1/2\nFeasibility: 2/3", None),
    ("above range", "SCORE: 12", None),
    ("negative", "SCORE: -1", None),
    ("wrong denominator", "Score: 7/100", None),
    ("out-of-range final verdict is not replaced by an earlier one", "SCORE: 7\nSCORE: 11", None),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_score_default_scale(text, expected):
    assert parse_score(text) == expected


SCALE_1_5 = [
    ("in range", "SCORE: 4", 4.0),
    ("fraction over 5", "Rating: 4/5", 4.0),
    ("3/5 is a verdict on this scale", "Score: 3/5", 3.0),
    ("below minimum", "SCORE: 0", None),
    ("above maximum", "SCORE: 8", None),
    ("ten-point fraction is not on this scale", "Score: 6/10", None),
    ("ten-point sub-score ignored", "Novelty: 6/10\nFinal score: 2/5", 2.0),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in SCALE_1_5], ids=[c[0] for c in SCALE_1_5])
def test_parse_score_custom_scale(text, expected):
    assert parse_score(text, scale=(1, 5)) == expected


def test_parse_score_returns_float():
    assert isinstance(parse_score("SCORE: 7"), float)


@pytest.mark.parametrize(
    "text, scale, reason",
    [
        ("I cannot evaluate this.", (0, 10), "no score statement found"),
        ("", (0, 10), "empty response"),
        ("SCORE: 12", (0, 10), "score 12 is outside 0-10"),
        ("SCORE: -1", (0.0, 10.0), "score -1 is outside 0-10"),
        ("SCORE: 5.5", (1, 5), "score 5.5 is outside 1-5"),
        ("Score: 6/10", (1, 5), "score 6/10 is not on the 1-5 scale"),
    ],
)
def test_explain_parse_failure_reasons(text, scale, reason):
    assert explain_parse(text, scale) == (None, reason)


def test_explain_parse_success_has_empty_reason():
    assert explain_parse("**SCORE:** **6/10**") == (6.0, "")
    assert explain_parse("SCORE: 4", (1, 5)) == (4.0, "")


def test_parse_score_agrees_with_explain_parse():
    for _, text, _ in CASES:
        assert parse_score(text) == explain_parse(text)[0]


# The report highlights the line a verdict came from: the line of its value, counted from 0 over the
# answer split the way the report's page splits it (at \r\n, \r or \n).
LINE_CASES = [
    ("last line", "Reasoning...\n\nSCORE: 7", 2),
    ("first of two verdicts loses", "SCORE: 7\n\nOn reflection, too high.\nFinal Score: 6", 3),
    ("value on the line after its label", "Some analysis.\n\nFinal Score\n**2/10**", 3),
    ("windows line endings", "Reasoning\r\n\r\nFinal Score\r\n**4/10**\r\n", 3),
    ("old mac line endings", "Reasoning\rSCORE: 6\r", 1),
    ("after a think block spanning lines", "<think>\nSCORE: 3?\nno\n</think>\nRating: 8/10", 4),
    ("a verdict inside a long one-line answer", "Good. " * 50 + "SCORE: 5", 0),
    ("rounded on the same line", "Notes\nTotal Score: 6.5/10 -> Rounded to **7/10**", 1),
]


@pytest.mark.parametrize("text, line", [c[1:] for c in LINE_CASES], ids=[c[0] for c in LINE_CASES])
def test_read_verdict_names_the_line_of_the_score(text, line):
    verdict = read_verdict(text)
    assert verdict.line == line
    assert verdict.score is not None
    assert re.search(r"\d", re.split(r"\r\n|\r|\n", text)[line])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Nice.\nSCORE: 12", Verdict(None, "score 12 is outside 0-10", 1)),  # the rejected statement's line
        ("Nice.\nScore: 6/100", Verdict(None, "score 6/100 is not on the 0-10 scale", 1)),
        ("Nice, no number.", Verdict(None, "no score statement found", None)),
        ("  ", Verdict(None, "empty response", None)),
    ],
)
def test_read_verdict_of_failures(text, expected):
    assert read_verdict(text) == expected


def test_read_verdict_agrees_with_explain_parse():
    for _, text, _ in CASES:
        assert read_verdict(text)[:2] == explain_parse(text)
