"""The floor: a plain asyncio script making the calls `daydream run` makes, as fast as C slots allow.

It reads the experiment with the project's pure functions (no Dagster), then, with the openai SDK's
AsyncOpenAI and a semaphore of C, asks every generation, and each generation's judges as soon as its
answer arrives (streaming; `--barrier` waits for every generation first). Nothing is stored and no
result is built: this is what the calls alone cost. Prints its wall and, last, one JSON line.

    uv run python bench/floor.py --base-url URL --data-root DIR [--concurrency 16] [--barrier]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import openai  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daydreaming_dagster.experiment.loaders import (  # noqa: E402
    load_concepts,
    load_models,
    load_settings,
    load_templates,
)
from daydreaming_dagster.experiment.prompts import template_label  # noqa: E402
from daydreaming_dagster.experiment.tasks import (  # noqa: E402
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
)
from daydreaming_dagster.experiment.templates import (  # noqa: E402
    Concept,
    render_evaluation_prompt,
    render_generation_prompt,
)

# ExperimentConfig's defaults (resources/config.py); whole_command.py checks that the floor and
# `daydream run` sent the same requests, these parameters included.
DEFAULTS = {"k": 2, "description_level": "paragraph", "generation_temperature": 0.8,
            "generation_max_tokens": 1200, "evaluation_temperature": 0.0, "evaluation_max_tokens": 800}


def requests_of(data_root: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """The generation requests, and for each generation task the judge requests minus the answer."""
    raw = data_root / "1_raw"
    settings = {**DEFAULTS, **load_settings(raw)}
    models = load_models(raw)
    gen_templates = load_templates(raw, "generation").set_index("template_id")["text"]
    eval_templates = load_templates(raw, "evaluation").set_index("template_id")["text"]
    combos = build_content_combinations(load_concepts(raw), settings["k"], settings["description_level"])
    members = {c: rows.sort_values("position") for c, rows in combos.groupby("combo_id")}
    tasks = build_generation_tasks(combos, load_templates(raw, "generation"), models)
    pairs = build_evaluation_tasks(tasks, load_templates(raw, "evaluation"), models)
    generations = [
        {
            "id": t.generation_task_id,
            "model": t.generation_model,
            "prompt": render_generation_prompt(
                gen_templates[t.generation_template_id],
                [Concept(name=r.name, content=r.content) for r in members[t.combo_id].itertuples()],
                template_label("generation", t.generation_template_id),
            ),
            "temperature": settings["generation_temperature"],
            "max_tokens": settings["generation_max_tokens"],
        }
        for t in tasks.itertuples()
    ]
    judges: dict[str, list[dict]] = {}
    for p in pairs.itertuples():
        judges.setdefault(p.generation_task_id, []).append(
            {"model": p.evaluation_model, "template": eval_templates[p.evaluation_template_id],
             "where": template_label("evaluation", p.evaluation_template_id),
             "temperature": settings["evaluation_temperature"], "max_tokens": settings["evaluation_max_tokens"]}
        )
    return generations, judges


async def run(base_url: str, concurrency: int, generations: list[dict], judges: dict, barrier: bool) -> dict:
    client = openai.AsyncOpenAI(api_key="floor", base_url=base_url, max_retries=3, timeout=300)
    slots = asyncio.Semaphore(concurrency)
    first, last = [], []

    async def call(model: str, prompt: str, temperature: float, max_tokens: int) -> str:
        async with slots:
            first.append(time.perf_counter())
            response = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}],
                temperature=float(temperature), max_tokens=int(max_tokens),
            )
            last.append(time.perf_counter())
            return response.choices[0].message.content or ""

    async def judge(generation: dict, answer: str) -> None:
        await asyncio.gather(*(
            call(j["model"], render_evaluation_prompt(j["template"], answer, j["where"]), j["temperature"], j["max_tokens"])
            for j in judges.get(generation["id"], [])
        ))

    async def generate(generation: dict) -> str:
        answer = await call(generation["model"], generation["prompt"], generation["temperature"], generation["max_tokens"])
        if not barrier:
            await judge(generation, answer)
        return answer

    answers = await asyncio.gather(*(generate(g) for g in generations))
    if barrier:
        await asyncio.gather(*(judge(g, a) for g, a in zip(generations, answers)))
    await client.close()
    return {"calls": len(last), "first_call_s": min(first) - STARTED, "last_answer_s": max(last) - STARTED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--barrier", action="store_true", help="judge only after every generation has answered")
    args = parser.parse_args()
    generations, judges = requests_of(args.data_root)
    result = asyncio.run(run(args.base_url, args.concurrency, generations, judges, args.barrier))
    result["wall_s"] = time.perf_counter() - STARTED
    print(f"floor ({'barrier' if args.barrier else 'streaming'}): {result['calls']} calls, first at "
          f"{result['first_call_s']:.2f} s, last answer at {result['last_answer_s']:.2f} s, wall {result['wall_s']:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
