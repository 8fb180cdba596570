"""Data shown as text in elements that render Markdown.

Streamlit renders Markdown (links, bare URLs, emphasis, headings, colours, icons, LaTeX) in every message, heading,
caption and widget label. A run name, an error quoting an input value or a URL parameter placed there as it is would
be formatted, and could become a link to any host on a logged-in user's screen. Every value from data goes through
`plain`, which the page-rendering test checks (tests/test_text_rendering.py).
"""

from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation character, and an escaped one is always literal text
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def plain(value: object) -> str:
    """`value` as literal text inside Markdown: every ASCII punctuation character escaped, so nothing in it starts
    a link, an autolink (`http://`, `www.`), emphasis, a heading, a directive (`:red[...]`) or math."""
    return _ASCII_PUNCTUATION.sub(r"\\\1", str(value))


def shown(markdown: str) -> str:
    """What a reader sees of a Markdown string that escapes with backslashes (the inverse of `plain`), for tests and
    plain-text exports."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
