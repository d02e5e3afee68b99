"""Where every file of the project lives under the output root (the data root, or
`<data_root>/offline` for offline runs):

  2_tasks/<table>.csv                        experiment tables and task tables
  3_generation/<asset>/<generation_task_id>.txt
  4_evaluation/<asset>/<generation_task_id>/<evaluation_task_id>.txt
  5_results/<table>.csv (and figures)

A response has a `.json` provenance sidecar next to it, and, while a call for it is in flight, a
claim `.NAME.claim.json` (see claims.py). Superseded responses move to
`_superseded/` and answers that were paid for but not stored as the response (empty, truncated,
or beaten to the file by another run) go to `_rejected/` in the same folder."""

from __future__ import annotations

from pathlib import Path

from .roots import data_path

FOLDERS = {
    "generation_prompt": "3_generation",
    "generation_response": "3_generation",
    "evaluation_prompt": "4_evaluation",
    "evaluation_response": "4_evaluation",
}
TABLE_FOLDERS = {"results": "5_results"}
DEFAULT_TABLE_FOLDER = "2_tasks"
SIDECAR_SUFFIX = ".json"
TEMP_SUFFIX = ".writing.tmp"
SUPERSEDED = "_superseded"
REJECTED = "_rejected"


def asset_folder(root: Path, asset_name: str) -> Path:
    """The folder holding every partition file of a text asset."""
    return data_path(root) / FOLDERS.get(asset_name, "other") / asset_name


def text_path(root: Path, asset_name: str, keys_by_dimension: dict[str, str] | str | None) -> Path:
    """The file of one partition of a text asset; multi-partition keys nest generation first."""
    folder = asset_folder(root, asset_name)
    if keys_by_dimension is None:
        return folder.with_suffix(".txt")
    if isinstance(keys_by_dimension, str):
        return folder / f"{keys_by_dimension}.txt"
    return folder / keys_by_dimension["generation_tasks"] / f"{keys_by_dimension['evaluation_tasks']}.txt"


def table_path(root: Path, asset_name: str, group: str | None = None) -> Path:
    return data_path(root) / TABLE_FOLDERS.get(group or "", DEFAULT_TABLE_FOLDER) / f"{asset_name}.csv"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(SIDECAR_SUFFIX)


def claim_path(path: Path) -> Path:
    """The claim on a response while its call is in flight: `.NAME.claim.json` beside it."""
    return path.with_name(f".{path.stem}.claim.json")


def temp_path(path: Path) -> Path:
    """The temp file a write of `path` goes through: `.NAME.writing.tmp` in the same folder."""
    return path.parent / f".{path.name}{TEMP_SUFFIX}"
