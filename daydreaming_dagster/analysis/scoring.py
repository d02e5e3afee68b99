"""Parse an LLM judge's final score out of its free-text answer.

Judges rarely follow the requested format exactly, so the parser looks for
*score statements* (a verdict label followed by a number) and picks the one
that is the judge's final verdict.

Rules, in order:

1. Normalise: Windows/old-Mac line endings become ``\\n``; Markdown decoration
   (``*``, ``#``, backticks), double quotes and LaTeX ``\\boxed{...}`` wrappers
   are removed and ``_`` becomes a space, so ``### **Final Score:** **8/10**``
   reads ``Final Score: 8/10`` and ``{"final_score": 8}`` reads
   ``{final score: 8}``.
2. If the answer has a reasoning block closed by ``</think>``, only the text
   after the last ``</think>`` is used (when it contains a score statement).
3. A score statement is a verdict label -- ``score``, ``rating``, ``grade``,
   optionally qualified by ``final`` / ``overall`` / ``total``, or a bare
   ``Final:`` / ``Overall:`` / ``Verdict:`` -- then an optional separator
   (``:``, ``=``, ``-``, ``is``, ``of``, ...) and a value: ``7``, ``7.5``,
   ``[7]``, ``7/10`` or ``7 out of 10``.  The value may instead stand alone on
   the next line (``Final Score`` / ``2/10``).
4. Labels qualified by a criterion word (``Novelty score: 2``) are sub-scores
   and ignored.  Unlabelled numbers (``Novelty: 1/2``, ``(2/3)``) never count.
5. ``X/N`` counts only when ``N`` equals the scale maximum; other fractions are
   treated as sub-scores.  ``... rounded to 7/10`` on the same line wins over
   the unrounded value before it.
6. The verdict is the LAST statement of the most verdict-like kind.  Kinds,
   strongest first: explicit ``SCORE:`` / ``Final score:`` (a ``:``, ``=``,
   dash or line break before the value); other explicit labels (``Total
   score:``, ``Overall:``, ``Rating:`` ...); prose ``SCORE`` / ``final score``
   (``the final score is 9``, ``score 8``); other prose (``a rating of 9``).
   So ``Rating: 8/10 ... a score of 9 would need more rigour`` gives 8, and a
   reasoning model's ``Total score 8 ... I'll go with 6 ... SCORE: 6`` gives 6.
7. A chosen value outside the scale is a failure, not a clamp: a parse
   failure must never look like a low score.

``read_verdict`` also says which line the verdict was read from (the line of
its value, counting from 0 over the answer split at ``\r\n``, ``\r`` or
``\n``), so a reader can be shown it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_VALUE = r"""
    \[?[ \t]*(?P<num>-?\d+(?:\.\d+)?)(?!\d)[ \t]*\]?
    (?:[ \t]*(?:/|out[ \t]+of)[ \t]*(?P<den>\d+(?:\.\d+)?)(?!\d))?
"""
_LABEL = r"""
    (?: \b(?:(?P<qual>final|overall|total)\s+)?(?P<kind>score|rating|grade)\b
      | \b(?P<bare>final|overall|total|verdict)\b(?=[ \t]*[:=]) )
