"""Results: one parsed score per evaluation pair, and the tables a researcher reads."""

from pathlib import Path

import dagster as dg
import pandas as pd

from .. import storage
from ..agreement import score_summary
from ..resources.config import ExperimentConfig
from ..scoring import explain_parse
from .common import md_preview

GROUP = "results"
RESULTS_META = {"daydream/group": GROUP}

PARSED_SCORE_COLUMNS = [
    "generation_task_id",
    "evaluation_task_id",
    "combo_id",
    "generation_template_id",
    "generation_model_id",
    "evaluation_template_id",
    "evaluation_model_id",
    "score",
    "parse_error",
    "response_path",
]


def parse_scores(
    evaluation_tasks: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    answers: dict[str, str],
    response_path,
) -> pd.DataFrame:
    """One row per pair of the evaluation table: the judge's score, or why there is none."""
    scales = evaluation_templates.set_index("template_id")[["score_min", "score_max"]]
    table = evaluation_tasks.merge(
        generation_tasks[["generation_task_id", "combo_id", "generation_template_id", "generation_model_id"]],
        on="generation_task_id",
        how="left",
    )
    scores, errors, paths = [], [], []
    for row in table.itertuples(index=False):
        key = f"{row.evaluation_task_id}|{row.generation_task_id}"
        text = answers.get(key)
        paths.append(str(response_path(row.generation_task_id, row.evaluation_task_id)))
        if text is None:
            scores.append(None)
            errors.append("no evaluation response stored")
            continue
        scale = tuple(scales.loc[row.evaluation_template_id]) if row.evaluation_template_id in scales.index else (0.0, 10.0)
        score, reason = explain_parse(text, scale)
        scores.append(score)
        errors.append(reason or None)
    table["score"] = pd.to_numeric(pd.Series(scores, dtype="float64"))
    table["parse_error"] = errors
    table["response_path"] = paths
    return table[PARSED_SCORE_COLUMNS]


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", metadata=RESULTS_META)
def parsed_scores(
    evaluation_response: dict[str, str],
    evaluation_tasks: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output[pd.DataFrame]:
    """The final score of every evaluation pair; a pair without a score says why in `parse_error`."""
    root = Path(experiment_config.output_root)

    def response_path(generation_task_id: str, evaluation_task_id: str) -> Path:
        return storage.text_path(
            root, "evaluation_response", {"generation_tasks": generation_task_id, "evaluation_tasks": evaluation_task_id}
        )

    df = parse_scores(evaluation_tasks, generation_tasks, evaluation_templates, evaluation_response, response_path)
    parsed = int(df["score"].notna().sum())
    return dg.Output(
        df,
        metadata={
            "pairs": len(df),
            "scored": parsed,
            "unscored": len(df) - parsed,
            "preview": md_preview(df, ["generation_task_id", "evaluation_task_id", "score", "parse_error"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", metadata=RESULTS_META)
def evaluation_summary(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Score statistics per generation template x generation model x evaluation method."""
    df = score_summary(parsed_scores, ["generation_template_id", "generation_model_id", "evaluation_task_id"])
    return dg.Output(df, metadata={"rows": len(df), "preview": md_preview(df.round(2))})
