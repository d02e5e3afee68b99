"""Benchmark: change tracking. What one edited evaluation template costs, and what finding it costs.

1. The README's walk-through on the sample experiment (84 generation tasks, 336 evaluation
   pairs) against the local OpenAI-protocol server: `daydream run`; edit
   `evaluation_templates/insight-check.txt`; `daydream run` (reports, asks nothing);
   `daydream run --replace-changed` (asks exactly the template's pairs); `daydream run` again.
   LLM requests and wall time of each, and the lines the runner printed about the change.
2. The out-of-date check alone (runner/reruns/changes.py) on a synthetic experiment of
   2,016 generations x 6 methods = 12,096 pairs with every answer stored: seconds for the
   generations and for the pairs, with nothing changed and after one template edit.

    uv run python bench/changes.py [--skip-walkthrough] [--skip-scale]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, write_synthetic_experiment
from llm_runs import daydream_run, start_server

sys.path.insert(0, str(REPO))
import dagster as dg  # noqa: E402

from daydreaming_dagster.experiment.loaders import load_concepts, load_models, load_templates  # noqa: E402
from daydreaming_dagster.experiment.prompts import evaluation_prompts, generation_prompts  # noqa: E402
from daydreaming_dagster.experiment.tasks import (  # noqa: E402
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
)
from daydreaming_dagster.resources.config import ExperimentConfig  # noqa: E402
from daydreaming_dagster.runner.reruns.changes import ChangeCheck  # noqa: E402
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path  # noqa: E402
from daydreaming_dagster.store.write_once import content_digest  # noqa: E402

EDITED = "insight-check"


def walkthrough() -> None:
    server = start_server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = tmp / "data"
            shutil.copytree(REPO / "data" / "1_raw", data / "1_raw")
            first = daydream_run(tmp, data, server, 16, pool_limit=16)
            print(f"  {'daydream run (fresh)':38s} {first['requests']:4d} LLM requests {first['wall']:6.1f} s")
            template = data / "1_raw" / "evaluation_templates" / f"{EDITED}.txt"
            template.write_text(template.read_text() + "\nBe strict: most ideas are not new.\n")
            print(f"  edit evaluation_templates/{EDITED}.txt")
            steps = [("daydream run", []), ("daydream run --replace-changed", ["--replace-changed"]), ("daydream run", [])]
            for name, extra in steps:
                result = daydream_run(tmp, data, server, 16, pool_limit=16, extra=extra)
                print(f"  {name:38s} {result['requests']:4d} LLM requests {result['wall']:6.1f} s")
                for line in result["log"]:
                    if "out of date" in line and ("pair" in line or "generation" in line) and "to run" not in line:
                        print(f"      | {line}")
    finally:
        server.stop()


def synthetic_answers(root: Path) -> None:
    """Task tables and a stored answer (text and sidecar) for every task of the experiment at `root`."""
    raw = root / "1_raw"
    config = ExperimentConfig.for_experiment(str(root), str(root))
    concepts, models = load_concepts(raw), load_models(raw)
    templates = {kind: load_templates(raw, kind) for kind in ("generation", "evaluation")}
    combos = build_content_combinations(concepts, config.k, config.description_level)
    generation = build_generation_tasks(combos, templates["generation"], models)
    evaluation = build_evaluation_tasks(generation, templates["evaluation"], models)
    tables = {
        "content_combinations": combos,
        "generation_templates": templates["generation"],
        "evaluation_templates": templates["evaluation"],
        "generation_tasks": generation,
        "evaluation_tasks": evaluation,
    }
    for name, df in tables.items():
        path = table_path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)

    def store(asset: str, parts, request) -> str:
        text = f"An answer to {request.prompt_sha256[:12]}.\nSCORE: 5"
        path = text_path(root, asset, parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sidecar_path(path).write_text(json.dumps({**request.fingerprint(), **content_digest(text.encode())}))
        return text

    rows = {r["generation_task_id"]: r for r in generation.to_dict("records")}
    answers = {}
    for key, prompt in generation_prompts(rows, combos, templates["generation"]).items():
        answers[key] = store("generation_response", key, config.generation_request(rows[key], prompt.text))
    pairs = {f"{r['evaluation_task_id']}|{r['generation_task_id']}": r for r in evaluation.to_dict("records")}
    for key, prompt in evaluation_prompts(pairs, templates["evaluation"], answers).items():
        parts = {"generation_tasks": pairs[key]["generation_task_id"], "evaluation_tasks": pairs[key]["evaluation_task_id"]}
        store("evaluation_response", parts, config.evaluation_request(pairs[key], prompt.text))


def timed_check(root: Path, label: str, instance) -> None:
    """Run the check once and print, per stage, wall and CPU seconds and what it found."""
    check = ChangeCheck(root, ExperimentConfig.for_experiment(str(root), str(root)), instance)
    figures = []
    for stage in (check.generations, check.evaluations):
        wall, cpu = time.perf_counter(), time.process_time()
        found = stage()
        figures.append(f"{time.perf_counter() - wall:5.2f} s wall, {time.process_time() - cpu:5.2f} s CPU, "
                       f"{len(found.out_of_date)} out of date")
    print(f"  {label:16s}: generations {figures[0]}; pairs {figures[1]}")


def scale() -> None:
    with tempfile.TemporaryDirectory() as tmp, dg.DagsterInstance.ephemeral() as instance:
        root = write_synthetic_experiment(Path(tmp) / "data", 64, 2, 1, 1, 3, 2)
        started = time.perf_counter()
        synthetic_answers(root)
        print(f"  stored answers written in {time.perf_counter() - started:.1f} s")
        timed_check(root, "nothing changed", instance)
        template = root / "1_raw" / "evaluation_templates" / "eva-t0.txt"
        template.write_text(template.read_text() + "Be strict.\n")
        templates = load_templates(root / "1_raw", "evaluation")
        templates.to_csv(table_path(root, "evaluation_templates"), index=False)
        timed_check(root, "one template", instance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-walkthrough", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if not args.skip_walkthrough:
        print("\nwalk-through: the sample experiment, one evaluation template edited (instant server, C = 16)")
        walkthrough()
    if not args.skip_scale:
        print("\nout-of-date check: 2,016 generations x 6 methods = 12,096 stored pairs")
        scale()


if __name__ == "__main__":
    main()
