"""One place for the sentences the pipeline fails with, so every path words a problem the same way."""

from __future__ import annotations


class ExperimentError(ValueError):
    """A problem with the experiment's input: raised before any LLM call, with one clear sentence."""


LIST_PAIRS_HINT = "list the valid pairs with `daydream keys` (or read data/2_tasks/evaluation_tasks.csv)"


def invalid_pair_message(pair_key: str) -> str:
    return f"evaluation pair '{pair_key}' is not listed in evaluation_tasks; {LIST_PAIRS_HINT}."


def missing_key_message() -> str:
    return (
        "OPENROUTER_API_KEY is not set; put it in .env or the environment "
        "(see .env.example), or run with --offline."
    )
