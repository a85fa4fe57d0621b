"""Fuzzing the app: the JSON API from its own OpenAPI schema (schemathesis), and the HTML routes with
Hypothesis-generated query strings and form bodies sent straight into the ASGI app.

Whatever arrives, the answer is never a 5xx; a refusal is JSON `{"detail": "..."}` under /api and the error
page (or the editor's status) with its message elsewhere. Every run is seeded and bounded (derandomized
Hypothesis, a fixed number of examples), so CI sees the same cases each time; the app runs with a small
request budget so that a generated scenario that happens to be valid stays cheap to run.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import schemathesis
from conftest import AsgiClient, http_scope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from app.main import create_app
from app.settings import Settings
from engine.codec import encode_scenario
from scenarios import builtin_names, load_builtin_text

APP = create_app(Settings(run_budget=20_000, result_work=5_000, cache_runs=4, cache_pages=16))
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP).include(path_regex="^/api/")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

T = TypeVar("T")


@schemathesis.check
def errors_are_json_with_detail(ctx: Any, response: Any, case: Any) -> bool:
    """A refusal of the API is `{"detail": "<one line>"}`."""
    if response.status_code >= 400:
        body = json.loads(response.content)
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail.strip():
            raise AssertionError(
                f"a {response.status_code} without a string detail: {response.content[:200]!r}"
            )
    return True


@SCHEMA.parametrize()
@FUZZ
def test_the_api_from_its_openapi_schema(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            errors_are_json_with_detail,
        ],
    )


# ---------------------------------------------------------------------------------------------------------
# The HTML routes, through ASGI: raw query strings and bodies, exactly as generated


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread of its own: the browser tests'
    Playwright keeps an event loop running in the main thread for the whole session."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _call(
    method: str, path: str, query: bytes, body: bytes, content_type: bytes
) -> tuple[int, str, bytes]:
    client = AsgiClient([body])
    headers = [(b"host", b"test"), (b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type))
    await APP(http_scope(APP, method, path, headers, query), client.receive, client.send)
    media_type = next((v.decode("latin-1") for k, v in client.headers if k.lower() == b"content-type"), "")
    return client.status, media_type, client.body


def request(method: str, path: str, query: bytes = b"", body: bytes = b"", content_type: bytes = b"") -> None:
    """Send one request and check the answer: no 5xx, and a refusal that says what was wrong."""
    status, media_type, content = run_async(_call(method, path, query, body, content_type))
    assert status < 500, (method, path, query[:200], body[:200], content[:500])
    assert status in (200, 303, 400, 403, 404, 405, 413, 414, 422), status
    if status >= 400:
        if media_type.startswith("application/json"):
            assert json.loads(content)["detail"].strip()
        else:
            text = content.decode("utf-8")
            assert re.search(r"data-error-message>[^<\n]+</p>", text) or "data-error " in text, text[:500]


CODE = encode_scenario(json.loads(load_builtin_text("worked-example")))
NAMES = ["scenario", "s", "variant", "variants", "step", "policy", "spte", "mode", "answer", "score",
         "present", "focus", "sw.wp_large", "sw.flush_rule", "sw.nope", "x"]  # fmt: skip
GOOD = ["zap", "lazy", "lazy-buggy", "zap,lazy", "0", "3", "12", "-1", "99999", "wp_large=zap",
        "flush_after_unlock=false", "2:0:1", "1:200:50", "predict", "fast", "1-2", "1", "tree",
        "true"]  # fmt: skip
HOSTILE = ["", "%ff", "%00", "%C2%B2", "%ed%a0%80", "1e30", "NaN", "1" * 40, "1.", "2.abc", "1.!!!",
           "%1b[2J", "../etc", "a=b=c", ",,,", "+", "%2B", "%26", "%3D"]  # fmt: skip
values = (
    st.sampled_from(GOOD)
    | st.sampled_from(HOSTILE)
    | st.text(max_size=12).map(quote)
    # Digits of other scripts, superscripts, fractions: what str.isdigit() takes and int() may not.
    | st.characters(categories=["Nd", "No"], exclude_characters="0123456789").map(quote)
)
params = st.tuples(st.sampled_from(NAMES) | st.text(max_size=6).map(quote), values)
# Mostly a scenario that loads, so that the other parameters are reached.
sources = st.sampled_from([f"scenario={name}" for name in builtin_names()] + [f"s={CODE}"]) | params.map(
    lambda pair: f"{pair[0]}={pair[1]}"
)


def _query(source: str, extra: list[tuple[str, str]]) -> bytes:
    return "&".join([source, *(f"{name}={value}" for name, value in extra)]).encode("utf-8")


queries = st.builds(_query, sources, st.lists(params, max_size=5))
PAGES = ["/", "/play", "/compare", "/download", "/export.svg", "/result.json", "/healthz"]


@pytest.mark.parametrize("path", PAGES)
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(query=queries)
def test_html_routes_with_generated_query_strings(path: str, query: bytes) -> None:
    request("GET", path, query)


PARAMETERS = ["step", "spte", "variant", "policy", "mode", "answer", "score", "present", "focus",
              "sw.wp_large", "variants", "s"]  # fmt: skip


@pytest.mark.parametrize("name", PARAMETERS)
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(value=values)
def test_each_parameter_with_generated_values(name: str, value: str) -> None:
    for path in ("/play", "/compare") if name in ("step", "variants") else ("/play",):
        prefix = "mode=predict&" if name in ("answer", "score") else ""
        request("GET", path, f"scenario=worked-example&{prefix}{name}={value}".encode())


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(["/play", "/validate", "/upload"]),
    st.sampled_from(
        [b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", b"text/plain", b""]
    ),
    st.binary(max_size=200) | values.map(lambda value: b"scenario=" + value.encode()),
)
def test_editor_routes_with_generated_bodies(path: str, content_type: bytes, body: bytes) -> None:
    request("POST", path, b"", body, content_type)
