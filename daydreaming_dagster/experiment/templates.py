"""The experiment's Jinja templates: checked when the experiment is read, rendered in a sandbox.

Experiment folders are shared, and a template is code the researcher running it did not write. So
a template sees only its kind's one variable (`concepts` or `response`), in Jinja's immutable
sandbox with no globals and no loader; `check_template` refuses, before anything is written or
called, what the sandbox would refuse only once it is reached (names starting with '_', include,
import, extends), and renders the template once on a probe value. What a template can build is
bounded: a repeated string or list, a number, a number given to a filter or method, the prompt.

Pure functions: no Dagster import. Every problem is an ExperimentError naming the template file."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import ExperimentError

TemplateKind = Literal["generation", "evaluation"]
# The one variable each kind of template may use; anything else is a typo caught before any LLM call.
TEMPLATE_VARIABLES: dict[str, set[str]] = {"generation": {"concepts"}, "evaluation": {"response"}}
# The longest prompt a template may render, in characters (a real prompt is a few thousand).
MAX_PROMPT_CHARS = 1_000_000
# The longest string or list a template may build with `*`, and the largest number it may pass
# to a filter or method (a width, a count): no part of a prompt is longer than a prompt may be.
MAX_REPEAT = MAX_PROMPT_CHARS
# The largest integer a template may compute, in bits (~4,900 digits; Python prints at most 4,300).
MAX_INT_BITS = 16_384
# The filters that read an attribute named by an argument: the position of that argument (None:
# only as `attribute=`). `attribute=` is checked on every filter.
_ATTRIBUTE_ARGUMENT = {
    "attr": 0, "selectattr": 0, "rejectattr": 0, "groupby": 0, "sum": 0, "sort": 2, "unique": 1, "min": 1, "max": 1,
}
_LOADING_TAGS = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import", nodes.Extends: "extends"}


@dataclass(frozen=True)
class Concept:
    """What a generation template sees for each concept of a combination."""

    name: str
    content: str


# Probe values a template is rendered with once when it is checked.
_PROBE = {
    "generation": {"concepts": [Concept(f"Probe {n}", f"The probe concept {n}.") for n in (1, 2, 3)]},
    "evaluation": {"response": "A probe answer.\nSCORE: 5"},
}


class TemplateLimit(SecurityError):
    """A template tried to build more than the limits allow."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with `*` and `**` bounded, and the numbers given to filters and
    methods bounded (`'x'|center(n)` builds what `'x' * n` would)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left, right):
        if operator == "*":
            _check_product(left, right)
        else:
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # the names SandboxedEnvironment.call has
        _check_arguments(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _sized(value) -> bool:
    return isinstance(value, (str, list, tuple))


def _check_product(left, right) -> None:
    for items, times in ((left, right), (right, left)):
        if _sized(items) and isinstance(times, int) and len(items) * times > MAX_REPEAT:
            raise TemplateLimit(f"a repeated string or list would have {len(items) * times:,} items, more than {MAX_REPEAT:,}")
    if _is_int(left) and _is_int(right) and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"a product would have more than {MAX_INT_BITS:,} bits")


def _check_power(base, exponent) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        if exponent > MAX_INT_BITS or abs(base).bit_length() * exponent > MAX_INT_BITS:
            raise TemplateLimit(f"a power would have more than {MAX_INT_BITS:,} bits")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_arguments(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if _is_int(value) and abs(value) > MAX_REPEAT:
            raise TemplateLimit(f"the number {value} given to a filter or method is larger than {MAX_REPEAT:,}")


def _bounded_filter(fn: Callable) -> Callable:
    # The value filtered comes first, after the context or environment a pass_* filter is given.
    skip = 2 if hasattr(fn, "jinja_pass_arg") else 1

    @functools.wraps(fn)  # keeps the jinja_pass_arg marker, which Jinja reads off the function
    def bounded(*args, **kwargs):
        _check_arguments(args[skip:], kwargs)
        return fn(*args, **kwargs)

    return bounded


def _environment() -> _BoundedSandbox:
    environment = _BoundedSandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    # No range, cycler, lipsum, dict, joiner or namespace: a template sees its kind's variable only.
    environment.globals.clear()
    environment.filters = {name: _bounded_filter(fn) for name, fn in environment.filters.items()}
    return environment


ENVIRONMENT = _environment()


def check_template(text: str, kind: TemplateKind, where: str) -> None:
    """Fail, naming the template file `where`, if the template does not parse, uses a variable its
    kind does not provide, loads another file, reaches for a name starting with '_', or is refused
    by the sandbox (or a limit) when rendered with a probe value."""
    try:
        ast = ENVIRONMENT.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ExperimentError(f"{where} is not a valid Jinja template: {exc.message} (line {exc.lineno}).") from exc
    unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - TEMPLATE_VARIABLES[kind])
    if unknown:
        allowed = ", ".join(sorted(TEMPLATE_VARIABLES[kind]))
        raise ExperimentError(
            f"{where} uses the undefined variable(s) {', '.join(unknown)}; {kind} templates see only {allowed}."
        )
    for problem in _refused_nodes(ast):
        raise ExperimentError(f"{where} {problem}.")
    try:
        _render_text(_compiled(text), _PROBE[kind], where)
    except ExperimentError as exc:
        # The sandbox's refusals and the limits hold for any value. Any other failure may depend on
        # the values (concepts[2] with k = 2): rendering the real ones says so, naming the file.
        if exc.__cause__ is None or isinstance(exc.__cause__, SecurityError):
            raise


