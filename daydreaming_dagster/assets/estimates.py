"""The calls still to make and the stored answers that calibrate their estimate, read from the task
tables and the response store, for `analysis.estimate`: the task-table assets show the estimate
before "Materialize all", and `daydream plan` prints it.

A partition needs a call when it is not materialized and no stored answer to its exact request can
be reused. Generation prompts are rendered now. A judge prompt is rendered from its generation
answer when that is stored; otherwise it is the template plus an answer still to come."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from ..analysis.estimate import estimate, estimate_rows, totals, usd
from ..analysis.usage import model_prices
from ..experiment.prompts import template_label
from ..experiment.stages import EVALUATION, pair_key
from ..experiment.templates import Concept, render_evaluation_prompt, render_generation_prompt
from ..llm.requests import LLMRequest
from ..resources.config import ExperimentConfig
from ..store.archive import Archive
from ..store.layout import text_path
from ..store.roots import data_path
from ..store.write_once import read_provenance

# Stored answers read per stage and model to calibrate (plenty for a ratio and a mean, and
# bounded on a large experiment).
SAMPLES_PER_MODEL = 500
# Marks where the answer goes when a judge template is measured without one.
_SLOT = "\x00answer\x00"


@dataclass
class StageCalls:
    """The calls one stage still has to make (rows of `analysis.estimate.CALL_COLUMNS`)."""

    stage: str
    partitions: int = 0  # partitions looked at: not materialized, or all of them
    reused: int = 0  # of which a stored answer will be reused: no call
    waiting: int = 0  # judge calls whose generation answer does not exist yet
    calls: list[dict] = field(default_factory=list)


def _store(config: ExperimentConfig) -> Archive:
    return Archive(config.output_root)


def _reusable(store: Archive, asset: str, parts, request: LLMRequest) -> bool:
    return store.path(asset, parts).is_file() and store.reusable(asset, parts, request, replace_changed=True) is not None


def generation_calls(
    tasks: pd.DataFrame,
    combos: pd.DataFrame,
    templates: pd.DataFrame,
    config: ExperimentConfig,
    materialized: Collection[str] = (),
    check_stored: bool = True,
) -> StageCalls:
    """The generation tasks that are not `materialized` and, when `check_stored`, have no reusable answer."""
    store = _store(config)
    ordered = combos.sort_values(["combo_id", "position"])
    concepts_of: dict[str, list[Concept]] = defaultdict(list)
    for combo, name, content in zip(ordered["combo_id"], ordered["name"], ordered["content"]):
        concepts_of[combo].append(Concept(name=name, content=content))
    texts = dict(zip(templates["template_id"], templates["text"]))
    out = StageCalls("generation")
    columns = ["generation_task_id", "combo_id", "generation_template_id", "generation_model_id", "generation_model"]
    replicates = _replicates(tasks, "generation_replicate")
    for key, combo, template, model_id, model, replicate in zip(*(tasks[c] for c in columns), replicates):
        if key in materialized:
            continue
        out.partitions += 1
        prompt = render_generation_prompt(texts[template], concepts_of[combo], template_label("generation", template))
        request = LLMRequest(
            model_id, model, prompt, config.generation_temperature, config.generation_max_tokens, int(replicate)
        )
        if check_stored and _reusable(store, "generation_response", key, request):
            out.reused += 1
            continue
        out.calls.append(
            {"stage": "generation", "model_id": model_id, "max_tokens": config.generation_max_tokens, "prompt_chars": len(prompt)}
        )
    return out


def evaluation_calls(
    pairs: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    templates: pd.DataFrame,
    config: ExperimentConfig,
    materialized: Collection[str] = (),
    check_stored: bool = True,
) -> StageCalls:
    """The evaluation pairs that are not `materialized` (keys "<eval>|<gen>") and, when
    `check_stored`, have no reusable answer."""
    store = _store(config)
    texts = dict(zip(templates["template_id"], templates["text"]))
    generator = dict(zip(generation_tasks["generation_task_id"], generation_tasks["generation_model_id"]))
    answers: dict[str, str | None] = {}
    prompts: dict[tuple[str, str], str] = {}
    shapes: dict[str, tuple[int, int]] = {}
    out = StageCalls("evaluation")
    columns = ["generation_task_id", "evaluation_task_id", "evaluation_template_id", "evaluation_model_id", "evaluation_model"]
    replicates = _replicates(pairs, "evaluation_replicate")
    for g, e, template, judge_id, judge, replicate in zip(*(pairs[c] for c in columns), replicates):
        if pair_key(g, e) in materialized:
            continue
        out.partitions += 1
        if g not in answers:
            path = text_path(config.output_root, "generation_response", g)
            answers[g] = path.read_text(encoding="utf-8") if path.is_file() else None
        call = {"stage": "evaluation", "model_id": judge_id, "max_tokens": config.evaluation_max_tokens}
        if answers[g] is None:
            if template not in shapes:
                empty = render_evaluation_prompt(texts[template], _SLOT, template_label("evaluation", template))
                shapes[template] = (len(empty) - empty.count(_SLOT) * len(_SLOT), empty.count(_SLOT))
            base, repeats = shapes[template]
            out.waiting += 1
            out.calls.append(
                {**call, "base_chars": base, "repeats": repeats, "answer_model_id": generator.get(g),
                 "answer_max_tokens": config.generation_max_tokens}
            )
            continue
        if (g, template) not in prompts:
            prompts[(g, template)] = render_evaluation_prompt(texts[template], answers[g], template_label("evaluation", template))
        prompt = prompts[(g, template)]
        request = LLMRequest(
            judge_id, judge, prompt, config.evaluation_temperature, config.evaluation_max_tokens, int(replicate)
        )
        parts = EVALUATION.parts(pair_key(g, e))
        if check_stored and _reusable(store, "evaluation_response", parts, request):
            out.reused += 1
            continue
        out.calls.append({**call, "prompt_chars": len(prompt)})
    return out


def _replicates(table: pd.DataFrame, column: str) -> pd.Series | list[int]:
    """The replicate of every row (a replicate >= 2 is a request of its own, see LLMRequest)."""
    return table[column] if column in table.columns else [1] * len(table)


def stored_samples(
    config: ExperimentConfig, generation_keys: list[str], pairs: pd.DataFrame | None = None
) -> list[dict]:
    """Up to SAMPLES_PER_MODEL stored answers per stage and model: the tokens the provider reported,
    and the characters of the prompt (when known for certain) and of the answer."""
    root = data_path(config.output_root)
    partitions = [("generation", "generation_response", "generation_prompt", key) for key in generation_keys]
    if pairs is not None:
        partitions += [
            ("evaluation", "evaluation_response", "evaluation_prompt", EVALUATION.parts(pair_key(g, e)))
            for g, e in zip(pairs["generation_task_id"], pairs["evaluation_task_id"])
        ]
    counts: dict[tuple[str, str], int] = {}
    samples = []
    for stage, asset, prompt_asset, parts in partitions:
        path = text_path(root, asset, parts)
        if not path.is_file():
            continue
        provenance = read_provenance(path) or {}
        model_id = provenance.get("model_id")
        if not model_id or counts.get((stage, model_id), 0) >= SAMPLES_PER_MODEL:
            continue
        counts[(stage, model_id)] = counts.get((stage, model_id), 0) + 1
        samples.append(
            {
                "stage": stage,
                "model_id": model_id,
                "prompt_chars": provenance.get("prompt_chars") or _prompt_chars(text_path(root, prompt_asset, parts), provenance),
                "prompt_tokens": provenance.get("prompt_tokens"),
                "completion_tokens": provenance.get("completion_tokens"),
                "answer_chars": len(path.read_text(encoding="utf-8")),
            }
        )
    return samples


def _prompt_chars(path: Path, provenance: dict) -> int | None:
    """The length of the stored prompt, if it is the one this answer was asked with."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != provenance.get("prompt_sha256"):
        return None
    return len(data.decode("utf-8"))


