"""The refusals the app answers with: one exception carrying the HTTP status and a one-line message.

Routes and helpers raise `AppError`; `app.main` turns it into `{"detail": ...}` under /api and into the
error page elsewhere. Engine refusals (ScenarioError, CodecError, PolicyError) are converted where they
are caught, so every client mistake has its status: 400 undecodable or malformed, 404 unknown, 413 too
large, 414 URL too long, 422 invalid scenario. `query_not_utf8` is the one check of a raw request that
lives here, for app.main's middleware: a query that is not UTF-8 is refused before any route reads it.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


class AppError(Exception):
    def __init__(self, status: int, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        # A sentence for the error page saying what to do about it.
        self.hint = hint


def bad_request(message: str) -> AppError:
    return AppError(400, message)


def not_found(message: str) -> AppError:
    return AppError(404, message)


def invalid_scenario(message: str) -> AppError:
    return AppError(
        422, message, hint="Fix the scenario in the editor: the message names the step and field."
    )


URL_TOO_LONG_HINT = (
    "Links hold the whole scenario, so a long scenario makes a long link. Shrink it: use fewer steps, fold"
    " runs of accesses into one step with count and stride (one write step with count 512 instead of 512"
    " write steps), drop notes and long descriptions, or download the scenario and share the file instead."
)


def query_not_utf8(query: bytes) -> str:
    """Why a raw query string is not UTF-8 once percent-decoded ("" when it is). Starlette would decode
    it with U+FFFD for each bad byte, and a parameter would then be refused as a stranger value than the
    one sent, or taken: `?x=%ff` must be refused as what it is."""
    if b"%" not in query and query.isascii():
        return ""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        for text in (name, value):
            try:
                unquote_to_bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                shown = name.decode("ascii", "backslashreplace")[:40]
                return (
                    f"the query parameter {shown!r} is not valid UTF-8: its bytes and %-escapes must"
                    " spell UTF-8 text (%C3%A9 for é, not %E9)"
                )
    return ""
