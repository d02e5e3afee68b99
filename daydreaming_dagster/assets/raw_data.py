"""Assets that read the experiment folder (`<data_root>/1_raw`) into validated tables."""

import dagster as dg
import pandas as pd

from ..experiment.loaders import TemplateKind, load_concepts, load_models, load_templates
from ..resources.config import ExperimentConfig
from .common import experiment_errors_as_failures, table_metadata, table_output

GROUP = "raw_data"


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"})
def concepts(experiment_config: ExperimentConfig) -> dg.Output[pd.DataFrame]:
    """The experiment's concepts with their descriptions at every level (sentence, paragraph, article)."""
    with experiment_errors_as_failures():
        df = load_concepts(experiment_config.raw_dir)
    return table_output(
        df,
        {
            **table_metadata(df, ["concept_id", "name", "active"]),
            "active": int(df["active"].sum()),
        },
    )


def _templates_asset(kind: TemplateKind) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{kind}_templates",
        group_name=GROUP,
        io_manager_key="table_io_manager", kinds={"pandas", "csv"},
        description=f"The {kind} templates (Jinja text in a `text` column) from {kind}_templates.csv.",
    )
    def _asset(experiment_config: ExperimentConfig) -> dg.Output[pd.DataFrame]:
        with experiment_errors_as_failures():
            df = load_templates(experiment_config.raw_dir, kind)
        return table_output(
            df,
            {
                **table_metadata(df, ["template_id", "template_name", "active"]),
                "active": int(df["active"].sum()),
            },
        )

    return _asset


generation_templates = _templates_asset("generation")
evaluation_templates = _templates_asset("evaluation")


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"})
def llm_models(experiment_config: ExperimentConfig) -> dg.Output[pd.DataFrame]:
    """The model table: `model` is the provider's name, the flags say which models generate and judge."""
    with experiment_errors_as_failures():
        df = load_models(experiment_config.raw_dir)
    return table_output(
        df,
        {
            **table_metadata(df, ["id", "model", "for_generation", "for_evaluation"]),
            "generators": int(df["for_generation"].sum()),
            "judges": int(df["for_evaluation"].sum()),
        },
    )