"""
_SEP = r"(?P<sep>(?:[ \t]*(?:[:=→]|=>|[-–—](?=[ \t])|\bis\b|\bof\b|\bwould[ \t]+be\b))*)[ \t]*"

_FLAGS = re.IGNORECASE | re.VERBOSE | re.MULTILINE
# Label and value on the same line: "SCORE: 7", "Rating - 9/10", "score of 7".
_SAME_LINE = re.compile(_LABEL + _SEP + _VALUE, _FLAGS)
# Label alone, value alone on a following line: "Final Score\n2/10".
_NEXT_LINE = re.compile(
    _LABEL + r"(?P<sep>[ \t]*[:=]?[ \t]*\n)\s*" + _VALUE + r"(?=[ \t]*[.!]?[ \t]*$)", _FLAGS
)
_ROUNDED = re.compile(r"\bround(?:ed|s|ing)?(?:[ \t]+(?:up|down))?[ \t]+to[ \t]+" + _VALUE, _FLAGS)
_DECORATION = re.compile(r"\\boxed\{([^{}]*)\}|[*#`\"]")
_QUALIFIER = re.compile(r"([A-Za-z]+)[ \t]+$")
# Words that may precede a verdict label without turning it into a sub-score.
_NEUTRAL_WORDS = {
    "a", "an", "the", "my", "our", "its", "their", "this", "that", "i", "it", "me",
    "final", "overall", "total", "give", "gives", "assign", "assigns", "and", "so",
    "thus", "hence", "therefore", "with", "is",
}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class Verdict(NamedTuple):
    """A judge answer's score, or None and the reason; `line` is the 0-based line of the score
    statement that decided it (also for a rejected one), None when the answer has none."""

    score: float | None
    reason: str
    line: int | None


class _Candidate(NamedTuple):
    rank: int  # higher = more verdict-like (see rule 6)
    pos: int
    value: float
    den: float | None
    line: int


def _candidates(text: str, first_line: int = 0) -> list[_Candidate]:
    """Every score statement in ``text`` (already normalised), which starts at line `first_line`."""
    found = []
    for pattern in (_SAME_LINE, _NEXT_LINE):
        for m in pattern.finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            before = _QUALIFIER.search(text[line_start : m.start()])
            if before and before.group(1).lower() not in _NEUTRAL_WORDS:
                continue  # "Novelty score: 2" -- a criterion sub-score
            num, den = m.group("num"), m.group("den")
            line_end = text.find("\n", m.end())
            rounded = _ROUNDED.search(text[m.end() : None if line_end < 0 else line_end])
            if rounded:
                num, den = rounded.group("num"), rounded.group("den")
            qual = (m.group("qual") or m.group("bare") or "").lower()
            preferred = qual == "final" or (m.group("kind") or "").lower() == "score" and not qual
            explicit = bool(re.search(r"[:=\-–—→\n]", m.group("sep")))
            line = first_line + text.count("\n", 0, m.start("num"))
            found.append(
                _Candidate(2 * explicit + preferred, m.start(), float(num), None if den is None else float(den), line)
            )
    return found


def read_verdict(text: str, scale: tuple[float, float] = (0.0, 10.0)) -> Verdict:
    """The verdict of a judge answer and the line it was read from; see the module docstring."""
    lo, hi = scale
    if not text or not text.strip():
        return Verdict(None, "empty response", None)
    # Each replacement keeps the line count, so a line found here is a line of the original answer.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("_", " ")
    text = _DECORATION.sub(lambda m: m.group(1) or "", text)
    found = []
    if "</think>" in text.lower():
        after = text.lower().rfind("</think>") + len("</think>")
        found = _candidates(text[after:], first_line=text.count("\n", 0, after))
    found = found or _candidates(text)
    if not found:
        return Verdict(None, "no score statement found", None)
    on_scale = [c for c in found if c.den is None or c.den == hi]
    if not on_scale:
        last = max(found, key=lambda c: c.pos)
        reason = f"score {_fmt(last.value)}/{_fmt(last.den)} is not on the {_fmt(lo)}-{_fmt(hi)} scale"
        return Verdict(None, reason, last.line)
    best = max(on_scale, key=lambda c: (c.rank, c.pos))
    if not lo <= best.value <= hi:
        return Verdict(None, f"score {_fmt(best.value)} is outside {_fmt(lo)}-{_fmt(hi)}", best.line)
    return Verdict(best.value, "", best.line)


def explain_parse(
    text: str, scale: tuple[float, float] = (0.0, 10.0)
) -> tuple[float | None, str]:
    """Return ``(score, "")`` or ``(None, reason)``; see the module docstring for the rules."""
    verdict = read_verdict(text, scale)
    return verdict.score, verdict.reason


def parse_score(text: str, scale: tuple[float, float] = (0.0, 10.0)) -> float | None:
    """The judge's final score on ``scale``, or None when no valid verdict is found."""
    return explain_parse(text, scale)[0]
