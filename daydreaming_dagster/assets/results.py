"""Results: one parsed score per evaluation pair, and the tables and figure a researcher reads.

Everything here is computed from `parsed_scores`, where a pair without a valid verdict has an
empty `score` and the reason in `parse_error`: a parse failure is counted, never scored."""

import base64
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from ..analysis.figures import heatmap_png
from ..analysis.tables import (
    MIN_PARSE_RATE_PERCENT,
    NO_RESPONSE,
    judge_agreement_table,
    mean_score_matrix,
    parse_rate_markdown,
    parse_rates,
    parse_scores,
    score_scale,
    summarize,
    top_generations_table,
)
from ..analysis.usage import PRICE_COLUMNS, model_prices, usage_table
from ..experiment.stages import EVALUATION, pair_key
from ..resources.config import ExperimentConfig
from ..resources.response_store import ResponseStore
from ..store.files import atomic_write_bytes
from ..store.layout import table_path, text_path
from ..store.roots import data_path
from ..store.write_once import unverified
from .common import experiment_errors_as_failures, md_preview

GROUP = "results"
RESULTS_META = {"daydream/group": GROUP}


def png_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _float_or_reason(value: float, reason: str) -> dg.MetadataValue:
    return dg.MetadataValue.float(float(value)) if np.isfinite(value) else dg.MetadataValue.text(reason)


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io_manager", kinds={"pandas", "csv"},
    metadata=RESULTS_META,
    # Any: with a single upstream partition the text IO manager hands over that text, not a dict.
    ins={"evaluation_response": dg.AssetIn(dagster_type=dg.Any)},
)
def parsed_scores(
    context: dg.AssetExecutionContext,
    evaluation_response: dict[str, str],
    evaluation_tasks: pd.DataFrame,
    generation_tasks: pd.DataFrame,
    evaluation_templates: pd.DataFrame,
    experiment_config: ExperimentConfig,
) -> dg.Output[pd.DataFrame]:
    """The final score of every evaluation pair; a pair without a score says why in `parse_error`."""
    root = data_path(experiment_config.output_root)
    if isinstance(evaluation_response, str):
        (only_key,) = context.asset_partition_keys_for_input("evaluation_response")
        evaluation_response = {str(only_key): evaluation_response}

    def response_path(generation_task_id: str, evaluation_task_id: str) -> Path:
        return text_path(
            root, EVALUATION.response, EVALUATION.parts(pair_key(generation_task_id, evaluation_task_id))
        )

    # A stored answer the text IO manager left out does not match its sidecar: say so for its pair.
    pairs = evaluation_tasks[["generation_task_id", "evaluation_task_id"]].itertuples(index=False)
    absent = {k: response_path(g, e) for g, e in pairs if (k := pair_key(g, e)) not in evaluation_response}
    mismatched = unverified(absent)
    df = parse_scores(
        evaluation_tasks, generation_tasks, evaluation_templates, evaluation_response, response_path, mismatched
    )
    scored = int(df["score"].notna().sum())
    unanswered = int(df["parse_error"].eq(NO_RESPONSE).sum())
    reasons = df["parse_error"].dropna().value_counts().rename_axis("reason").reset_index(name="pairs")
    return dg.Output(
        df,
        metadata={
            "pairs": len(df),
            "scored": scored,
            "parse_failures": len(df) - scored - unanswered - len(mismatched),
            "unanswered": unanswered,
            "unverified": len(mismatched),
            "why_unscored": md_preview(reasons),
            "preview": md_preview(df, ["generation_task_id", "evaluation_task_id", "score", "parse_error"]),
        },
    )


