"""Writes small experiment folders (the real on-disk layout) for tests."""

from __future__ import annotations

from pathlib import Path

GENERATION_TEMPLATE = (
    "Combine these ideas into one new idea.\n"
    "{% for concept in concepts %}- {{ concept.name }}: {{ concept.content }}\n{% endfor %}"
)
EVALUATION_TEMPLATE = "Rate this idea from 0 to 10 and end with SCORE: <n>.\n\n{{ response }}\n"


def write_experiment(
    root: Path,
    concepts: tuple[str, ...] = ("alpha", "beta", "gamma"),
    generation_templates: tuple[str, ...] = ("gen-a",),
    evaluation_templates: tuple[str, ...] = ("judge-a",),
    generators: tuple[str, ...] = ("gen-model-1", "gen-model-2"),
    judges: tuple[str, ...] = ("judge-model-1", "judge-model-2"),
    k: int = 2,
    settings: str = "",
) -> Path:
    """A complete experiment under `root/1_raw`; returns `root` (the data root). `settings` are
    extra lines of experiment.toml (e.g. replicate counts)."""
    raw = root / "1_raw"
    (raw / "concepts").mkdir(parents=True, exist_ok=True)
    rows = ["concept_id,name,active"] + [f"{c},{c.title()},true" for c in concepts]
    (raw / "concepts" / "concepts_metadata.csv").write_text("\n".join(rows) + "\n")
    for level in ("sentence", "paragraph", "article"):
        folder = raw / "concepts" / f"descriptions-{level}"
        folder.mkdir(exist_ok=True)
        for c in concepts:
            (folder / f"{c}.txt").write_text(f"The {level} about {c}.")
    for kind, ids, text in (
        ("generation", generation_templates, GENERATION_TEMPLATE),
        ("evaluation", evaluation_templates, EVALUATION_TEMPLATE),
    ):
        (raw / f"{kind}_templates").mkdir(exist_ok=True)
        lines = ["template_id,template_name,description,active"]
        for template_id in ids:
            lines.append(f"{template_id},{template_id},a test template,true")
            (raw / f"{kind}_templates" / f"{template_id}.txt").write_text(text)
        (raw / f"{kind}_templates.csv").write_text("\n".join(lines) + "\n")
    models = ["id,model,provider,display_name,for_generation,for_evaluation"]
    models += [f"{m},test/{m},test,{m},true,false" for m in generators]
    models += [f"{m},test/{m},test,{m},false,True" for m in judges]
    (raw / "llm_models.csv").write_text("\n".join(models) + "\n")
    (raw / "experiment.toml").write_text(
        f"k = {k}\ndescription_level = \"paragraph\"\n"
        "generation_temperature = 0.5\ngeneration_max_tokens = 300\n"
        "evaluation_temperature = 0.1\nevaluation_max_tokens = 200\n" + settings
    )
    return root