def stage_estimate(stage: StageCalls, samples: list[dict], llm_models: pd.DataFrame) -> pd.DataFrame:
    return estimate(stage.calls, samples, model_prices(llm_models))


def estimate_metadata(stage: StageCalls, table: pd.DataFrame) -> dict:
    """What a task table shows about the calls its stage still has to make, and their estimated cost."""
    t = totals(table) if len(table) else None
    if t is None:
        cost = dg.MetadataValue.text("$0: no call to make")
    elif t["unpriced_models"]:
        cost = dg.MetadataValue.text(f"unknown: no price for {', '.join(t['unpriced_models'])} in llm_models.csv")
    else:
        cost = dg.MetadataValue.float(round(t["cost_usd_expected"], 6))
    meta = {
        f"{stage.stage}_calls_to_make": len(stage.calls),
        f"{stage.stage}_partitions_not_materialized": stage.partitions,
        "stored_answers_to_reuse": stage.reused,
        "estimated_cost_usd": cost,
        "cost_estimate": dg.MetadataValue.md(
            (estimate_rows(table).to_markdown(index=False) if len(table) else "_no call to make_")
            + "\n\nExpected figure, with the low and high bounds in brackets. Run `daydream plan` for "
            "the whole experiment and what each figure is based on."
        ),
    }
    if t is not None and not t["unpriced_models"]:
        meta["estimated_cost_range_usd"] = dg.MetadataValue.text(f"{usd(t['cost_usd_low'])} to {usd(t['cost_usd_high'])}")
    return meta