@dg.asset_check(asset=parsed_scores, description=f"Every evaluation method's judge answers parse at least {MIN_PARSE_RATE_PERCENT}% of the time.")
def parse_rate_per_method(parsed_scores: pd.DataFrame) -> dg.AssetCheckResult:
    rates = parse_rates(parsed_scores)
    low = rates.loc[rates["below_threshold"], "evaluation_task_id"].tolist()
    answered = int(rates["answered"].sum())
    overall = rates["parsed"].sum() / answered if answered else np.nan
    if low:
        description = f"{len(low)} evaluation method(s) parse below {MIN_PARSE_RATE_PERCENT}%: {', '.join(low)}."
    elif answered:
        description = f"Every evaluation method parses at least {MIN_PARSE_RATE_PERCENT}% of its judge answers."
    else:
        description = "No judge answers are stored yet."
    return dg.AssetCheckResult(
        passed=not low,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "parse_rates": dg.MetadataValue.md(parse_rate_markdown(rates)),
            "overall_parse_rate": _float_or_reason(overall, "no judge answers yet"),
            "methods_below_threshold": dg.MetadataValue.json(low),
            "threshold_percent": MIN_PARSE_RATE_PERCENT,
        },
    )


def _summary_metadata(df: pd.DataFrame) -> dict:
    return {"groups": len(df), "preview": md_preview(df)}


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def evaluation_summary(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Score statistics per generation template x generation model x evaluation method."""
    df = summarize(parsed_scores, ["generation_template_id", "generation_model_id", "evaluation_task_id"])
    return dg.Output(df, metadata=_summary_metadata(df))


def _summary_asset(name: str, by: list[str], what: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name=GROUP,
        io_manager_key="table_io_manager", kinds={"pandas", "csv"},
        metadata=RESULTS_META,
        description=f"Score statistics per {what}: scores and failures counted, mean, std, min, max.",
    )
    def _asset(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        df = summarize(parsed_scores, by)
        return dg.Output(df, metadata=_summary_metadata(df))

    return _asset


scores_by_generation_template = _summary_asset(
    "scores_by_generation_template", ["generation_template_id"], "generation template"
)
scores_by_generation_model = _summary_asset("scores_by_generation_model", ["generation_model_id"], "generation model")
scores_by_evaluation_method = _summary_asset(
    "scores_by_evaluation_method",
    ["evaluation_task_id", "evaluation_template_id", "evaluation_model_id"],
    "evaluation method (evaluation template x judge model)",
)
scores_by_combination = _summary_asset(
    "scores_by_combination", ["combo_id", "concept_ids"], "concept combination (combo_id and its concept ids)"
)


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def top_generations(parsed_scores: pd.DataFrame, experiment_config: ExperimentConfig) -> dg.Output[pd.DataFrame]:
    """The top-scoring generations (mean over every judge score they got), with their response files."""
    root = data_path(experiment_config.output_root)
    df = top_generations_table(
        parsed_scores, lambda generation_task_id: text_path(root, "generation_response", generation_task_id)
    )
    return dg.Output(
        df,
        metadata={
            "rows": len(df),
            "preview": md_preview(df, ["rank", "generation_task_id", "mean_score", "n_evaluations", "concept_ids"]),
        },
    )


@dg.asset(group_name=GROUP, io_manager_key="table_io_manager", kinds={"pandas", "csv"}, metadata=RESULTS_META)
def judge_agreement(parsed_scores: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """How far the evaluation methods (template x judge model) agree on the generations they all scored.

    Per pair of methods: Spearman rank correlation, mean absolute score difference and
    Krippendorff's alpha (interval); the last row, `all judges`, is the alpha over every method."""
    df, overall = judge_agreement_table(parsed_scores)
    alpha = overall["krippendorff_alpha_interval"]
    return dg.Output(
        df,
        metadata={
            "krippendorff_alpha_interval": _float_or_reason(
                alpha, "undefined: needs 2+ judges, 2+ generations scored by 2+ judges, and some variation"
            ),
            "items_scored_by_2plus_judges": overall["n_items"],
            "judges": overall["n_judges"],
            "judge_pairs": len(df) - 1,
            "preview": md_preview(df),
        },
    )


@dg.asset(group_name=GROUP, metadata=RESULTS_META, kinds={"matplotlib", "png"})
def score_heatmap(
    parsed_scores: pd.DataFrame, evaluation_templates: pd.DataFrame, experiment_config: ExperimentConfig
) -> dg.MaterializeResult:
    """Mean score per generation template x generation model, as a PNG next to the result tables."""
    means, counts = mean_score_matrix(parsed_scores, "generation_template_id", "generation_model_id")
    vmin, vmax = score_scale(evaluation_templates, parsed_scores["evaluation_template_id"])
    png = heatmap_png(
        means,
        counts=counts,
        title="Mean judge score by generation template and generation model",
        xlabel="generation model",
        ylabel="generation template",
        value_label="mean score (all judges)",
        vmin=vmin,
        vmax=vmax,
    )
    path = table_path(data_path(experiment_config.output_root), "score_heatmap", GROUP).with_suffix(".png")
    atomic_write_bytes(path, png)
    table = means.round(2).rename_axis(index=None, columns=None).reset_index(names="generation_template_id")
    return dg.MaterializeResult(
        metadata={
            "heatmap": dg.MetadataValue.md(png_markdown(png, "mean score heatmap")),
            "path": dg.MetadataValue.path(str(path)),
            "mean_scores": md_preview(table),
            "png_bytes": len(png),
        }
    )


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io_manager", kinds={"pandas", "csv"},
    metadata=RESULTS_META,
    deps=["generation_response", "evaluation_response"],
)
def llm_usage(
    context: dg.AssetExecutionContext,
    generation_tasks: pd.DataFrame,
    evaluation_tasks: pd.DataFrame,
    llm_models: pd.DataFrame,
    responses: ResponseStore,
) -> dg.Output[pd.DataFrame]:
    """Calls, tokens and cost per stage (generation, evaluation) and model, over every paid answer
    kept for the experiment's tasks: the stored responses and those moved to _superseded/ or _rejected/.
    The cost at the llm_models.csv prices (`cost_usd`) stands next to the cost the provider reported
    (`provider_cost_usd`, where it reports one, as OpenRouter does).

    Why the provenance comes from ResponseStore and not as an input: the response assets' input
    (through the text IO manager) is the answer text, while the tokens and model live in each
    response's provenance sidecar, and superseded and rejected answers (paid for too) are not
    partitions of any asset at all. ResponseStore is the resource whose job is that archive and its
    layout, so the partitions to count come from Dagster inputs (the task tables) and the
    resource reads their sidecars by key; no asset walks the folders itself. The `deps` keep the
    lineage to the two response assets visible in the asset graph."""
    with experiment_errors_as_failures():
        prices = model_prices(llm_models)
    stages = {
        "generation": ("generation_response", generation_tasks["generation_task_id"].tolist()),
        "evaluation": (
            "evaluation_response",
            [
                EVALUATION.parts(pair_key(g, e))
                for g, e in zip(evaluation_tasks["generation_task_id"], evaluation_tasks["evaluation_task_id"])
            ],
        ),
    }
    calls = [
        {**provenance, "stage": stage, "status": status}
        for stage, (asset_name, partitions) in stages.items()
        for status, provenance in responses.archive().paid_calls(asset_name, partitions)
    ]
    df = usage_table(calls, prices)
    priced = df["cost_usd"].notna()
    unpriced = sorted(set(df.loc[~priced, "model_id"]))
    if unpriced:
        context.log.info(f"no price in llm_models.csv for {', '.join(unpriced)}; their cost_usd is empty")
    return dg.Output(
        df,
        metadata={
            "calls": int(df["calls"].sum()),
            "responses": int(df["responses"].sum()),
            "total_tokens": int(df["total_tokens"].sum()),
            "cost_usd_priced_models": float(round(df.loc[priced, "cost_usd"].sum(), 6)),
            "models_without_price": ", ".join(unpriced) or "none",
            "provider_cost_usd": (
                float(round(df["provider_cost_usd"].sum(), 6))
                if df["calls_with_provider_cost"].sum()
                else dg.MetadataValue.text("not reported by the provider")
            ),
            # A model without prices has an unknown cost: say so rather than show an empty cell or 0.
            "preview": md_preview(
                df.drop(columns=PRICE_COLUMNS).assign(cost_usd=df["cost_usd"].astype(object).where(priced, "unknown"))
            ),
        },
    )
