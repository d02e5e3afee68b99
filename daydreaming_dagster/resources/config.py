"""The experiment's settings as one typed object: the values in it are the values used and sent."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import dagster as dg
import pydantic
from pydantic import Field

from ..experiment.errors import ExperimentError
from ..experiment.loaders import DESCRIPTION_LEVELS, load_settings


class ExperimentConfig(dg.ConfigurableResource):
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

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_root) / "1_raw"

    @classmethod
    def for_experiment(cls, data_root: str, output_root: str) -> "ExperimentConfig":
        """Defaults overridden by the experiment folder's optional `1_raw/experiment.toml`."""
        settings = load_settings(Path(data_root) / "1_raw")
        unknown = sorted(set(settings) - set(cls.model_fields) - {"data_root", "output_root"})
        if unknown:
            raise ExperimentError(
                f"{Path(data_root) / '1_raw' / 'experiment.toml'} has unknown setting(s) {', '.join(unknown)}."
            )
        if settings.get("description_level", "paragraph") not in DESCRIPTION_LEVELS:
            raise ExperimentError(
                f"description_level must be one of {', '.join(DESCRIPTION_LEVELS)}, not {settings['description_level']!r}."
            )
        try:
            return cls(data_root=str(data_root), output_root=str(output_root), **settings)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "setting"
            raise ExperimentError(
                f"{Path(data_root) / '1_raw' / 'experiment.toml'} has an invalid {field}: {first['msg']}."
            ) from exc
