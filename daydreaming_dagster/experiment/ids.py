"""Identifier rules: ids become partition keys and file names, so they are checked and built here."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .errors import ExperimentError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Joins the parts of a composite id; parts may contain single '_' but this separator is reserved.
SEP = "__"


def check_safe_id(value: object, what: str) -> str:
    """Return `value` as a str if it is a safe id, else raise naming `what` and the bad value."""
    text = "" if value is None else str(value)
    if not SAFE_ID.match(text) or ".." in text or SEP in text:
        raise ExperimentError(
            f"{what} has the unsafe id {text!r}; ids may contain only letters, digits, '-', '_' "
            f"and '.', must start with a letter or digit, and must not contain '..' or '{SEP}'."
        )
    return text


def combo_id(concept_ids: Iterable[str]) -> str:
    """A stable, content-derived id for a set of concepts (order does not matter).

    A digest rather than Python's hash(), which changes between processes."""
    ids = sorted(concept_ids)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]
    return f"combo-{len(ids)}-{digest}"


def generation_task_id(combo: str, template_id: str, model_id: str) -> str:
    return SEP.join((combo, template_id, model_id))


def evaluation_task_id(template_id: str, model_id: str) -> str:
    """The evaluation *method* key: evaluation template x judge model."""
    return SEP.join((template_id, model_id))


def pair_key_str(generation_task: str, evaluation_task: str) -> str:
    """The string form Dagster prints and accepts for a pair: dimension names sort, so eval comes first."""
    return f"{evaluation_task}|{generation_task}"
