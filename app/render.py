"""Templates: one Jinja2 environment (autoescape everywhere), whole pages and named blocks.

A plain GET renders the whole page; an htmx request renders only the blocks it needs, each marked for
an out-of-band swap (Hypermedia Systems' pattern, as jinja2-fragments does it). Static files are named
with a digest of their content, so a browser never runs an old keys.js against a new page. Behind a
reverse proxy every URL a page holds starts with the root path (`base_path`), the templates' `base`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from markdown_it import MarkdownIt
from markupsafe import Markup

from app.budget_bytes import MARKDOWN_ENTRIES
from app.views.presets import preset_legend
from app.views.text import hx, plural

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
HTMX = "vendor/htmx-2.0.11.min.js"
# Swagger UI for /docs: swagger-ui-dist 5.36.0 from npm, its two files unchanged (licences beside them).
SWAGGER_JS = "vendor/swagger-ui-bundle-5.36.0.js"
SWAGGER_CSS = "vendor/swagger-ui-5.36.0.css"


def static_version(path: str) -> str | None:
    """The version a static file's URL carries (`?v=`): the first 10 hex digits of its content's SHA-256,
    None for a file that is not there. Read again only when the file's size or time changes, so that the
    static files' handler can tell a current URL (cached for a year) from an old one on every request."""
    try:
        stat = (STATIC / path).stat()
    except (OSError, ValueError):
        return None
    return _digest(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        return hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:10]
    except OSError:
        return None


@lru_cache(maxsize=64)
def static_url(path: str) -> str:
    """A static file's path inside the app (without the root path, see `base_path`)."""
    version = static_version(path)
    return f"/static/{path}" if version is None else f"/static/{path}?v={version}"


@pass_context
def _static(context: Context, path: str) -> str:
    return str(context.get("base", "")) + static_url(path)


def base_path(scope: Mapping[str, Any]) -> str:
    """The path prefix the app is served under behind a reverse proxy, '' at the root: the ASGI
    root_path that the server puts in every request (`sptelab serve --root-path`, app/serving.py).
    Every URL the app writes, in a page, a header or a redirect, starts with it."""
    # A mounted app (the static files) sees its mount point added to root_path; app_root_path keeps the
    # app's own, as Starlette's base_url does.
    root = scope.get("app_root_path", scope.get("root_path")) or ""
    return str(root).rstrip("/")


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path inside the app: the server puts the root path in front of `path`."""
    path = str(scope.get("path", ""))
    base = base_path(scope)
    if base and (path == base or path.startswith(base + "/")):
        return path[len(base) :] or "/"
    return path


def page_globals(scope: Mapping[str, Any]) -> dict[str, Any]:
    """What every page template is given besides its own context: `base`, the root path to write in
    front of every URL, and `workshop`, whether the editor is off (`Settings.workshop`)."""
    app = scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    return {"base": base_path(scope), "workshop": bool(getattr(settings, "workshop", False))}


def _markdown() -> MarkdownIt:
    # No images either: an image would be fetched by every attendee who opens a shared link (the
    # CSP refuses it, but a page must not even ask); `![alt](url)` is shown as "!" and a plain link.
    md = MarkdownIt("commonmark", {"html": False}).disable("image")

    def safe_link(url: str) -> bool:
        # Only web links: no javascript:, data:, file: or relative surprises.
        return urlsplit(url.strip()).scheme in ("http", "https")

    md.validateLink = safe_link  # type: ignore[method-assign]
    return md


_MD = _markdown()


# The characters of a description rendered as Markdown. markdown-it takes about 15 µs a character on
# hostile text ("[[[[…", "a\n" × 500 000), so a 1 MiB description would hold every page build for 15 s;
# a description is narration beside the player, and 32 KiB of it is far more than anyone reads there.
MARKDOWN_CHARS = 32_768


@lru_cache(maxsize=MARKDOWN_ENTRIES)
def markdown(text: str) -> Markup:
    """The scenario description: CommonMark with raw HTML off and links limited to http(s); its first
    MARKDOWN_CHARS characters, and a line saying how much more the scenario file holds."""
    text = text or ""
    html = _MD.render(text[:MARKDOWN_CHARS])
    # Links leave the app: open them without handing over this page.
    html = html.replace("<a href=", '<a rel="noopener noreferrer nofollow" href=')
    rest = len(text) - MARKDOWN_CHARS
    if rest > 0:
        html += f"<p>… and {rest:,} more characters: download the scenario to read all of it.</p>\n"
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
    env.globals["static"] = _static
    env.globals["htmx_js"] = HTMX
    env.globals["preset_legend"] = preset_legend()
    return env


ENV = _environment()


def render_page(name: str, context: Mapping[str, Any]) -> str:
    return ENV.get_template(name).render(**context)


def render_blocks(name: str, blocks: Iterable[str], context: Mapping[str, Any]) -> str:
    """Only the named blocks of a template, concatenated: the body of a partial (htmx) response."""
    template = ENV.get_template(name)
    ctx = template.new_context(dict(context))
    return "".join("".join(template.blocks[block](ctx)) for block in blocks)
