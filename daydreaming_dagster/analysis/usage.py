"""Token and cost totals of paid LLM calls per stage and model, from their provenance and the
prices in llm_models.csv (pure functions; the `llm_usage` asset publishes them)."""

from __future__ import annotations

import pandas as pd

from ..experiment.batch_choice import batch_price_factor
from ..experiment.errors import ExperimentError

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
    "provider_cost_usd",
    "calls_with_provider_cost",
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
    kept aside; tokens and cost cover all of them. `cost_usd` is the tokens at the llm_models.csv
    prices (batched calls at their batch price factor): NaN ("unknown", never 0) for a model without
    both prices, 0 for the offline backend (nothing is paid). `provider_cost_usd` beside it is what the provider reported, where it did."""
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
                "provider_cost_usd": c.get("provider_cost_usd"),
                "price_factor": batch_price_factor(c),
            }
            for c in calls
        ]
    )
    for column in [*_TOKEN_COLUMNS, "provider_cost_usd"]:
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
    # What the provider itself reported (OpenRouter's usage.cost): NaN when no call of the group has it.
    table["provider_cost_usd"] = grouped["provider_cost_usd"].sum(min_count=1)
    table["calls_with_provider_cost"] = grouped["provider_cost_usd"].count()
    # Batched calls cost their tokens at the batch price (list price x their price factor).
    for column in ("prompt_tokens", "completion_tokens"):
        table[f"priced_{column}"] = (df[column] * df["price_factor"]).groupby([df[k] for k in keys], sort=False).sum()
    table = table.reset_index().merge(prices, on="model_id", how="left")
    input_price, output_price = (table[c] for c in PRICE_COLUMNS)
    cost = (table["priced_prompt_tokens"] * input_price + table["priced_completion_tokens"] * output_price) / 1e6
    table["cost_usd"] = cost.where(table["backend"] != "offline", 0.0)
    table["order"] = table["stage"].map(_STAGE_ORDER).fillna(len(_STAGE_ORDER))
    table = table.sort_values(["order", "model_id", "model"], kind="stable")
    return table[USAGE_COLUMNS].reset_index(drop=True)
