"""The hostile inputs tests/test_hostile_input.py tries on an experiment folder, and its helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from daydreaming_dagster.experiment.errors import ExperimentError
from daydreaming_dagster.experiment.loaders import load_templates
from daydreaming_dagster.experiment.templates import MAX_PROMPT_CHARS

SECRET = "sk-test-SECRET"  # the fake API key in the environment of the commands the tests run
GEN = "generation_templates/gen-a.txt"
JUDGE = "evaluation_templates/judge-a.txt"


def attacks(pwned: Path) -> dict[str, tuple[str, str, str]]:
    """Attack name -> (template file, its text, what the sentence says after the file name)."""
    popen = f"cycler.__init__.__globals__.os.popen('touch {pwned}').read()"
    return {
        "popen": (GEN, f"{{{{ {popen} }}}}", "uses the undefined variable(s) cycler"),
        "environ": (JUDGE, "{{ cycler.__init__.__globals__.os.environ['OPENROUTER_API_KEY'] }}{{ response }}",
                    "uses the undefined variable(s) cycler"),
        "lipsum": (GEN, f"{{{{ lipsum.__globals__.os.popen('touch {pwned}').read() }}}}", "undefined variable(s) lipsum"),
        "range": (GEN, "{% for i in range(3) %}{{ concepts }}{% endfor %}", "undefined variable(s) range"),
        "namespace": (GEN, "{% set ns = namespace(x=1) %}{{ concepts }}", "undefined variable(s) namespace"),
        "self": (GEN, f"{{{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch {pwned}') }}}}",
                 "templates may not use names starting with '_'"),
        "subclasses": (JUDGE, "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ response }}",
                       "reads the attribute '__subclasses__'"),
        "loop": (GEN, "{% for c in concepts %}{{ loop.__class__ }}{% endfor %}", "reads the attribute '__class__'"),
        "item": (GEN, "{{ concepts['__class__'] }}", "reads the item '__class__'"),
        "attr filter": (JUDGE, "{{ response|attr('__class__') }}", "the attr filter the name '__class__'"),
        "attr filter variable": (JUDGE, "{% set a = 'upper' %}{{ response|attr(a) }}",
                                 "the attr filter a value that is not a constant string"),
        "attribute=": (GEN, "{{ concepts|map(attribute='__class__')|list }}", "the name '__class__'"),
        "dotted attribute=": (GEN, "{{ concepts|sort(attribute='name.__class__') }}", "the name 'name.__class__'"),
        "include": (GEN, "{% include '/etc/passwd' %}", "uses {% include %}"),
        "import": (GEN, "{% import 'macros.txt' as m %}{{ concepts }}", "uses {% import %}"),
        "from import": (GEN, "{% from 'macros.txt' import m %}{{ concepts }}", "uses {% from ... import %}"),
        "extends": (JUDGE, "{% extends '/etc/passwd' %}", "uses {% extends %}"),
        # Built at render time, so only the sandbox sees it: the probe render refuses it.
        "computed item": (JUDGE, "{% set n = '_' ~ '_class__' %}{{ response[n] }}", "was refused by the template sandbox"),
        "repeated string": (GEN, "{{ 'a' * 100000000 }}{{ concepts }}", "a repeated string or list would have 100,000,000"),
        "repeated list": (GEN, "{{ ([1] * 100000000)|length }}{{ concepts }}", "a repeated string or list"),
        "power": (GEN, "{{ 10 ** 100000 }}{{ concepts }}", "a power would have more than"),
        "center": (JUDGE, "{{ response|center(1000000000) }}", "the number 1000000000 given to a filter or method"),
        "ljust": (JUDGE, "{{ response.ljust(1000000000) }}", "the number 1000000000 given to a filter or method"),
        "long prompt": (GEN, "{% for c in concepts %}{{ 'a' * 999999 }}{% endfor %}",
                        f"renders a prompt of more than {MAX_PROMPT_CHARS:,} characters"),
    }


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def sentence_of(load, *args) -> str:
    with pytest.raises(ExperimentError) as info:
        load(*args)
    return str(info.value)


def no_secret_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path


def write_template(root: Path, rel: str, text: str) -> Path:
    path = root / "1_raw" / rel
    path.write_text(text, encoding="utf-8")
    return path


def load_kind(rel: str):
    kind = "generation" if rel == GEN else "evaluation"
    return lambda root: load_templates(root / "1_raw", kind)


def rewrite(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    return path


def sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk space."""
    with path.open("wb") as handle:
        handle.truncate(size)
