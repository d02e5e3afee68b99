"""The experiment's settings as the assets' resource (its fields and their checks: experiment_settings.py)."""

from __future__ import annotations

import dagster as dg

from ..experiment.settings import ExperimentSettings


class ExperimentConfig(dg.ConfigurableResource, ExperimentSettings):
    """Where the experiment lives and how it runs (k, description level, per-stage LLM parameters,
    the spending cap): `ExperimentSettings` as a Dagster resource, so the run config shows and sets it."""
