"""The experiment's own error, and the sentences the pipeline fails with when a pair is not listed,
so every path words a problem the same way."""

from __future__ import annotations

from pathlib import Path


class ExperimentError(ValueError):
    """A problem with the experiment's input: raised before any LLM call, with one clear sentence."""


def invalid_pair_message(pair_key: str, evaluation_tasks_csv: Path | str) -> str:
    """The pair is not one the evaluation_tasks table (at `evaluation_tasks_csv`) lists."""
    return (
        f"evaluation pair '{pair_key}' is not listed in evaluation_tasks; list the valid pairs with "
        f"`daydream keys` (with the run's --offline/--data-root) or read {evaluation_tasks_csv}."
    )
