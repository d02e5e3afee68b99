"""Reading an experiment folder (`<data_root>/1_raw`) into validated tables.

Pure functions: no Dagster import. Every problem is raised as an ExperimentError whose message
is one sentence naming the file, the row or the column at fault. Every file is read through
files.read_text (size limits, UTF-8); templates are checked by templates.check_template."""

from __future__ import annotations

import csv
import io
import tomllib
from pathlib import Path

import pandas as pd

from .errors import ExperimentError
from .files import MAX_SETTINGS_BYTES, MAX_TABLE_BYTES, MAX_TEXT_BYTES, read_text
from .ids import check_safe_id
from .templates import TemplateKind, check_template

DESCRIPTION_LEVELS = ("sentence", "paragraph", "article")
TEMPLATE_COLUMNS = ["template_id", "template_name", "description", "active"]
MODEL_COLUMNS = ["id", "model", "provider", "display_name", "for_generation", "for_evaluation"]
CONCEPT_COLUMNS = ["concept_id", "name", "active"]
CONCEPTS_TABLE = "concepts/concepts_metadata.csv"

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def read_csv(path: Path, required: list[str], rows: str) -> pd.DataFrame:
    """Read a CSV table as strings, failing clearly on a missing or oversized file, text that is not
    UTF-8, a parse error, a missing column or no row at all (`rows` names what a row is)."""
    if not path.is_file():
        raise ExperimentError(f"{path} is missing.")
    # Read once, as text: a local path and an object-store path (store/object_paths.py) alike.
    text = read_text(path, MAX_TABLE_BYTES).removeprefix("\ufeff")  # the mark spreadsheets put first
    _check_field_counts(text, path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExperimentError(f"{path} is not a valid CSV file: {first_line}.") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ExperimentError(f"{path} lacks the column(s) {', '.join(missing)}.")
    if df.empty:
        raise ExperimentError(f"{path} lists no {rows}; add at least one row.")
    return df


def _check_field_counts(text: str, path: Path) -> None:
    """Every row has as many fields as the header: pandas would shift or pad a ragged row silently."""
    try:
        rows = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
        header = next(rows, None)
        if header is None:
            raise ExperimentError(f"{path} is empty; it needs a header row.")
        for row in rows:
            if row and len(row) != len(header):
                raise ExperimentError(
                    f"{path} is not a valid CSV file: line {rows.line_num} has {len(row)} fields "
                    f"but the header has {len(header)}."
                )
    except csv.Error as exc:
        raise ExperimentError(f"{path} is not a valid CSV file: {exc}.") from exc


def _bool_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    def parse(value: str) -> bool:
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ExperimentError(
            f"{path} has {value!r} in column {column}; write true or false."
        )

    return df[column].map(parse).astype(bool)


def _check_ids(df: pd.DataFrame, column: str, path: Path) -> None:
    for value in df[column]:
        check_safe_id(value, f"{path} (column {column})")
    duplicated = sorted(set(df.loc[df[column].duplicated(), column]))
    if duplicated:
        raise ExperimentError(f"{path} has duplicate {column} value(s): {', '.join(duplicated)}.")


def load_concepts(raw_dir: Path) -> pd.DataFrame:
    """Concepts with one description column per level (None where the file is absent)."""
    path = raw_dir / CONCEPTS_TABLE
    df = read_csv(path, CONCEPT_COLUMNS, "concepts")
    _check_ids(df, "concept_id", path)
    df["active"] = _bool_column(df, "active", path)
    for level in DESCRIPTION_LEVELS:
        folder = raw_dir / "concepts" / f"descriptions-{level}"
        df[f"description_{level}"] = [
            _read_optional(folder / f"{concept_id}.txt") for concept_id in df["concept_id"]
        ]
    return df.reset_index(drop=True)


def _read_optional(path: Path) -> str | None:
    return read_text(path, MAX_TEXT_BYTES).strip() if path.is_file() else None


def concept_content(row: pd.Series | dict, level: str) -> str:
    """The description at `level`, falling back to paragraph, then sentence, then the name."""
    return _concept_content(row, level)[0]


def concept_content_source(row: pd.Series | dict, level: str) -> str:
    """The file (relative to `1_raw`) that `concept_content` takes the text from."""
    return _concept_content(row, level)[1]


def _concept_content(row: pd.Series | dict, level: str) -> tuple[str, str]:
    if level not in DESCRIPTION_LEVELS:
        raise ExperimentError(
            f"description_level {level!r} is not one of {', '.join(DESCRIPTION_LEVELS)}."
        )
    for candidate in (level, "paragraph", "sentence"):
        text = row.get(f"description_{candidate}")
        if isinstance(text, str) and text:
            return text, f"concepts/descriptions-{candidate}/{row['concept_id']}.txt"
    return str(row["name"]), CONCEPTS_TABLE


def load_templates(raw_dir: Path, kind: TemplateKind) -> pd.DataFrame:
    """The `<kind>_templates.csv` table with each template's Jinja text in a `text` column.

    Every template (active or not) must exist and pass templates.check_template."""
    path = raw_dir / f"{kind}_templates.csv"
    df = read_csv(path, TEMPLATE_COLUMNS, f"{kind} templates")
    _check_ids(df, "template_id", path)
    df["active"] = _bool_column(df, "active", path)
    texts = []
    for template_id in df["template_id"]:
        template_path = raw_dir / f"{kind}_templates" / f"{template_id}.txt"
        if not template_path.is_file():
            raise ExperimentError(
                f"{kind} template {template_id!r} is listed in {path.name} but {template_path} is missing."
            )
        text = read_text(template_path, MAX_TEXT_BYTES)
        check_template(text, kind, str(template_path))
        texts.append(text)
    df["text"] = texts
    if kind == "evaluation":
        df = _score_scale_columns(df, path)
    return df.reset_index(drop=True)


def _score_scale_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Each evaluation template may declare its score scale; the default is 0 to 10."""
    for column, default in (("score_min", 0.0), ("score_max", 10.0)):
        if column not in df.columns:
            df[column] = default
            continue
        values = pd.to_numeric(df[column].replace("", str(default)), errors="coerce")
        bad = df.loc[values.isna(), "template_id"].tolist()
        if bad:
            raise ExperimentError(f"{path} has a non-numeric {column} for template(s) {', '.join(bad)}.")
        df[column] = values.astype(float)
    inverted = df.loc[df["score_min"] >= df["score_max"], "template_id"].tolist()
    if inverted:
        raise ExperimentError(f"{path} has score_min >= score_max for template(s) {', '.join(inverted)}.")
    return df


def load_models(raw_dir: Path) -> pd.DataFrame:
    """The model table; `model` is the name sent to the API, the flags say who generates and who judges."""
    path = raw_dir / "llm_models.csv"
    df = read_csv(path, MODEL_COLUMNS, "models")
    _check_ids(df, "id", path)
    empty = df.loc[df["model"].str.strip() == "", "id"].tolist()
    if empty:
        raise ExperimentError(f"{path} has no model name for id(s) {', '.join(empty)}.")
    for column in ("for_generation", "for_evaluation"):
        df[column] = _bool_column(df, column, path)
    return df.reset_index(drop=True)


def load_settings(raw_dir: Path) -> dict:
    """The optional `experiment.toml` of the experiment folder (an empty dict when absent)."""
    path = raw_dir / "experiment.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(read_text(path, MAX_SETTINGS_BYTES))
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path} is not valid TOML: {exc}.") from exc
