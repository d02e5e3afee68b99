"""Small helpers the asset modules share: clear failures and Markdown previews."""

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from ..errors import ExperimentError

PREVIEW_ROWS = 10


@contextlib.contextmanager
def experiment_errors_as_failures() -> Iterator[None]:
    """Show an ExperimentError as a Dagster Failure whose description is its one sentence."""
    try:
        yield
    except ExperimentError as exc:
        raise dg.Failure(description=str(exc)) from exc


def md_preview(df: pd.DataFrame, columns: list[str] | None = None, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    shown = df[columns] if columns else df
    text = shown.head(rows).to_markdown(index=False) if len(shown) else "_empty_"
    if len(shown) > rows:
        text += f"\n\n… {len(shown) - rows} more rows"
    return dg.MetadataValue.md(text)


def text_preview(text: str, chars: int = 400) -> dg.MetadataValue:
    return dg.MetadataValue.text(text if len(text) <= chars else text[:chars] + " …")


def table_metadata(df: pd.DataFrame, columns: list[str] | None = None) -> dict:
    return {"rows": len(df), "preview": md_preview(df, columns)}
