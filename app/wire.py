"""What goes on the wire: compressed answers, and static files a browser keeps for a year.

Pages, htmx swaps, JSON and SVG are compressed by Starlette's `GZipMiddleware` as they leave the app
(`compression`), after the page cache: the cache keeps the uncompressed bytes, and every client gets the
encoding it asked for. A response that streams (`POST /api/run`) is compressed chunk by chunk with a sync
flush, so it still arrives as it is written.

Static files are compressed here instead (`StaticAssets`), once per file and version: Swagger UI's bundle
is 1.8 MB, too much to compress again for every visitor, and a server that sends files itself (granian's
`http.response.pathsend`) would bypass the middleware. A URL that carries the version the pages write
(`?v=`, app/render.py `static_url`) names content that never changes: it is cached for a year, immutable.
Any other URL of a static file (no version, an old one) must be asked again each time (`no-cache`,
answered 304 from the ETag when nothing changed).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from app.render import static_version

# Below this a response goes as it is: the gzip header and the Vary line would cost more than they save.
MINIMUM_SIZE = 500
# zlib's default: level 9 takes about twice as long on a page for a few percent less.
PAGE_LEVEL = 6
# Static files are compressed once per version, so as small as zlib makes them.
STATIC_LEVEL = 9
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Media types worth compressing (text); images other than SVG are compressed already.
_COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg+xml")


def compression(app: ASGIApp) -> GZipMiddleware:
    """The app wrapped in the gzip middleware: only for a client that sends `Accept-Encoding: gzip`,
    only above MINIMUM_SIZE bytes, always with `Vary: Accept-Encoding` on what it compressed."""
    return GZipMiddleware(app, minimum_size=MINIMUM_SIZE, compresslevel=PAGE_LEVEL)


def accepts_gzip(headers: Headers) -> bool:
    """Whether the client takes gzip, decided exactly as GZipMiddleware decides it for the pages."""
    return "gzip" in headers.get("accept-encoding", "")


@lru_cache(maxsize=32)
def _compressed(path: str, mtime_ns: int, size: int) -> bytes:
    """A static file's gzip bytes, kept per (file, version): a handful of files, 0.6 MB in all."""
    return gzip.compress(Path(path).read_bytes(), compresslevel=STATIC_LEVEL, mtime=0)


class StaticAssets(StaticFiles):
    """Starlette's static files with the cache policy of their URL's version and a compressed copy for a
    client that takes gzip (a weak ETag then, as the bytes differ; If-None-Match still matches it)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code not in (200, 304):
            return response
        full_path = getattr(response, "path", None)
        relative = path.replace(os.sep, "/")
        response.headers["cache-control"] = IMMUTABLE if _current(relative, scope) else REVALIDATE
        response.headers["vary"] = "Accept-Encoding"
        if not isinstance(response, FileResponse) or full_path is None:
            return response
        headers = Headers(scope=scope)
        media = response.media_type or ""
        stat = response.stat_result
        if (
            "range" in headers
            or not accepts_gzip(headers)
            or not media.startswith(_COMPRESSIBLE)
            or stat is None
            or stat.st_size < MINIMUM_SIZE
        ):
            return response
        body = await anyio.to_thread.run_sync(_compressed, str(full_path), stat.st_mtime_ns, stat.st_size)
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "accept-ranges")
        }
        etag = kept.get("etag")
        if etag and not etag.startswith("W/"):
            kept["etag"] = "W/" + etag
        compressed = Response(body, status_code=200, headers={**kept, "content-encoding": "gzip"})
        return compressed


def _current(relative: str, scope: Any) -> bool:
    """Whether the request's `?v=` is the version the pages write for this file today."""
    query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
    versions = query.get("v", [])
    return len(versions) == 1 and versions[0] == static_version(relative)