def _refused_nodes(ast: nodes.Template) -> Iterator[str]:
    """What the template does that no template may do, each as the end of a sentence."""
    for node in ast.find_all(nodes.Node):
        line = f" (line {node.lineno})"
        if type(node) in _LOADING_TAGS:
            yield f"uses {{% {_LOADING_TAGS[type(node)]} %}}{line}; templates may not include, import or extend other files"
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            yield f"reads the attribute {node.attr!r}{line}; templates may not use names starting with '_'"
        elif isinstance(node, nodes.Getitem) and _private_constant(node.arg):
            yield f"reads the item {node.arg.value!r}{line}; templates may not use names starting with '_'"
        elif isinstance(node, nodes.Filter):
            yield from _refused_attribute_arguments(node, line)


def _refused_attribute_arguments(node: nodes.Filter, line: str) -> Iterator[str]:
    position = _ATTRIBUTE_ARGUMENT.get(node.name)
    named = [(f"attribute= of the {node.name} filter", kw.value) for kw in node.kwargs if kw.key == "attribute"]
    if position is not None and position < len(node.args):
        named.append((f"the attribute argument of the {node.name} filter", node.args[position]))
    for what, value in named:
        if not (isinstance(value, nodes.Const) and isinstance(value.value, str)):
            yield f"gives {what} a value that is not a constant string{line}; name the attribute in quotes"
        elif any(part.startswith("_") for part in value.value.split(".")):
            yield f"gives {what} the name {value.value!r}{line}; templates may not use names starting with '_'"


def _private_constant(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and isinstance(node.value, str) and node.value.startswith("_")


def render_generation_prompt(template_text: str, concepts: list[Concept], where: str) -> str:
    """The generation template (the file `where`) rendered with the concepts of one combination."""
    return _render(template_text, where, concepts=concepts)


def render_evaluation_prompt(template_text: str, response: str, where: str) -> str:
    """The evaluation template (the file `where`) rendered with the answer it judges."""
    return _render(template_text, where, response=response)


@functools.lru_cache(maxsize=256)
def _compiled(template_text: str) -> jinja2.Template:
    # Compiling costs far more than rendering, and a batch (or the out-of-date check of a whole
    # experiment) renders one template for many tasks.
    return ENVIRONMENT.from_string(template_text)


def _render(template_text: str, where: str, **variables) -> str:
    try:
        template = _compiled(template_text)
    except jinja2.TemplateSyntaxError as exc:
        raise ExperimentError(f"{where} is not a valid Jinja template: {exc.message} (line {exc.lineno}).") from exc
    return _render_text(template, variables, where)


def _render_text(template: jinja2.Template, variables: dict, where: str) -> str:
    """The template rendered piece by piece, stopped as soon as it passes MAX_PROMPT_CHARS."""
    pieces, length = [], 0
    try:
        for piece in template.generate(**variables):
            length += len(piece)
            if length > MAX_PROMPT_CHARS:
                raise ExperimentError(
                    f"{where} renders a prompt of more than {MAX_PROMPT_CHARS:,} characters, the limit for a prompt."
                )
            pieces.append(piece)
    except ExperimentError:
        raise
    except SecurityError as exc:
        raise ExperimentError(f"{where} was refused by the template sandbox: {_first_line(exc)}.") from exc
    except jinja2.TemplateError as exc:
        raise ExperimentError(f"{where} failed to render: {_first_line(exc)}.") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError) as exc:
        raise ExperimentError(f"{where} failed to render: {type(exc).__name__}: {_first_line(exc)}.") from exc
    return "".join(pieces)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0].rstrip(".")
