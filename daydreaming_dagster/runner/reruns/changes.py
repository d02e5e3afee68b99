"""Which stored answers no longer answer what the experiment asks, and which file made them so.

`daydream run` reports these out-of-date partitions before any call, skips them (a stored answer is
never overwritten without being asked), and with --replace-changed re-asks exactly those.

Cheap by design: no Dagster run, no LLM call. Each partition's prompt is rendered now, through
the same pure functions the prompt assets call (experiment/prompts.py), and the request it makes
is compared with the fingerprint in the stored answer's sidecar (prompt digest, model, parameters,
replicate). A changed prompt is traced to its files by comparing the digest of each part it is
rendered from now with the digests the prompt asset recorded (materialization metadata
`prompt_sources`) when it rendered the prompt that was answered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from ...experiment.prompts import GENERATION_ANSWER, Prompt, digest, evaluation_prompts, generation_prompts
from ...experiment.stages import EVALUATION, stage_of
from ...resources.config import ExperimentConfig
from ...store.csv_tables import read_table
from ...store.layout import table_path, text_path
from ...store.roots import data_path
from ...store.write_once import mismatched_fields, read_stored

# What a fingerprint field that differs says about where the change is.
FIELD_CAUSES = {
    "model": "llm_models.csv",
    "model_id": "llm_models.csv",
    "temperature": "experiment.toml",
    "max_tokens": "experiment.toml",
    "replicate": "experiment.toml",
    "provenance (no sidecar)": "no provenance sidecar",
}
EDITED = "the stored answer was edited or cut short"
UNTRACED = "the prompt (rendered before its sources were recorded)"
JUDGED_ANSWER = "the generation answer they judge"
RECORDS_PER_QUERY = 500


@dataclass
class StageCheck:
    """The out-of-date partitions of one stage, each with the causes found, and the digest of the
    prompt each would be asked with now."""

    stage: str
    out_of_date: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prompt_digests: dict[str, str] = field(default_factory=dict)

    def keys(self) -> set[str]:
        return set(self.out_of_date)

    def why(self) -> str:
        """Because of which files (and other causes) the partitions are out of date, most common first."""
        groups = Counter(self.out_of_date.values()).most_common()
        if len(groups) == 1:
            return describe(groups[0][0])
        shown = "; ".join(f"{count}: {describe(causes)}" for causes, count in groups[:5])
        return shown + (f"; {len(groups) - 5} other causes" if len(groups) > 5 else "")

    def prompts_to_refresh(self, output_root: Path, asset_name: str) -> list[str]:
        """The out-of-date partitions whose prompt file is not yet the prompt they would be asked now."""
        refresh = []
        for key in self.out_of_date:
            path = text_path(output_root, asset_name, stage_of(asset_name).parts(key))
            if not path.is_file() or digest(path.read_text(encoding="utf-8")) != self.prompt_digests.get(key):
                refresh.append(key)
        return refresh


def describe(causes: Iterable[str]) -> str:
    """How a report names a set of causes: the files first, then the other reasons."""
    causes = list(causes)
    files = [c for c in causes if c.endswith((".txt", ".csv", ".toml"))]
    others = [c for c in causes if c not in files]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    parts = [f"{shown} changed"] if files else []
    parts += [f"{c} changed" if c in (JUDGED_ANSWER, UNTRACED) else c for c in others]
    return "; ".join(parts)




def _stored(path: Path) -> tuple[bool, dict | None, bool]:
    """(an answer is stored, its sidecar, it matches its sidecar: length and digest, see read_stored)."""
    stored = read_stored(path)
    if stored is None:
        return False, None, True
    return True, stored.provenance, stored.mismatch is None


def _answer(path: Path) -> str | None:
    """The generation answer a judge prompt quotes now; None when none is stored, or when it does
    not match its sidecar (no judge prompt is rendered from it)."""
    stored = read_stored(path)
    return None if stored is None or stored.mismatch is not None else stored.data.decode("utf-8")


class ChangeCheck:
    """The out-of-date check of the answers stored under `output_root`, against the task tables built
    there (or `tables`, built from 1_raw by `daydream plan`). Without an instance, a changed prompt
    is not traced to its files."""

    def __init__(
        self,
        output_root: Path,
        config: ExperimentConfig,
        instance: dg.DagsterInstance | None,
        tables: Mapping[str, pd.DataFrame] | None = None,
    ) -> None:
        self.root = data_path(output_root)
        self.config = config
        self.instance = instance
        self.tables = tables

    def _table(self, name: str) -> pd.DataFrame:
        return self.tables[name] if self.tables is not None else read_table(table_path(self.root, name))

    def generations(self) -> StageCheck:
        """Every generation task whose stored answer is not the answer to its request now."""
        tasks = self._table("generation_tasks")
        stored = {}
        for task in tasks.to_dict("records"):
            key = task["generation_task_id"]
            found = _stored(text_path(self.root, "generation_response", key))
            if found[0]:
                stored[key] = (task, *found[1:])
        prompts = generation_prompts(
            {k: v[0] for k, v in stored.items()}, self._table("content_combinations"), self._table("generation_templates")
        )
        requests = {k: self.config.generation_request(v[0], prompts[k].text) for k, v in stored.items()}
        return self._compare("generation", "generation_prompt", stored, prompts, requests)

    def evaluations(self, generations: Iterable[str] | None = None) -> StageCheck:
        """Every pair (of `generations`, or of all) whose stored judge answer is not the answer to its
        request now: its prompt quotes the generation answer stored now (none is rendered from one
        that does not match its sidecar: its pairs follow their out-of-date generation)."""
        pairs = self._table("evaluation_tasks")
        if generations is not None:
            pairs = pairs[pairs["generation_task_id"].isin(set(generations))]
        answers: dict[str, str | None] = {}
        stored = {}
        for pair in pairs.to_dict("records"):
            generation = pair["generation_task_id"]
            parts = EVALUATION.parts(EVALUATION.key(pair))
            found = _stored(text_path(self.root, "evaluation_response", parts))
            if not found[0]:
                continue
            if generation not in answers:
                answers[generation] = _answer(text_path(self.root, "generation_response", generation))
            if answers[generation] is not None:
                stored[f"{pair['evaluation_task_id']}|{generation}"] = (pair, *found[1:])
        prompts = evaluation_prompts(
            {k: v[0] for k, v in stored.items()}, self._table("evaluation_templates"), answers
        )
        requests = {k: self.config.evaluation_request(v[0], prompts[k].text) for k, v in stored.items()}
        return self._compare("evaluation", "evaluation_prompt", stored, prompts, requests)

    def _compare(self, stage: str, prompt_asset: str, stored: dict, prompts: dict[str, Prompt], requests: dict) -> StageCheck:
        check = StageCheck(stage)
        differing = {}
        for key, (_, provenance, whole) in stored.items():
            fields = mismatched_fields(provenance, requests[key].fingerprint())
            if fields or not whole:
                differing[key] = (fields, whole)
        answered = {
            key: stored[key][1]["prompt_sha256"]
            for key, (fields, _) in differing.items()
            if "prompt_sha256" in fields and stored[key][1].get("prompt_sha256")
        }
        recorded = self.recorded_sources(prompt_asset, answered)
        for key, (fields, whole) in differing.items():
            causes: list[str] = []
            for name in fields:
                if name == "prompt_sha256":
                    causes += _source_causes(recorded.get(key), prompts[key].sources)
                else:
                    causes.append(FIELD_CAUSES.get(name, name))
            if not whole:
                causes.append(EDITED)
            check.out_of_date[key] = tuple(dict.fromkeys(causes))
            check.prompt_digests[key] = prompts[key].sha256
        return check

    def recorded_sources(self, prompt_asset: str, answered: dict[str, str]) -> dict[str, dict[str, str]]:
        """The sources the prompt asset recorded when it rendered the prompt each partition's answer
        answered (the newest materialization of that partition whose `prompt_sha256` matches)."""
        found: dict[str, dict[str, str]] = {}
        if self.instance is None:
            return found
        keys = list(answered)
        for start in range(0, len(keys), RECORDS_PER_QUERY):
            chunk = keys[start : start + RECORDS_PER_QUERY]
            records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(prompt_asset), asset_partitions=chunk)
            cursor = None
            while True:
                result = self.instance.fetch_materializations(records_filter, limit=RECORDS_PER_QUERY, cursor=cursor)
                for record in result.records:
                    key = record.partition_key
                    if key in found or key not in answered:
                        continue
                    metadata = record.asset_materialization.metadata
                    digest_value = metadata.get("prompt_sha256")
                    sources = metadata.get("prompt_sources")
                    if digest_value is not None and sources is not None and digest_value.value == answered[key]:
                        found[key] = dict(sources.value)
                if not result.has_more or all(k in found for k in chunk):
                    break
                cursor = result.cursor
        return found


def _source_causes(then: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The parts whose digest differs between the answered prompt's sources and today's."""
    if then is None:
        return [UNTRACED]
    changed = sorted(label for label in set(then) | set(now) if then.get(label) != now.get(label))
    causes = [JUDGED_ANSWER if label.startswith(GENERATION_ANSWER) else label for label in changed]
    return list(dict.fromkeys(causes)) or [UNTRACED]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def change_report(
    generations: StageCheck, evaluations: StageCheck, evaluation_tasks: pd.DataFrame, replace_changed: bool
) -> list[str]:
    """The lines `daydream run` prints before any call: what is out of date, why, and what happens to it."""
    lines = []
    for check, noun in ((generations, "generation"), (evaluations, "pair")):
        if check.out_of_date:
            lines.append(f"{check.stage}: {_count(len(check.out_of_date), noun)} out of date ({check.why()})")
    of_changed = evaluation_tasks[evaluation_tasks["generation_task_id"].isin(generations.keys())]
    following = [
        k for k in EVALUATION.keys(of_changed) if k not in evaluations.out_of_date
    ]
    if following:
        then = "asked again once their generation is" if replace_changed else "re-asked after their generation with --replace-changed"
        lines.append(f"evaluation: {_count(len(following), 'more pair')} judge an out-of-date generation ({then})")
    if lines:
        lines.append(
            "re-asking them now; each old answer moves to _superseded/ once its new one has arrived"
            if replace_changed
            else "out-of-date answers are kept and skipped; re-ask them with `daydream run --replace-changed` "
            "(each old answer then moves to _superseded/)"
        )
    return lines
