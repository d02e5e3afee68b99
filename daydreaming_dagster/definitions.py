"""The code location: every asset, check, job, sensor and resource of daydreaming_dagster in one
Definitions object, built when Dagster (or a test, or `daydream run`) asks for it.

Importing this module reads no environment. `defs()` reads the settings then (see settings.py and
.env.example): DAYDREAM_DATA_ROOT picks the experiment folder, DAYDREAM_BACKEND=offline swaps in the
offline LLM and its own output root. Tests call `build_definitions(Settings(...))` directly."""

from __future__ import annotations

import os

import dagster as dg

from .assets import core, llm_evaluation, llm_generation, raw_data, replicates, report, results
from .assets.batch_sensor import build_batch_sensor
from .assets.evaluation_sensor import build_evaluation_sensor
from .resources.config import ExperimentConfig
from .resources.io_managers import TableIOManager, TextIOManager
from .resources.llm import LLMClientResource
from .resources.response_store import ResponseStore
from .settings import Settings

ASSET_MODULES = [raw_data, core, llm_generation, llm_evaluation, results, replicates, report]
ALL_ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
ALL_CHECKS = dg.load_asset_checks_from_modules(ASSET_MODULES)

task_tables_job = dg.define_asset_job(
    "task_tables",
    selection=dg.AssetSelection.groups(raw_data.GROUP, core.GROUP),
    description="Read the experiment and build the task tables; registers the partition keys.",
)
generation_job = dg.define_asset_job(
    "generation",
    selection=dg.AssetSelection.groups(llm_generation.GROUP),
    description="Prompt and response of one generation task.",
)
evaluation_job = dg.define_asset_job(
    "evaluation",
    selection=dg.AssetSelection.groups(llm_evaluation.GROUP),
    description="Judge prompt and judge answer of one evaluation pair.",
)
# Prompts alone (no LLM call): `daydream run` renders again the prompts of out-of-date partitions
# whose answers it leaves as they are, so that Dagster shows those answers stale.
generation_prompts_job = dg.define_asset_job(
    "generation_prompts",
    selection=dg.AssetSelection.assets("generation_prompt"),
    description="Render the prompt of generation tasks (no LLM call).",
)
evaluation_prompts_job = dg.define_asset_job(
    "evaluation_prompts",
    selection=dg.AssetSelection.assets("evaluation_prompt"),
    description="Render the judge prompt of evaluation pairs (no LLM call).",
)
results_job = dg.define_asset_job(
    "results",
    selection=dg.AssetSelection.groups(results.GROUP),
    description="Parse every judge answer and build the result tables and the HTML report.",
)


def build_resources(settings: Settings) -> dict:
    out = str(settings.output_root)
    # Bind the key through EnvVar only when it is set, so a missing key surfaces as our own
    # sentence from LLMClientResource.check_ready instead of a resource-initialisation error.
    api_key = dg.EnvVar("OPENROUTER_API_KEY") if os.environ.get("OPENROUTER_API_KEY") else None
    return {
        "experiment_config": ExperimentConfig.for_experiment(str(settings.data_root), out),
        "llm": LLMClientResource(
            backend=settings.backend,
            api_key=api_key,
            base_url=settings.base_url,
            max_calls_in_flight=settings.max_calls_in_flight,
            timeout_s=settings.request_timeout_s,
            deadline_s=settings.call_deadline_s,
        ),
        "responses": ResponseStore.at(out),
        "text_io_manager": TextIOManager(base_path=out),
        "table_io_manager": TableIOManager(base_path=out),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    """The code location for one experiment, backend and output root."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[
            task_tables_job,
            generation_job,
            evaluation_job,
            generation_prompts_job,
            evaluation_prompts_job,
            results_job,
        ],
        sensors=[build_evaluation_sensor(), build_batch_sensor()],
        resources=build_resources(settings),
        # Every run's steps in its own process: a run is a prompt step then a response step, so the
        # multiprocess executor's two extra processes (each importing the code location, ~3 s of
        # CPU) bought no parallelism; pools are honoured the same way.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev`, `dagster asset materialize -m daydreaming_dagster.definitions` and
    `daydream run` load: the code location for the settings in the environment."""
    return build_definitions(Settings.from_env())
