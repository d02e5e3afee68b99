"""Token and cost totals of the paid LLM calls, per stage and model."""

import dagster as dg
import pandas as pd

from ..errors import ExperimentError
from ..resources.responses import ResponseStore
from .common import experiment_errors_as_failures, md_preview

GROUP = "results"
PRICE_COLUMNS = ["input_usd_per_mtok", "output_usd_per_mtok"]
USAGE_COLUMNS = [
    "stage",
    "model_id",
    "model",
    "backend",
    "calls",
    "responses",
    "superseded",
    "rejected",
    "calls_without_usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    *PRICE_COLUMNS,
    "cost_usd",
]
_STAGE_ORDER = {"generation": 0, "evaluation": 1}
_TOKEN_COLUMNS = ["prompt_tokens", "completion_tokens", "total_tokens"]


def model_prices(llm_models: pd.DataFrame) -> pd.DataFrame:
    """USD per million input/output tokens by model id; NaN where llm_models.csv gives no price.

    Both price columns are optional; a value that is present must be a number >= 0."""
    prices = pd.DataFrame({"model_id": llm_models["id"].astype(str)})
    for column in PRICE_COLUMNS:
        raw = llm_models[column] if column in llm_models.columns else pd.Series([None] * len(llm_models))
        raw = raw.reset_index(drop=True)
        blank = raw.isna() | (raw.astype(str).str.strip() == "")
        values = pd.to_numeric(raw.where(~blank), errors="coerce")
        bad = prices["model_id"][(~blank & values.isna()) | (values < 0)].tolist()
        if bad:
            raise ExperimentError(
                f"llm_models.csv has an invalid {column} for model(s) {', '.join(bad)}; "
                "write a number of US dollars per million tokens, or leave it empty."
            )
        prices[column] = values.astype(float)
    return prices


def usage_table(calls: list[dict], prices: pd.DataFrame) -> pd.DataFrame:
    """Sum the paid calls (dicts with `stage`, `status` and a response's provenance) per stage and model.

    `responses` counts the stored responses in use, `superseded` and `rejected` the paid answers
    kept aside; tokens and cost cover all of them. Cost is NaN for a model without both prices,
    0 for the offline backend (nothing is paid)."""
    if not calls:
        return pd.DataFrame(columns=USAGE_COLUMNS)
    df = pd.DataFrame(
        [
            {
                "stage": c["stage"],
                "status": c["status"],
                "model_id": c.get("model_id") or "unknown",
                "model": c.get("model") or "unknown",
                "backend": c.get("backend") or "unknown",
                **{t: c.get(t) for t in _TOKEN_COLUMNS},
            }
            for c in calls
        ]
    )
    for column in _TOKEN_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["without_usage"] = df["prompt_tokens"].isna() | df["completion_tokens"].isna()
    keys = ["stage", "model_id", "model", "backend"]
    grouped = df.groupby(keys, sort=False)
    table = grouped.size().rename("calls").to_frame()
    for status, column in (("stored", "responses"), ("superseded", "superseded"), ("rejected", "rejected")):
        table[column] = grouped["status"].agg(lambda s, status=status: int((s == status).sum()))
    table["calls_without_usage"] = grouped["without_usage"].sum().astype(int)
    for column in _TOKEN_COLUMNS:
        table[column] = grouped[column].sum().astype("int64")
    table = table.reset_index().merge(prices, on="model_id", how="left")
    input_price, output_price = (table[c] for c in PRICE_COLUMNS)
    cost = (table["prompt_tokens"] * input_price + table["completion_tokens"] * output_price) / 1e6
    table["cost_usd"] = cost.where(table["backend"] != "offline", 0.0)
    table["order"] = table["stage"].map(_STAGE_ORDER).fillna(len(_STAGE_ORDER))
    table = table.sort_values(["order", "model_id", "model"], kind="stable")
    return table[USAGE_COLUMNS].reset_index(drop=True)


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io_manager",
    metadata={"daydream/group": GROUP},
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
                {"generation_tasks": g, "evaluation_tasks": e}
                for g, e in zip(evaluation_tasks["generation_task_id"], evaluation_tasks["evaluation_task_id"])
            ],
        ),
    }
    calls = [
        {**provenance, "stage": stage, "status": status}
        for stage, (asset_name, partitions) in stages.items()
        for status, provenance in responses.paid_calls(asset_name, partitions)
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
            "preview": md_preview(df.drop(columns=PRICE_COLUMNS)),
        },
    )
