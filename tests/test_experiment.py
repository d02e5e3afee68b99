"""The pure experiment loaders: every broken input fails with an ExperimentError naming the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daydreaming_dagster.experiment.errors import ExperimentError
from daydreaming_dagster.experiment.loaders import (
    concept_content,
    load_concepts,
    load_models,
    load_templates,
)
from daydreaming_dagster.experiment.tasks import build_content_combinations
from daydreaming_dagster.experiment.templates import Concept, render_evaluation_prompt, render_generation_prompt
from daydreaming_dagster.resources.config import ExperimentConfig
from tests.experiment_factory import EVALUATION_TEMPLATE, GENERATION_TEMPLATE

CONCEPTS_CSV = Path("concepts") / "concepts_metadata.csv"


@pytest.fixture
def raw(experiment: Path) -> Path:
    return experiment / "1_raw"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# A loader call per table, so each failure case runs against every table it applies to.
LOADERS = {
    "concepts": (CONCEPTS_CSV, load_concepts, "concept_id"),
    "generation_templates": (Path("generation_templates.csv"), lambda r: load_templates(r, "generation"), "template_id"),
    "evaluation_templates": (Path("evaluation_templates.csv"), lambda r: load_templates(r, "evaluation"), "template_id"),
    "models": (Path("llm_models.csv"), load_models, "id"),
}


def replace_first_id(raw: Path, table: str, new_id: str) -> Path:
    """Rewrite the first data row of `table` so its id is `new_id` (CSV-quoted); returns the CSV path."""
    rel, _, _ = LOADERS[table]
    path = raw / rel
    lines = path.read_text().splitlines()
    first = lines[1].split(",", 1)
    quoted = '"' + new_id.replace('"', '""') + '"'
    lines[1] = f"{quoted},{first[1]}"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- the happy path


def test_tiny_experiment_loads(raw: Path):
    concepts = load_concepts(raw)
    assert concepts["concept_id"].tolist() == ["alpha", "beta", "gamma"]
    assert concepts["active"].tolist() == [True, True, True]
    assert concepts.loc[0, "description_paragraph"] == "The paragraph about alpha."

    generation = load_templates(raw, "generation")
    assert generation["template_id"].tolist() == ["gen-a"]
    assert generation.loc[0, "text"] == GENERATION_TEMPLATE
    evaluation = load_templates(raw, "evaluation")
    assert evaluation.loc[0, "text"] == EVALUATION_TEMPLATE

    models = load_models(raw)
    assert models.set_index("id")["for_generation"].to_dict() == {
        "gen-model-1": True,
        "gen-model-2": True,
        "judge-model-1": False,
        "judge-model-2": False,
    }
    # the factory writes "True" (capitalised) for the judges
    assert models.set_index("id")["for_evaluation"].to_dict()["judge-model-1"] is True
    assert models.set_index("id").loc["gen-model-1", "model"] == "test/gen-model-1"


def test_experiment_config_reads_experiment_toml(experiment: Path, tmp_path: Path):
    config = ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))
    assert config.k == 2
    assert config.description_level == "paragraph"
    assert config.generation_temperature == 0.5
    assert config.generation_max_tokens == 300
    assert config.evaluation_temperature == 0.1
    assert config.evaluation_max_tokens == 200
    assert config.raw_dir == experiment / "1_raw"
    assert config.output_root == str(tmp_path / "out")


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("table", list(LOADERS))
def test_missing_file_is_named(raw: Path, table: str):
    rel, load, _ = LOADERS[table]
    (raw / rel).unlink()
    with pytest.raises(ExperimentError, match=re.escape(str(raw / rel)) + r" is missing"):
        load(raw)


# --------------------------------------------------------------------------- broken CSV


def test_unbalanced_quote_is_a_broken_csv(raw: Path):
    path = write(raw / CONCEPTS_CSV, 'concept_id,name,active\nalpha,"Alpha,true\nbeta,Beta,true\n')
    with pytest.raises(ExperimentError, match=re.escape(str(path)) + r" is not a valid CSV file"):
        load_concepts(raw)


def test_too_many_fields_in_a_later_row_is_a_broken_csv(raw: Path):
    path = write(raw / "llm_models.csv",
                 "id,model,provider,display_name,for_generation,for_evaluation\n"
                 "m1,test/m1,test,M1,true,false\n"
                 "m2,test/m2,test,M2,true,false,surplus\n")
    with pytest.raises(ExperimentError, match=re.escape(str(path)) + r" is not a valid CSV file.*fields"):
        load_models(raw)


def test_too_many_fields_in_the_first_row_is_a_broken_csv(raw: Path):
    write(raw / CONCEPTS_CSV, "concept_id,name,active\nalpha,Alpha,true,x,y\n")
    with pytest.raises(ExperimentError, match=r"fields"):
        load_concepts(raw)


def test_too_few_fields_is_a_broken_csv(raw: Path):
    write(raw / CONCEPTS_CSV, "concept_id,name,active\nalpha,Alpha\nbeta,Beta,true\n")
    with pytest.raises(ExperimentError, match=r"fields"):
        load_concepts(raw)


# --------------------------------------------------------------------------- columns and ids


@pytest.mark.parametrize(
    "table, header, row, missing",
    [
        ("concepts", "concept_id,name", "alpha,Alpha", "active"),
        ("generation_templates", "template_id,template_name,active", "gen-a,gen-a,true", "description"),
        ("evaluation_templates", "template_id,description,active", "judge-a,d,true", "template_name"),
        ("models", "id,model,provider,display_name,for_generation", "m,test/m,t,M,true", "for_evaluation"),
    ],
)
def test_missing_column_is_named(raw: Path, table: str, header: str, row: str, missing: str):
    rel, load, _ = LOADERS[table]
    path = write(raw / rel, f"{header}\n{row}\n")
    with pytest.raises(ExperimentError, match=re.escape(str(path)) + r" lacks the column\(s\) " + missing):
        load(raw)


@pytest.mark.parametrize("table", list(LOADERS))
def test_duplicate_id_is_named(raw: Path, table: str):
    rel, load, column = LOADERS[table]
    path = raw / rel
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")  # the first row again
    duplicated = lines[1].split(",")[0]
    with pytest.raises(ExperimentError, match=rf"duplicate {column} value\(s\): {re.escape(duplicated)}"):
        load(raw)


UNSAFE_IDS = ["a|b", "a,b", "a/b", "a b", "..x", "a..b", "-x", "a__b"]


@pytest.mark.parametrize("table", list(LOADERS))
@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_unsafe_id_is_refused_naming_it(raw: Path, table: str, bad: str):
    path = replace_first_id(raw, table, bad)
    _, load, column = LOADERS[table]
    with pytest.raises(ExperimentError) as info:
        load(raw)
    message = str(info.value)
    assert "unsafe id" in message
    assert repr(bad) in message
    assert str(path) in message and column in message


@pytest.mark.parametrize("good", ["a", "A1", "gen-a", "x_y", "v1.2", "9lives"])
def test_safe_ids_are_accepted(raw: Path, good: str):
    replace_first_id(raw, "concepts", good)
    assert load_concepts(raw)["concept_id"].tolist()[0] == good


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize("kind", ["generation", "evaluation"])
def test_missing_template_file_is_named(raw: Path, kind: str):
    template_id = "gen-a" if kind == "generation" else "judge-a"
    template = raw / f"{kind}_templates" / f"{template_id}.txt"
    template.unlink()
    with pytest.raises(ExperimentError, match=re.escape(f"{kind} template '{template_id}'") + ".*" + re.escape(str(template)) + " is missing"):
        load_templates(raw, kind)


def test_inactive_template_must_still_exist(raw: Path):
    """Every listed template is checked, active or not: a typo must not wait until it is activated."""
    with (raw / "generation_templates.csv").open("a") as f:
        f.write("gen-off,gen-off,inactive,false\n")
    with pytest.raises(ExperimentError, match="gen-off"):
        load_templates(raw, "generation")


@pytest.mark.parametrize(
    "kind, text",
    [
        ("generation", "{% for concept in concepts %}{{ concept.name }}"),  # no endfor
        ("evaluation", "{{ response "),
    ],
)
def test_template_that_does_not_parse(raw: Path, kind: str, text: str):
    template_id = "gen-a" if kind == "generation" else "judge-a"
    path = write(raw / f"{kind}_templates" / f"{template_id}.txt", text)
    with pytest.raises(ExperimentError, match=re.escape(str(path)) + " is not a valid Jinja template"):
        load_templates(raw, kind)


@pytest.mark.parametrize(
    "kind, text, undefined",
    [
        ("generation", "{% for c in concepts %}{{ c.name }}{% endfor %} {{ concept }}", "concept"),
        ("generation", "Judge this: {{ response }}", "response"),  # evaluation-only variable
        ("evaluation", "Rate {{ responce }}. SCORE:", "responce"),
        ("evaluation", "{% for c in concepts %}{{ c }}{% endfor %}{{ response }}", "concepts"),
    ],
)
def test_template_with_an_undefined_variable(raw: Path, kind: str, text: str, undefined: str):
    template_id = "gen-a" if kind == "generation" else "judge-a"
    path = write(raw / f"{kind}_templates" / f"{template_id}.txt", text)
    with pytest.raises(ExperimentError) as info:
        load_templates(raw, kind)
    message = str(info.value)
    assert str(path) in message
    assert f"undefined variable(s) {undefined}" in message


# --------------------------------------------------------------------------- booleans


def test_booleans_accept_true_false_in_either_case(raw: Path):
    write(raw / CONCEPTS_CSV, "concept_id,name,active\na,A,true\nb,B,false\nc,C,True\nd,D,False\n")
    assert load_concepts(raw)["active"].tolist() == [True, False, True, False]


@pytest.mark.parametrize("bad", ["maybe", "ture", "2"])
def test_bad_boolean_is_named(raw: Path, bad: str):
    path = write(raw / CONCEPTS_CSV, f"concept_id,name,active\nalpha,Alpha,true\nbeta,Beta,{bad}\n")
    with pytest.raises(ExperimentError, match=re.escape(f"{path} has {bad!r} in column active")):
        load_concepts(raw)


def test_bad_boolean_in_models_is_named(raw: Path):
    path = write(raw / "llm_models.csv",
                 "id,model,provider,display_name,for_generation,for_evaluation\nm1,test/m1,t,M1,yes please,false\n")
    with pytest.raises(ExperimentError, match=re.escape(f"{path} has 'yes please' in column for_generation")):
        load_models(raw)


# --------------------------------------------------------------------------- experiment.toml


def test_unknown_setting_is_named(experiment: Path, tmp_path: Path):
    path = write(experiment / "1_raw" / "experiment.toml", "k = 2\ntemprature = 0.3\n")
    with pytest.raises(ExperimentError, match=re.escape(f"{path} has unknown setting(s) temprature")):
        ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))


def test_invalid_toml_is_named(experiment: Path, tmp_path: Path):
    path = write(experiment / "1_raw" / "experiment.toml", "k = = 2\n")
    with pytest.raises(ExperimentError, match=re.escape(f"{path} is not valid TOML")):
        ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))


def test_bad_description_level_is_named(experiment: Path, tmp_path: Path):
    write(experiment / "1_raw" / "experiment.toml", 'description_level = "essay"\n')
    with pytest.raises(ExperimentError, match="description_level.*'essay'"):
        ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))


def test_missing_experiment_toml_means_defaults(experiment: Path, tmp_path: Path):
    (experiment / "1_raw" / "experiment.toml").unlink()
    config = ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))
    assert config.k == ExperimentConfig.model_fields["k"].default


@pytest.mark.parametrize("setting", ["k = 0", "generation_temperature = 5", 'k = "two"'])
def test_out_of_range_setting_is_an_experiment_error(experiment: Path, tmp_path: Path, setting: str):
    path = write(experiment / "1_raw" / "experiment.toml", setting + "\n")
    with pytest.raises(ExperimentError, match=re.escape(str(path))):
        ExperimentConfig.for_experiment(str(experiment), str(tmp_path / "out"))


# --------------------------------------------------------------------------- descriptions


def test_description_falls_back_article_paragraph_sentence_name(raw: Path):
    folder = raw / "concepts"
    # alpha: no article -> paragraph
    (folder / "descriptions-article" / "alpha.txt").unlink()
    # beta: no article, no paragraph -> sentence
    (folder / "descriptions-article" / "beta.txt").unlink()
    (folder / "descriptions-paragraph" / "beta.txt").unlink()
    # gamma: nothing -> name
    for level in ("article", "paragraph", "sentence"):
        (folder / f"descriptions-{level}" / "gamma.txt").unlink()
    concepts = load_concepts(raw).set_index("concept_id", drop=False)
    assert concept_content(concepts.loc["alpha"], "article") == "The paragraph about alpha."
    assert concept_content(concepts.loc["beta"], "article") == "The sentence about beta."
    assert concept_content(concepts.loc["gamma"], "article") == "Gamma"
    # the level asked for wins when it exists
    write(folder / "descriptions-article" / "alpha.txt", "A long article about alpha.\n")
    concepts = load_concepts(raw).set_index("concept_id", drop=False)
    assert concept_content(concepts.loc["alpha"], "article") == "A long article about alpha."
    assert concept_content(concepts.loc["alpha"], "sentence") == "The sentence about alpha."

    # the same fallback is what the combinations table carries
    combos = build_content_combinations(concepts.reset_index(drop=True), 2, "article")
    content = combos.drop_duplicates("concept_id").set_index("concept_id")["content"].to_dict()
    assert content == {"alpha": "A long article about alpha.", "beta": "The sentence about beta.", "gamma": "Gamma"}


def test_unknown_description_level_is_refused(raw: Path):
    row = load_concepts(raw).iloc[0]
    with pytest.raises(ExperimentError, match="essay"):
        concept_content(row, "essay")


# --------------------------------------------------------------------------- rendering


def test_generation_template_sees_concepts_with_name_and_content():
    prompt = render_generation_prompt(
        GENERATION_TEMPLATE,
        [Concept(name="Alpha", content="About alpha."), Concept(name="Beta", content="About beta.")],
        "1_raw/generation_templates/gen-a.txt",
    )
    assert prompt == "Combine these ideas into one new idea.\n- Alpha: About alpha.\n- Beta: About beta.\n"


def test_rendering_an_unknown_attribute_fails_clearly_naming_the_template():
    where = "1_raw/generation_templates/gen-a.txt"
    with pytest.raises(ExperimentError, match=re.escape(f"{where} failed to render: ") + ".*summary"):
        render_generation_prompt("{% for c in concepts %}{{ c.summary }}{% endfor %}", [Concept("A", "a")], where)


def test_evaluation_template_sees_the_response_verbatim():
    response = "An idea with {{ braces }} and a trailing newline\n"
    prompt = render_evaluation_prompt(EVALUATION_TEMPLATE, response, "1_raw/evaluation_templates/judge-a.txt")
    assert prompt == f"Rate this idea from 0 to 10 and end with SCORE: <n>.\n\n{response}\n"
