"""The experiment's settings as one typed object: the values in it are the values used and sent,
and the request each task makes with them.

Dagster-free, so `daydream run` can build the very requests the assets send before it loads
Dagster (see runner/executor/head_start.py); resources/config.py makes it the assets' resource."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import pydantic
from pydantic import Field
from pydantic.fields import FieldInfo

from ..llm.requests import LLMRequest
from ..store.roots import data_path
from .errors import ExperimentError
from .loaders import DESCRIPTION_LEVELS, load_settings

# A replicate is a paid call per task; more than this is almost certainly a typo, not a plan.
MAX_REPLICATES = 100


class ExperimentSettings(pydantic.BaseModel):
    """Where the experiment lives and how it runs (k, description level, per-stage LLM parameters,
    the spending cap)."""

    data_root: str = Field(default="data", description="Experiment folder holding 1_raw/.")
    output_root: str = Field(default="data", description="Where tables, prompts and responses go.")
    k: int = Field(default=2, ge=1, description="Concepts per combination.")
    description_level: str = Field(default="paragraph", description="sentence | paragraph | article")
    generation_temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    generation_max_tokens: int = Field(default=1200, ge=1)
    evaluation_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    evaluation_max_tokens: int = Field(default=800, ge=1)
    max_cost_usd: Optional[float] = Field(
        default=None,
        gt=0,
        description="Spending cap in USD over every paid answer under the output root: no LLM call starts "
        "whose worst case would pass it (a run's config may override it). None: no cap.",
    )
    generation_replicates: int = Field(
        default=1, ge=1, le=MAX_REPLICATES, description="Answers sampled per generation task, each its own task."
    )
    evaluation_replicates: int = Field(
        default=1, ge=1, le=MAX_REPLICATES, description="Judge answers per pair and method, each its own method key."
    )

    @property
    def raw_dir(self) -> Path:
        return data_path(self.data_root) / "1_raw"

    def generation_request(self, task: Mapping, prompt: str) -> LLMRequest:
        """What a generation task (a row of generation_tasks) asks its generator, with these settings."""
        return LLMRequest(
            model_id=task["generation_model_id"],
            model=task["generation_model"],
            prompt=prompt,
            temperature=self.generation_temperature,
            max_tokens=self.generation_max_tokens,
            replicate=int(task.get("generation_replicate", 1)),
        )

    def evaluation_request(self, pair: Mapping, prompt: str) -> LLMRequest:
        """What an evaluation pair (a row of evaluation_tasks) asks its judge, with these settings."""
        return LLMRequest(
            model_id=pair["evaluation_model_id"],
            model=pair["evaluation_model"],
            prompt=prompt,
            temperature=self.evaluation_temperature,
            max_tokens=self.evaluation_max_tokens,
            replicate=int(pair.get("evaluation_replicate", 1)),
        )

    @classmethod
    def for_experiment(cls, data_root: str, output_root: str) -> "ExperimentSettings":
        """Defaults overridden by the experiment folder's optional `1_raw/experiment.toml`, whose
        values must have the settings' own types (see `check_setting_types`)."""
        settings = load_settings(data_path(data_root) / "1_raw")
        where = data_path(data_root) / "1_raw" / "experiment.toml"
        unknown = sorted(set(settings) - set(cls.model_fields))
        if unknown:
            raise ExperimentError(f"{where} has unknown setting(s) {', '.join(unknown)}.")
        check_setting_types(settings, cls.model_fields, where)
        if settings.get("description_level", "paragraph") not in DESCRIPTION_LEVELS:
            raise ExperimentError(
                f"{where} sets description_level to {settings['description_level']!r}; it must be one of "
                f"{', '.join(DESCRIPTION_LEVELS)}."
            )
        try:
            return cls(data_root=str(data_root), output_root=str(output_root), **settings)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "setting"
            raise ExperimentError(f"{where} has an invalid {field}: {first['msg']}.") from exc


def check_setting_types(settings: Mapping, fields: Mapping[str, FieldInfo], where) -> None:
    """Refuse a value of experiment.toml whose TOML type is not its setting's: pydantic's lax mode
    would take `k = true` as 1 and `k = "2"` as 2. An int must be an int (not a boolean); a float
    may be written as an int. The roots are not the experiment's to set: the command sets them."""
    for name, value in settings.items():
        if name in ROOT_SETTINGS:
            raise ExperimentError(
                f"{where} sets {name}, which only the command sets (--data-root; the output root follows from it); "
                "remove it."
            )
        expected = _setting_type(fields[name].annotation)
        accepted = (int, float) if expected is float else (expected,)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ExperimentError(
                f"{where} sets {name} = {_toml(value)}, {_TOML_KIND.get(type(value), 'a ' + type(value).__name__)}; "
                f"{name} must be {_TOML_KIND[expected]}."
            )


# The settings the command gives (`daydream --data-root`, Settings.output_root), never the experiment.
ROOT_SETTINGS = ("data_root", "output_root")
_TOML_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table", list: "an array"}


def _setting_type(annotation) -> type:
    """int, float or str: the type of a setting, without its Optional."""
    options = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    return options[0]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # TOML's basic strings are JSON's, escapes included
    return repr(value) if isinstance(value, (int, float)) else f"<{_TOML_KIND.get(type(value), 'value')}>"
