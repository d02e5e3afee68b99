"""An experiment folder written by someone else: every attack tried on it is refused with one
sentence naming the file, before anything is written or called, by the loaders and by the real
`daydream` command (in this process, and as a subprocess with a fake API key in its environment).

Every template test is marked `security`: never skip them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daydreaming_dagster.experiment.errors import ExperimentError
from daydreaming_dagster.experiment.files import MAX_SETTINGS_BYTES, MAX_TABLE_BYTES, MAX_TEXT_BYTES
from daydreaming_dagster.experiment.loaders import load_concepts, load_models, load_templates
from daydreaming_dagster.experiment.settings import ExperimentSettings
from daydreaming_dagster.experiment.templates import (
    MAX_PROMPT_CHARS,
    Concept,
    render_evaluation_prompt,
    render_generation_prompt,
)
from daydreaming_dagster.runner.cli import main
from daydreaming_dagster.store.object_paths import S3Path
from tests.experiment_factory import write_experiment
from tests.hostile import (
    GEN,
    SECRET,
    attacks,
    last_line,
    load_kind,
    no_secret_under,
    rewrite,
    sentence_of,
    sparse,
    write_template,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A valid experiment (the data root) that each test breaks in one place."""
    return write_experiment(tmp_path / "data")


@pytest.fixture
def daydream(tmp_path: Path, monkeypatch, capsys):
    """`daydream ARGS --offline --data-root ROOT` in this process, with DAGSTER_HOME and the working
    directory in tmp_path and a fake key in the environment: (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    # Set, then removed: monkeypatch then restores what the command exports into os.environ.
    for name in ("DAYDREAM_DATA_ROOT", "DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT", "OPENROUTER_BASE_URL"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)

    def run(command: str, data_root: Path) -> tuple[int, str, str]:
        capsys.readouterr()
        workers = ["--workers", "1"] if command == "run" else []  # no worker processes in a test process
        code = main([command, "--offline", "--data-root", str(data_root), *workers])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --------------------------------------------------------------------------- templates


ATTACKS = list(attacks(Path("/x")))


@pytest.mark.security
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_hostile_template_is_refused_by_the_loader_naming_its_file(root: Path, tmp_path: Path, attack: str):
    rel, text, words = attacks(tmp_path / "pwned")[attack]
    path = write_template(root, rel, text)
    sentence = sentence_of(load_kind(rel), root)
    assert sentence.startswith(f"{path} ") and words in sentence, sentence
    assert len(sentence.splitlines()) == 1 and sentence.endswith(".")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.security
@pytest.mark.parametrize("attack", ["popen", "environ", "subclasses", "include", "computed item", "long prompt"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_daydream_refuses_a_hostile_template_with_its_sentence_last(root, tmp_path, daydream, attack, command):
    rel, text, _ = attacks(tmp_path / "pwned")[attack]
    write_template(root, rel, text)
    expected = sentence_of(load_kind(rel), root)
    code, out, err = daydream(command, root)
    assert code != 0
    assert last_line(err) == expected, err[-3000:]
    assert not (tmp_path / "pwned").exists()
    assert SECRET not in out + err
    no_secret_under(tmp_path)


@pytest.mark.security
@pytest.mark.slow
@pytest.mark.parametrize("attack", ["popen", "environ"])
def test_the_daydream_command_refuses_a_hostile_template_in_a_subprocess(root: Path, tmp_path: Path, attack: str):
    rel, text, _ = attacks(tmp_path / "pwned")[attack]
    write_template(root, rel, text)
    expected = sentence_of(load_kind(rel), root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYDREAM_", "DAGSTER_", "OPENROUTER_"))}
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), OPENROUTER_API_KEY=SECRET, PYTHONWARNINGS="ignore")
    uv = shutil.which("uv")
    command = [uv, "run", "--project", str(REPO), "--no-sync", "daydream"] if uv else [sys.executable, "-m", "daydreaming_dagster.runner.cli"]
    proc = subprocess.run(
        [*command, "run", "--offline", "--data-root", str(root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    assert last_line(proc.stderr) == expected, proc.stderr[-3000:]
    assert not (tmp_path / "pwned").exists()
    assert SECRET not in proc.stdout + proc.stderr
    no_secret_under(tmp_path)


@pytest.mark.security
def test_templates_keep_loops_conditionals_set_and_filters(root: Path):
    text = (
        "{% set intro = 'Ideas' %}{{ intro|upper }}:\n"
        "{% for c in concepts %}{% if loop.first %}first {% endif %}{{ loop.index }}. {{ c.name|lower }} "
        "({{ c.content|length }}){% endfor %}\n{{ concepts|map(attribute='name')|join(', ') }}\n"
        "{{ '-' * 3 }}{{ 2 ** 3 }}\n"
    )
    write_template(root, GEN, text)
    templates = load_templates(root / "1_raw", "generation")
    prompt = render_generation_prompt(templates.loc[0, "text"], [Concept("Alpha", "abc"), Concept("Beta", "de")], GEN)
    assert prompt == "IDEAS:\nfirst 1. alpha (3)2. beta (2)\nAlpha, Beta\n---8\n"


@pytest.mark.security
def test_a_render_failure_names_the_template_file():
    where = "1_raw/generation_templates/gen-a.txt"
    template = "{{ concepts[1].name }}{{ concepts[2].name }}"  # fine on the three probe concepts, not on two
    with pytest.raises(ExperimentError, match=re.escape(f"{where} failed to render: ") + ".*element 2"):
        render_generation_prompt(template, [Concept("A", "a"), Concept("B", "b")], where)
    with pytest.raises(ExperimentError, match=re.escape(f"{where} failed to render: TypeError")):
        render_generation_prompt("{{ concepts|sum }}", [Concept("A", "a")], where)


@pytest.mark.security
def test_a_render_failure_with_the_real_values_is_the_commands_last_line(root: Path, daydream):
    write_template(root, GEN, "{{ concepts[1].name }} and {{ concepts[2].name }}")  # k = 2: no third concept
    code, _, err = daydream("plan", root)
    assert code != 0
    assert last_line(err) == f"1_raw/{GEN} failed to render: list object has no element 2."


@pytest.mark.security
def test_a_prompt_longer_than_the_limit_is_refused_at_render_time():
    where = "1_raw/evaluation_templates/judge-a.txt"
    with pytest.raises(ExperimentError, match=re.escape(f"{where} renders a prompt of more than {MAX_PROMPT_CHARS:,}")):
        render_evaluation_prompt("{{ response }}{{ response }}", "x" * (MAX_PROMPT_CHARS // 2 + 1), where)


# --------------------------------------------------------------------------- ids


def test_a_model_id_with_a_trailing_newline_is_refused(root: Path):
    path = rewrite(root / "1_raw" / "llm_models.csv", "gen-model-1,test", '"deepseek-chat\n",test')
    assert sentence_of(load_models, root / "1_raw") == (
        f"{path} (column id) has the id 'deepseek-chat\\n', which begins or ends with a space or line break; remove it."
    )


def test_a_concept_id_with_a_trailing_newline_is_refused(root: Path):
    path = rewrite(root / "1_raw" / "concepts" / "concepts_metadata.csv", "alpha,Alpha", '"alpha\n",Alpha')
    sentence = sentence_of(load_concepts, root / "1_raw")
    assert sentence.startswith(f"{path} (column concept_id) has the id 'alpha\\n'")


def test_an_id_of_300_characters_is_refused(root: Path):
    path = rewrite(root / "1_raw" / "llm_models.csv", "gen-model-1,test", "g" * 300 + ",test")
    assert sentence_of(load_models, root / "1_raw") == (
        f"{path} (column id) has an id of 300 characters ('gggggggggggggggggggggggg'...); ids may have at most 64 characters."
    )


def test_an_id_of_64_characters_is_accepted(root: Path):
    rewrite(root / "1_raw" / "llm_models.csv", "gen-model-1,test", "g" * 64 + ",test")
    assert "g" * 64 in load_models(root / "1_raw")["id"].tolist()


# --------------------------------------------------------------------------- experiment.toml


def toml_sentence(root: Path, lines: str) -> str:
    (root / "1_raw" / "experiment.toml").write_text(lines, encoding="utf-8")
    return sentence_of(ExperimentSettings.for_experiment, str(root), str(root))


@pytest.mark.parametrize(
    "line, words",
    [
        ("k = true", "sets k = true, a boolean; k must be an integer."),
        ('k = "2"', 'sets k = "2", a string; k must be an integer.'),
        ("k = 2.0", "sets k = 2.0, a number; k must be an integer."),
        ('generation_temperature = "0.5"', 'sets generation_temperature = "0.5", a string; generation_temperature must be a number.'),
        ("max_cost_usd = false", "sets max_cost_usd = false, a boolean; max_cost_usd must be a number."),
        ("description_level = 3", "sets description_level = 3, an integer; description_level must be a string."),
        ('output_root = "x"', "sets output_root, which only the command sets"),
        ('data_root = "elsewhere"', "sets data_root, which only the command sets"),
    ],
)
def test_experiment_toml_is_parsed_strictly(root: Path, line: str, words: str):
    sentence = toml_sentence(root, line + "\n")
    assert sentence.startswith(f"{root / '1_raw' / 'experiment.toml'} {words}"), sentence


def test_a_float_setting_may_be_written_as_an_integer(root: Path):
    (root / "1_raw" / "experiment.toml").write_text("generation_temperature = 1\nmax_cost_usd = 5\n")
    settings = ExperimentSettings.for_experiment(str(root), str(root))
    assert settings.generation_temperature == 1.0 and settings.max_cost_usd == 5.0


# --------------------------------------------------------------------------- encodings and sizes


LOADER_OF = {
    "concepts/descriptions-paragraph/alpha.txt": lambda root: load_concepts(root / "1_raw"),
    GEN: lambda root: load_templates(root / "1_raw", "generation"),
    "llm_models.csv": lambda root: load_models(root / "1_raw"),
    "experiment.toml": lambda root: ExperimentSettings.for_experiment(str(root), str(root)),
}


@pytest.mark.parametrize("rel", list(LOADER_OF))
def test_a_latin_1_byte_is_one_sentence_naming_the_file(root: Path, rel: str):
    path = root / "1_raw" / rel
    before = path.read_bytes()
    path.write_bytes(before + b"# caf\xe9\n")
    assert sentence_of(LOADER_OF[rel], root) == (
        f"{path} is not UTF-8 text: byte 0xe9 at offset {len(before) + 5}; save it as UTF-8."
    )


@pytest.mark.parametrize(
    "rel, limit",
    [
        ("concepts/descriptions-paragraph/alpha.txt", MAX_TEXT_BYTES),
        (GEN, MAX_TEXT_BYTES),
        ("llm_models.csv", MAX_TABLE_BYTES),
        ("experiment.toml", MAX_SETTINGS_BYTES),
    ],
)
def test_an_oversized_file_is_refused_naming_its_size_and_the_limit(root: Path, rel: str, limit: int):
    path = root / "1_raw" / rel
    sparse(path, max(limit + 1, 20_000_000))
    size = path.stat().st_size
    assert sentence_of(LOADER_OF[rel], root) == (
        f"{path} is {size:,} bytes, more than the limit of {limit:,} bytes for this file."
    )


def test_a_20_mb_description_is_refused(root: Path):
    path = root / "1_raw" / "concepts" / "descriptions-article" / "beta.txt"
    path.write_bytes(b"a" * 20_000_000)
    assert sentence_of(load_concepts, root / "1_raw").startswith(f"{path} is 20,000,000 bytes, more than the limit")


def test_windows_line_ends_are_read_as_newlines(root: Path):
    (root / "1_raw" / "concepts" / "descriptions-paragraph" / "alpha.txt").write_bytes(b"one\r\ntwo\rthree")
    assert load_concepts(root / "1_raw").loc[0, "description_paragraph"] == "one\ntwo\nthree"


def test_files_on_object_storage_are_read_through_the_same_helper(s3, tmp_path: Path):
    url = s3.upload(write_experiment(tmp_path / "data"), "hostile")
    raw = S3Path.from_url(url) / "1_raw"
    assert load_concepts(raw)["concept_id"].tolist() == ["alpha", "beta", "gamma"]
    description = raw / "concepts" / "descriptions-paragraph" / "alpha.txt"
    description.write_bytes(b"caf\xe9")
    assert sentence_of(load_concepts, raw) == f"{description} is not UTF-8 text: byte 0xe9 at offset 3; save it as UTF-8."
    description.write_bytes(b"a" * (MAX_TEXT_BYTES + 1))
    assert sentence_of(load_concepts, raw).startswith(f"{description} is {MAX_TEXT_BYTES + 1:,} bytes")


# --------------------------------------------------------------------------- empty tables


@pytest.mark.parametrize(
    "rel, load, rows",
    [
        ("concepts/concepts_metadata.csv", lambda raw: load_concepts(raw), "concepts"),
        ("generation_templates.csv", lambda raw: load_templates(raw, "generation"), "generation templates"),
        ("evaluation_templates.csv", lambda raw: load_templates(raw, "evaluation"), "evaluation templates"),
        ("llm_models.csv", lambda raw: load_models(raw), "models"),
    ],
)
def test_a_table_with_a_header_and_no_row_is_one_sentence(root: Path, rel: str, load, rows: str):
    path = root / "1_raw" / rel
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    assert sentence_of(load, root / "1_raw") == f"{path} lists no {rows}; add at least one row."


# --------------------------------------------------------------------------- the command, for each


# Each broken input -> how it is broken, and the loader call whose sentence the command must end with.
BREAKS = {
    "model id": (lambda root: rewrite(root / "1_raw" / "llm_models.csv", "gen-model-1,test", '"deepseek-chat\n",test'),
                 lambda root: sentence_of(load_models, root / "1_raw")),
    "k = true": (lambda root: (root / "1_raw" / "experiment.toml").write_text("k = true\n"),
                 lambda root: sentence_of(ExperimentSettings.for_experiment, str(root), str(root))),
    "output_root": (lambda root: (root / "1_raw" / "experiment.toml").write_text('output_root = "x"\n'),
                    lambda root: sentence_of(ExperimentSettings.for_experiment, str(root), str(root))),
    "latin-1 template": (lambda root: (root / "1_raw" / GEN).write_bytes((root / "1_raw" / GEN).read_bytes() + b"caf\xe9"),
                         lambda root: sentence_of(load_templates, root / "1_raw", "generation")),
    "20 MB description": (lambda root: sparse(root / "1_raw" / "concepts" / "descriptions-paragraph" / "alpha.txt", 20_000_000),
                          lambda root: sentence_of(load_concepts, root / "1_raw")),
    "header-only concepts": (lambda root: (root / "1_raw" / "concepts" / "concepts_metadata.csv").write_text("concept_id,name,active\n"),
                             lambda root: sentence_of(load_concepts, root / "1_raw")),
}


@pytest.mark.parametrize("broken", list(BREAKS))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_daydream_ends_with_the_sentence_for_each_broken_input(root: Path, daydream, broken: str, command: str):
    breaks, sentence = BREAKS[broken]
    breaks(root)
    expected = sentence(root)
    code, _, err = daydream(command, root)
    assert code == 2
    assert last_line(err) == expected, err[-3000:]


@pytest.mark.security
def test_a_description_that_links_outside_the_experiment_folder_is_refused(tmp_path):
    """A shared folder holding `alpha.txt -> ../../../.env` would send the key file in every prompt."""
    root = write_experiment(tmp_path / "data")
    secret = tmp_path / ".env"
    secret.write_text("OPENROUTER_API_KEY=sk-test-SECRET\n")
    description = root / "1_raw" / "concepts" / "descriptions-paragraph" / "alpha.txt"
    description.unlink()
    description.symlink_to(secret)

    with pytest.raises(ExperimentError) as refused:
        load_concepts(root / "1_raw")

    assert str(refused.value).startswith(f"{description} is a link to {secret}, outside the experiment folder")


@pytest.mark.security
def test_a_link_inside_the_experiment_folder_is_read(tmp_path):
    root = write_experiment(tmp_path / "data")
    raw = root / "1_raw" / "concepts"
    target = raw / "descriptions-paragraph" / "alpha.txt"
    (raw / "descriptions-article" / "alpha.txt").unlink()
    (raw / "descriptions-article" / "alpha.txt").symlink_to(target)

    concepts = load_concepts(root / "1_raw")

    assert concepts.set_index("concept_id").loc["alpha", "description_article"] == target.read_text()
