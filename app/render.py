"""Templates: one Jinja2 environment (autoescape everywhere), whole pages and named blocks.

A plain GET renders the whole page; an htmx request renders only the blocks it needs, each marked for
an out-of-band swap (Hypermedia Systems' pattern, as jinja2-fragments does it). Static files are named
with a digest of their content, so a browser never runs an old keys.js against a new page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from app.viewmodel import hx, plural

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
HTMX = "vendor/htmx-2.0.11.min.js"


@lru_cache(maxsize=64)
def static_url(path: str) -> str:
    try:
        digest = hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:10]
    except OSError:
        return f"/static/{path}"
    return f"/static/{path}?v={digest}"


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False})

    def safe_link(url: str) -> bool:
        # Only web links: no javascript:, data:, file: or relative surprises.
        return urlsplit(url.strip()).scheme in ("http", "https")

    md.validateLink = safe_link  # type: ignore[method-assign]
    return md


_MD = _markdown()


@lru_cache(maxsize=64)
def markdown(text: str) -> Markup:
    """The scenario description: CommonMark with raw HTML off and links limited to http(s)."""
    html = _MD.render(text or "")
    # Links leave the app: open them without handing over this page.
    html = html.replace("<a href=", '<a rel="noopener noreferrer nofollow" href=')
    return Markup(html)


def first_sentence(text: str) -> str:
    """The description's first sentence, as plain text, for the scenario list."""
    plain = " ".join(text.replace("*", "").replace("`", "").split())
    for end in (". ", "! ", "? "):
        cut = plain.find(end)
        if cut != -1:
            plain = plain[: cut + 1]
            break
    return plain[:240]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates are package data: never look at their files again once loaded.
        auto_reload=False,
    )
    env.filters["hx"] = lambda value: hx(value) if isinstance(value, int) else value
    env.filters["plural"] = plural
    env.filters["markdown"] = markdown
    env.globals["static"] = static_url
    env.globals["htmx_js"] = HTMX
    return env


ENV = _environment()


def render_page(name: str, context: Mapping[str, Any]) -> str:
    return ENV.get_template(name).render(**context)


def render_blocks(name: str, blocks: Iterable[str], context: Mapping[str, Any]) -> str:
    """Only the named blocks of a template, concatenated: the body of a partial (htmx) response."""
    template = ENV.get_template(name)
    ctx = template.new_context(dict(context))
    return "".join("".join(template.blocks[block](ctx)) for block in blocks)
