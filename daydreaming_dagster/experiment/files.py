"""Reading the text files of an experiment folder: every description, template, table and
experiment.toml goes through `read_text`, so each one has a size limit and is UTF-8 or refused
with one sentence naming the file.

Why limits: experiment folders are shared, and a researcher runs folders they did not write; a
file far larger than any real description would be read, rendered into every prompt and sent."""

from __future__ import annotations

from pathlib import Path

from .errors import ExperimentError

# The largest file of each kind, in bytes. A real description or template is a few kB.
MAX_TEXT_BYTES = 1_000_000  # a concept description or a template
MAX_TABLE_BYTES = 20_000_000  # a CSV table (concepts, templates, models)
MAX_SETTINGS_BYTES = 64_000  # experiment.toml
RAW_FOLDER = "1_raw"  # the experiment folder under a data root: every file read here lies inside it


def read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of the file at `path` (a local Path or an object-store path), refused when it
    is missing, larger than `limit` bytes or not UTF-8; line ends read as '\\n', as Path.read_text
    reads them (a '\\r\\n' in a description would not survive the CSV tables it is copied into)."""
    _check_inside(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ExperimentError(f"{path} is missing.") from None
    if size > limit:
        raise _too_large(path, size, limit)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)  # a file that grew since its stat is still read only so far
    if len(data) > limit:
        raise _too_large(path, len(data), limit)
    return decode(data, path).replace("\r\n", "\n").replace("\r", "\n")


def _check_inside(path) -> None:
    """Refuse a local file of the experiment folder that is a link to somewhere outside it: a shared
    folder holding `alpha.txt -> ../../.env` would otherwise send that file in every prompt."""
    if not isinstance(path, Path):
        return  # an object-store path has no links
    folder = next((p for p in path.absolute().parents if p.name == RAW_FOLDER), None)
    if folder is None:
        return
    target, inside = path.resolve(), folder.resolve()
    if target != inside and inside not in target.parents:
        raise ExperimentError(
            f"{path} is a link to {target}, outside the experiment folder {folder}; copy the file into the "
            "folder instead (an experiment may only read its own files)."
        )


def decode(data: bytes, path: Path | str) -> str:
    """`data` as UTF-8 text, or one sentence naming `path` and where its first bad byte is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExperimentError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}; save it as UTF-8."
        ) from None


def _too_large(path: Path, size: int, limit: int) -> ExperimentError:
    return ExperimentError(f"{path} is {size:,} bytes, more than the limit of {limit:,} bytes for this file.")
