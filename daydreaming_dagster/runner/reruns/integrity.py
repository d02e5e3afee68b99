"""Every stored answer checked against its sidecar, on every `daydream run` and `daydream plan`.

A paid answer's sidecar records the length and sha256 of its text (store/write_once.py). A text
that no longer matches (edited by hand, cut short) is never used: the text IO manager leaves it
out of the results (its pair has no score), no judge prompt is rendered from a generation answer
that does not match, and the change check reports it out of date (changes.EDITED). It is kept as
it is, for its owner to restore, until `--replace-changed` re-asks it (the old file then moves to
`_superseded/`). Which answers the results left out is recorded on the results run
(freshness.UNVERIFIED_TAG), so a rerun rebuilds the results exactly when that set has changed.

Cheap by design: each text and sidecar is read once (0.08 s for the 2,530 answers of a
2,024-pair experiment on a local disk, 2-3% of its no-op rerun; see README, "Change tracking")."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...experiment.stages import EVALUATION
from ...store.layout import text_path
from ...store.roots import data_path
from ...store.write_once import unverified
from .freshness import NONE_UNVERIFIED

WAYS_ON = "re-ask {it} with `daydream run --replace-changed` (the old file then moves to _superseded/), or restore {file}"


@dataclass
class Unverified:
    """The stored answers that do not match their sidecars: partition key -> (file, why)."""

    generations: dict[str, tuple[Path, str]] = field(default_factory=dict)
    pairs: dict[str, tuple[Path, str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, output_root: Path, generation_keys: Iterable[str], pair_keys: Iterable[str]) -> Unverified:
        """Read every stored answer of these partitions (and its sidecar) once."""
        root = data_path(output_root)
        generation_paths = {k: text_path(root, "generation_response", k) for k in generation_keys}
        pair_paths = {k: text_path(root, EVALUATION.response, EVALUATION.parts(k)) for k in pair_keys}
        return cls(
            {k: (generation_paths[k], why) for k, why in unverified(generation_paths).items()},
            {k: (pair_paths[k], why) for k, why in unverified(pair_paths).items()},
        )

    def __bool__(self) -> bool:
        return bool(self.generations or self.pairs)

    def fingerprint(self) -> str:
        """Which answers the results leave out, as a short digest (NONE_UNVERIFIED: none)."""
        if not self:
            return NONE_UNVERIFIED
        paths = sorted(str(path) for path, _ in [*self.generations.values(), *self.pairs.values()])
        return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]

    def pairs_judging(self, evaluation_tasks: pd.DataFrame) -> set[str]:
        """The pairs that judge a generation answer that does not match its sidecar."""
        of = evaluation_tasks[evaluation_tasks["generation_task_id"].isin(self.generations.keys())]
        return set(EVALUATION.keys(of))

    def report(self, replace_changed: bool = False) -> list[str]:
        """One sentence per stage (with several files, then one line per file)."""
        lines = []
        for stage, found, consequence in (
            ("generation", self.generations, ", no judge prompt is rendered from {it} and {it_is} left out of the results"),
            ("evaluation", self.pairs, " and {its} pair{s} {has} no score in the results"),
        ):
            if found:
                lines += _sentence(stage, list(found.values()), consequence, replace_changed)
        return lines


def _sentence(stage: str, found: list[tuple[Path, str]], consequence: str, replace_changed: bool) -> list[str]:
    (first, why), several = found[0], len(found) > 1
    words = (
        {"it": "them", "it_is": "they are", "its": "their", "s": "s", "has": "have", "file": "the files"}
        if several
        else {"it": "it", "it_is": "it is", "its": "its", "s": "", "has": "has", "file": "the file"}
    )
    what = (
        f"{len(found)} stored answers do not match their sidecars, first {first} ({why})"
        if several
        else f"the stored answer {first} does not match its sidecar ({why})"
    )
    if replace_changed:
        sentence = f"{stage}: {what}; re-asking {words['it']} now (the old file then moves to _superseded/)."
    else:
        kept = "they are kept as they are" if several else "it is kept as it is"
        sentence = f"{stage}: {what}; {kept}{consequence.format(**words)}: {WAYS_ON.format(**words)}."
    return [sentence] + ([f"  {path} ({reason})" for path, reason in found] if several else [])


