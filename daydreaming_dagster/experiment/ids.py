"""Identifier rules: ids become partition keys and file names, so they are checked and built here."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .errors import ExperimentError

# Matched whole (fullmatch): `$` would also match before a trailing newline.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Joins the parts of a composite id; parts may contain single '_' but this separator is reserved.
SEP = "__"
# The longest id, in characters. Ids are joined into composite ids (`<combo>__<template>__<model>__r2`,
# ~160 characters at most) and then into file names such as `.<id>.claim.json.writing.tmp`, and a
# file name may have at most 255 bytes.
MAX_ID_CHARS = 64


def check_safe_id(value: object, what: str) -> str:
    """Return `value` as a str if it is a safe id, else raise naming `what` and the bad value."""
    text = "" if value is None else str(value)
    if len(text) > MAX_ID_CHARS:
        raise ExperimentError(
            f"{what} has an id of {len(text)} characters ({text[:24]!r}...); ids may have at most "
            f"{MAX_ID_CHARS} characters."
        )
    if text != text.strip():
        raise ExperimentError(
            f"{what} has the id {text!r}, which begins or ends with a space or line break; remove it."
        )
    if not SAFE_ID.fullmatch(text) or ".." in text or SEP in text:
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


def replicate_suffix(replicate: int) -> str:
    """What a replicate adds to the id of the task it repeats: nothing for replicate 1, `__r<n>` after.

    Why this form: replicate 1 keeps the id the task had before replicates existed, so raising a
    replicate count later (or from the start) never renames a partition, and every answer already
    stored for replicate 1 stays valid; replicates 2..n are new partitions beside it. The suffix is
    one more `__` part, which no part of an id may contain, so `<method>__r2` can never be the id
    of another method (two parts) and `<combo>__<template>__<model>__r2` never that of another
    generation task (three parts)."""
    if replicate < 1:
        raise ExperimentError(f"replicate {replicate} must be 1 or more.")
    return "" if replicate == 1 else f"{SEP}r{replicate}"


def generation_task_id(combo: str, template_id: str, model_id: str, replicate: int = 1) -> str:
    """A generation task: combination x generation template x generator (x replicate)."""
    return SEP.join((combo, template_id, model_id)) + replicate_suffix(replicate)


def evaluation_task_id(template_id: str, model_id: str, replicate: int = 1) -> str:
    """The evaluation *method* key: evaluation template x judge model (x replicate)."""
    return SEP.join((template_id, model_id)) + replicate_suffix(replicate)


def without_replicate(task_id: str, parts: int) -> str:
    """The id of the task a replicate repeats: its first `parts` parts (2 for a method, 3 for a
    generation task). The id of replicate 1 is that id already."""
    return SEP.join(task_id.split(SEP)[:parts])
