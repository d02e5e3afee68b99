"""The report as one HTML file: the template, CSS and JavaScript of `static/` inlined around the data.

Nothing is fetched, so the file opens the same from disk, from an object-store URL or as an email
attachment. The data sits in non-executable `<script type="application/json">` blocks (with `<`,
`>` and `&` escaped, so a `</script>` inside an answer cannot end the block), the texts in
base64 gzip blocks beside it, and a Content-Security-Policy lets only the report's own script run."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from string import Template

from .payload import Payload

_STATIC = resources.files(__package__) / "static"
# The page's script, in this order, inside one function scope (so they share their names and leak
# none to `window`): each file is one part of the page, small enough to read at once.
SCRIPT_PARTS = ("common.js", "summaries.js", "matrix.js", "detail.js", "main.js")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@dataclass(frozen=True)
class Page:
    """The HTML of a report and the sizes of its parts (for the asset's metadata and the benchmark)."""

    html: str
    data_bytes: int  # the matrix and summaries JSON
    text_bytes: int  # the texts' JSON before compression
    chunk_bytes: int  # the texts as stored in the page (gzip, base64)
    chunks: int


def script_json(value) -> str:
    """JSON that is safe inside a `<script>` element: no `<`, `>` or `&` that HTML could read."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def page_script() -> str:
    """The page's one script: the parts of `static/` in one strict-mode function scope."""
    parts = "\n".join(_static(name) for name in SCRIPT_PARTS)
    if "</script" in parts.lower():
        raise ValueError("the report's JavaScript must not contain '</script'; it is inlined into the page.")
    return f'\n(() => {{\n"use strict";\n{parts}\n}})();\n'


def render_page(payload: Payload) -> Page:
    """The complete, self-contained HTML page of a payload."""
    script = page_script()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    encoded = [base64.b64encode(chunk).decode("ascii") for chunk in payload.chunks]
    blocks = "\n".join(
        f'<script type="application/octet-stream" id="chunk-{i}" data-encoding="gzip+base64">{text}</script>'
        for i, text in enumerate(encoded)
    )
    data = script_json(payload.data)
    html = Template(_static("report.html")).substitute(
        css=_static("report.css"), script=script, script_hash=f"sha256-{digest}", data=data, chunks=blocks
    )
    return Page(
        html=html,
        data_bytes=len(data.encode("utf-8")),
        text_bytes=payload.text_bytes,
        chunk_bytes=sum(len(t) for t in encoded),
        chunks=len(encoded),
    )
