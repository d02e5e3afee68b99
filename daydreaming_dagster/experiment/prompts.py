"""The prompt of every task, rendered from the task tables, with what each one was rendered from.

The prompt assets and `daydream run`'s check for answers whose prompt has changed both render
through here, so the check sees exactly the prompt the asset would send. A prompt's `sources` name
the parts it was rendered from (a file under `1_raw`, or the generation answer an evaluation prompt
quotes) with a digest of each, so a changed prompt can be traced to the file that changed it."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import templates as jinja_templates
from .errors import ExperimentError
from .loaders import CONCEPTS_TABLE
from .templates import Concept, render_evaluation_prompt, render_generation_prompt

# The source label of the generation answer an evaluation prompt quotes: GENERATION_ANSWER + its id.
GENERATION_ANSWER = "generation_response/"


def digest(text: str) -> str:
    """Hex sha256 of a text (UTF-8): the digest every prompt, answer and source is compared by."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and the digest of each part it was rendered from, by source label."""

    text: str
    sources: dict[str, str]

    @property
    def sha256(self) -> str:
        return digest(self.text)


def template_file(kind: str, template_id: str) -> str:
    """Where a template's text lives, relative to `1_raw` (as loaders.load_templates reads it)."""
    return f"{kind}_templates/{template_id}.txt"


def template_label(kind: str, template_id: str) -> str:
    """How a sentence about a template names its file: `1_raw/<kind>_templates/<id>.txt`."""
    return f"1_raw/{template_file(kind, template_id)}"


def _template_texts(templates: pd.DataFrame, kind: str) -> dict[str, str]:
    return dict(zip(templates["template_id"], templates["text"]))


def _template(texts: dict[str, str], kind: str, template_id: str, task: str) -> str:
    if template_id not in texts:
        raise ExperimentError(
            f"{kind} template '{template_id}' of task '{task}' is not in {kind}_templates; "
            "rematerialize the task tables (it is a stale partition key otherwise)."
        )
    return texts[template_id]


def generation_prompts(
    tasks: Mapping[str, Mapping], combinations: pd.DataFrame, templates: pd.DataFrame
) -> dict[str, Prompt]:
    """The prompt of every generation task in `tasks` (rows of generation_tasks by task id): its
    template rendered with the names and descriptions of its concepts, in combination order."""
    texts = _template_texts(templates, "generation")
    wanted = {task["combo_id"] for task in tasks.values()}
    members_of: dict[str, list[dict]] = {}
    # Plain records, one pass: per-task DataFrame operations cost ~10 ms each on a large experiment.
    rows = combinations[combinations["combo_id"].isin(wanted)].sort_values(["combo_id", "position"])
    for member in rows.to_dict("records"):
        members_of.setdefault(member["combo_id"], []).append(member)
    prompts = {}
    for key, task in tasks.items():
        template_id = task["generation_template_id"]
        template = _template(texts, "generation", template_id, key)
        members = members_of.get(task["combo_id"], [])
        concepts = [Concept(name=str(m["name"]), content=str(m["content"])) for m in members]
        sources = {
            template_file("generation", template_id): digest(template),
            CONCEPTS_TABLE: digest("\n".join(c.name for c in concepts)),
        }
        for member, concept in zip(members, concepts):
            source = _content_source(member)
            if source != CONCEPTS_TABLE:  # a concept without descriptions shows its name, counted above
                sources[source] = digest(concept.content)
        where = template_label("generation", template_id)
        prompts[key] = Prompt(render_generation_prompt(template, concepts, where), sources)
    return prompts


def _content_source(member: Mapping) -> str:
    source = member.get("content_source")
    if isinstance(source, str) and source:
        return source
    return f"concepts/descriptions-{member['description_level']}/{member['concept_id']}.txt"


def evaluation_prompts(
    pairs: Mapping[str, Mapping], templates: pd.DataFrame, generations: Mapping[str, str]
) -> dict[str, Prompt]:
    """The judge prompt of every pair in `pairs` (rows of evaluation_tasks by pair key): its
    evaluation template rendered with the answer of its generation (`generations`, by task id)."""
    texts = _template_texts(templates, "evaluation")
    prompts = {}
    for key, pair in pairs.items():
        template_id, generation = pair["evaluation_template_id"], pair["generation_task_id"]
        template = _template(texts, "evaluation", template_id, key)
        answer = generations[generation]
        sources = {
            template_file("evaluation", template_id): digest(template),
            GENERATION_ANSWER + generation: digest(answer),
        }
        where = template_label("evaluation", template_id)
        prompts[key] = Prompt(render_evaluation_prompt(template, answer, where), sources)
    return prompts


def _code_version() -> str:
    """A digest of the code that turns tables into prompts: this module, the rendering code of
    templates.py (its sandbox and limits included) and the settings of its Jinja environment. A
    change to any of them is a new code version of the prompt assets, which Dagster shows as a
    reason their partitions are stale."""
    parts = [Path(__file__).read_text(encoding="utf-8")]
    rendering = (jinja_templates._BoundedSandbox, jinja_templates._environment, jinja_templates._compiled,
                 jinja_templates._render, jinja_templates._render_text, Concept,
                 render_generation_prompt, render_evaluation_prompt)
    parts += [inspect.getsource(f) for f in rendering]
    environment = jinja_templates.ENVIRONMENT
    parts.append(repr((
        type(environment).__mro__[1].__name__, environment.undefined.__name__, environment.keep_trailing_newline,
        environment.autoescape, sorted(environment.globals), sorted(environment.filters),
        jinja_templates.MAX_PROMPT_CHARS, jinja_templates.MAX_REPEAT, jinja_templates.MAX_INT_BITS,
    )))
    return digest("\n".join(parts))[:16]


CODE_VERSION = _code_version()
