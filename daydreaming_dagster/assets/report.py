"""The results report: one self-contained HTML page where a researcher reads the results, with
the summaries, judge agreement, and every generation beside its judges' answers.

It sits in the `results` group with the tables it is built from; the page is written to
`5_results/report.html` and linked from the materialization's metadata."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from ..report.page import render_page
from ..report.payload import ReportTables, ReportTexts, build_payload
from ..resources.config import ExperimentConfig
from ..store.files import atomic_write_bytes
from ..store.layout import table_path
from ..store.roots import data_path

GROUP = "results"
REPORT_NAME = "report"
# Any: an unpartitioned reader gets every partition's text as a dict keyed by partition key (or,
# with a single upstream partition, that one text).
TEXT_INPUTS = ("generation_prompt", "generation_response", "evaluation_response")


def report_path(output_root: str | Path) -> Path:
    return table_path(data_path(output_root), REPORT_NAME, GROUP).with_suffix(".html")


def _by_key(context: dg.AssetExecutionContext, name: str, value: dict[str, str] | str) -> dict[str, str]:
    if isinstance(value, str):
        (only_key,) = context.asset_partition_keys_for_input(name)
        return {str(only_key): value}
    return value


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@dg.asset(
    group_name=GROUP,
    kinds={"html"},
    metadata={"daydream/group": GROUP},
    ins={name: dg.AssetIn(dagster_type=dg.Any) for name in TEXT_INPUTS},
)
def results_report(
    context: dg.AssetExecutionContext,
    parsed_scores: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    concepts: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    judge_agreement: pd.DataFrame,
    scores_by_generation_template: pd.DataFrame,
    scores_by_generation_model: pd.DataFrame,
    scores_by_evaluation_method: pd.DataFrame,
    scores_by_combination: pd.DataFrame,
    llm_usage: pd.DataFrame,
    generation_prompt: dict[str, str],
    generation_response: dict[str, str],
    evaluation_response: dict[str, str],
    experiment_config: ExperimentConfig,
) -> dg.MaterializeResult:
    """The results as one HTML page that opens from disk with no server: the experiment at a glance
    and its spend, the heatmap and per-axis summaries, judge agreement, and a sortable, filterable
    matrix of generations x evaluation methods; a click on a generation shows its prompt, answer
    and every judge's answer with the line its score was read from."""
    tables = ReportTables(
        parsed_scores=parsed_scores,
        generation_tasks=generation_tasks,
        concepts=concepts,
        evaluation_templates=evaluation_templates,
        judge_agreement=judge_agreement,
        summaries={
            "generation_template": scores_by_generation_template,
            "generation_model": scores_by_generation_model,
            "evaluation_method": scores_by_evaluation_method,
            "combination": scores_by_combination,
        },
        llm_usage=llm_usage,
    )
    texts = ReportTexts(
        prompts=_by_key(context, "generation_prompt", generation_prompt),
        answers=_by_key(context, "generation_response", generation_response),
        judge_answers=_by_key(context, "evaluation_response", evaluation_response),
    )
    name = data_path(experiment_config.data_root).resolve().name
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render_page(build_payload(tables, texts, title=f"Results report: {name}", generated=generated))
    path = report_path(experiment_config.output_root)
    data = page.html.encode("utf-8")
    atomic_write_bytes(path, data)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "open": dg.MetadataValue.url(path.resolve().as_uri()),
            "size": dg.MetadataValue.text(_size(len(data))),
            "bytes": len(data),
            "text_bytes_uncompressed": page.text_bytes,
            "text_chunks": page.chunks,
            "generations": len(generation_tasks),
            "pairs": len(parsed_scores),
        }
    )
