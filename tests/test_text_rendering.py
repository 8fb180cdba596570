"""Data is shown as text: run names, errors, URL parameters and every message quoting a value, on every page.

Two checks. Statically, every value that reaches an element rendering Markdown (messages, headings, captions,
widget labels) goes through `app.text.plain`. On the pages, a run whose name, error and notes are Markdown and links,
and a crafted `?run=` parameter, are rendered: no element holds a link, an autolink or formatting made of them.
"""

import ast
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from app.text import plain, shown
from db.models import Run, StageRun
from db.session import write_session

APP = Path(__file__).resolve().parents[1] / "app"
# Streamlit elements whose first argument (body or label) is rendered as Markdown
MARKDOWN_ELEMENTS = {
    "markdown", "title", "header", "subheader", "caption", "error", "warning", "info", "success", "toast",
    "expander", "write", "button", "metric", "checkbox", "toggle", "download_button", "link_button", "popover",
    "text_input", "selectbox", "number_input", "text_area", "multiselect", "file_uploader", "form_submit_button",
    "slider", "radio",
}  # fmt: skip
SAFE_CALLS = {"plain", "len", "sum"}  # plain() itself, and counts


def unescaped_values(node) -> list[str]:
    """The expressions in a Markdown element's argument that are neither literal text, a module constant (ours),
    a count, nor passed through `plain`."""
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.Call) and ast.unparse(node.func) in SAFE_CALLS:
        return []
    if isinstance(node, ast.Name) and node.id.isupper():
        return []
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id.isupper():
        return []
    if isinstance(node, ast.JoinedStr):
        return [bad for v in node.values if isinstance(v, ast.FormattedValue) for bad in unescaped_values(v.value)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return unescaped_values(node.left) + unescaped_values(node.right)
    if isinstance(node, ast.IfExp):
        return unescaped_values(node.body) + unescaped_values(node.orelse)
    if isinstance(node, ast.List | ast.Tuple):
        return [bad for element in node.elts for bad in unescaped_values(element)]
    return [ast.unparse(node)]


def test_every_value_in_a_markdown_element_goes_through_plain():
    found = []
    for path in sorted(APP.rglob("*.py")):
        if path.name == "forms.py":  # labels from the config schema's own titles, not data
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                if node.func.attr in MARKDOWN_ELEMENTS:
                    found += [f"{path.name}:{node.lineno}: {bad}" for bad in unescaped_values(node.args[0])]
    assert found == []


HOSTILE = "[click here](http://evil.example/phish) **bold** <b>html</b> www.evil.example :red[red] $x^2$ # head"
PARSER = MarkdownIt("commonmark").enable("strikethrough").enable("table")


def formatting_tokens(markdown: str) -> list[str]:
    """Tokens that are more than text: links, emphasis, HTML, headings, code."""
    kinds = []
    for block in PARSER.parse(markdown):
        if block.type.startswith("heading") or block.type.startswith("html"):
            kinds.append(block.type)
        for child in block.children or []:
            if child.type not in ("text", "softbreak", "hardbreak"):
                kinds.append(child.type)
    return kinds


def test_plain_shows_exactly_the_text_and_nothing_else():
    escaped = plain(HOSTILE)
    assert shown(escaped) == HOSTILE
    assert formatting_tokens(escaped) == []
    assert "http://" not in escaped and "www.evil" not in escaped  # no GFM autolink literal can start
    assert formatting_tokens(HOSTILE)  # the probe itself is formatting when not escaped


def markdown_bodies(at) -> list[str]:
    bodies = []
    for kind in ("markdown", "error", "warning", "info", "success", "caption", "title", "header", "subheader"):
        bodies += [element.value for element in getattr(at, kind)]
    bodies += [element.label for element in at.button]
    bodies += [element.label for element in at.get("expandable")]
    return bodies


@pytest.fixture
def hostile_run(filled):
    with write_session(filled["engine"]) as s:
        run = s.get(Run, filled["run_id"])
        run.name = HOSTILE
        run.error = f"input value {HOSTILE} was refused"
        run.notes = HOSTILE
        stage = s.scalars(select(StageRun).where(StageRun.run_id == run.id)).first()
        stage.error = f"row 3, field instruction: {HOSTILE}"
    return filled


@pytest.mark.parametrize(
    "view, query",
    [
        ("runs", {"run": "RUN"}),
        ("runs", {"run": HOSTILE}),
        ("compare", {"run": "RUN"}),
        ("compare", {"run": HOSTILE}),
        ("data", {"run": "RUN"}),
        ("samples", {"run": "RUN"}),
        ("launch", {}),
        ("workers", {}),
    ],
)
def test_hostile_names_errors_and_url_parameters_render_as_text(hostile_run, view, query):
    at = AppTest.from_file("../app/main.py", default_timeout=60)
    at.run()
    for key, value in query.items():
        at.query_params[key] = str(hostile_run["run_id"]) if value == "RUN" else value
    at.switch_page(f"views/{view}.py").run()
    assert not at.exception
    bodies = markdown_bodies(at)
    assert bodies, "the page rendered nothing to check"
    for body in bodies:
        assert HOSTILE not in body, f"unescaped on {view}: {body[:200]}"
        assert "link" not in " ".join(formatting_tokens(body)) or "evil" not in body, body[:200]
    if view == "runs" and query["run"] == "RUN":  # the name and the error are there, as text
        assert any(HOSTILE in shown(body) for body in bodies)
