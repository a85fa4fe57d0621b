"""Hostile input, route by route: every refusal is a 4xx with a message that names the problem, never a 500,
a traceback or a hang; the limits of contract §1 and the request budget are enforced before anything runs.

Four parts: explicit cases for every route and the command line; the request budget (estimate_work,
SPTELAB_RUN_BUDGET); Hypothesis tests of the codec and the scenario parser (they return or refuse with
their own error, nothing else); and the real server as the project serves it (`python -m app`) fed the
hostile requests over HTTP, whose log must hold no traceback and no 500.
"""

from __future__ import annotations

import asyncio
import base64
import html
import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree

import httpx
import pytest
from conftest import AsgiClient, http_scope
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.cache
import app.replay
from app.main import MAX_BODY_BYTES, create_app
from app.settings import Settings
from cli.main import main as cli_main
from engine import estimate
from engine.codec import MAX_URL_BYTES, CodecError, decode_code, encode_scenario
from engine.estimate import cumulative_work, estimate_result_rows, estimate_work
from engine.policy import NOT_IMPLEMENTED, PRESETS
from engine.scenario import (
    MAX_ACCESSES,
    MAX_COUNT,
    MAX_MEMSLOTS,
    MAX_SCENARIO_BYTES,
    MAX_STEPS,
    MAX_TOTAL_PAGES,
    MAX_VCPUS,
    STEP_OPS,
    Scenario,
    ScenarioError,
    ScenarioTooLargeError,
    parse_scenario,
)
from scenarios import builtin_names, builtin_scenarios, load_builtin_text

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "worked-example"
# Every route that takes a scenario in its query, and how it names the share code.
SOURCE_ROUTES = ["/play", "/compare", "/download", "/export.svg", "/result.json", "/api/decode"]
# The player's routes: they share its query (player_query).
PLAYER_ROUTES = ["/play", "/export.svg", "/result.json"]

ERROR_MESSAGE = re.compile(r"data-error-message>(.*?)</p>", re.DOTALL)
EDITOR_ERROR = re.compile(r"data-error [^>]*>✕ (.*?)</span>", re.DOTALL)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(load_builtin_text(EXAMPLE))
    return data


def scenario(steps: list[dict[str, Any]], *, npages: int = 512, **fields: Any) -> dict[str, Any]:
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": npages, "host_page": "4K"}],
        "steps": steps,
        **fields,
    }


def raw_code(data: bytes) -> str:
    """A share code of arbitrary bytes, as a hostile link would carry them."""
    packer = zlib.compressobj(level=9, wbits=-15)
    packed = packer.compress(data) + packer.flush()
    return "1." + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


# A DEFLATE bomb that fits in a URL: 6 KB of link, 5 MB of spaces once inflated.
BOMB = raw_code(b" " * 5_000_000)
# A scenario the budget refuses: 4 GiB of slots, written 4 million times.
HEAVY = scenario(
    [{"op": "write", "gfn": "0x0", "count": MAX_COUNT} for _ in range(4)],
    npages=MAX_TOTAL_PAGES // 4,
)
HEAVY["memslots"] = [{"id": k, "base_gfn": hex(k << 18), "npages": 1 << 18} for k in range(4)]


def message(response: httpx.Response) -> str:
    """The refusal's message: `detail` of a JSON body, the error page's or the editor's message."""
    if response.headers.get("content-type", "").startswith("application/json"):
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        return detail
    found = ERROR_MESSAGE.search(response.text) or EDITOR_ERROR.search(response.text)
    assert found, f"no error message in a {response.status_code} page: {response.text[:300]}"
    return html.unescape(found.group(1))


def refused(response: httpx.Response, status: int, *fragments: str) -> str:
    """Assert a refusal with `status` whose message holds every fragment; return the message."""
    assert response.status_code == status, (response.status_code, response.text[:400])
    text = message(response)
    assert "\n" not in text.strip() and text.strip(), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)


def source_query(route: str, code: str) -> str:
    return f"{route}?s={code}"


# ---------------------------------------------------------------------------------------------------------
# Share codes, on every route that takes one


BAD_CODES = [
    pytest.param("", 400, "unknown codec version", id="empty"),
    pytest.param("1", 400, "unknown codec version '1'", id="no-dot"),
    pytest.param("2.abc", 400, "unknown codec version '2'", id="future-version"),
    pytest.param("x" * 300, 400, "unknown codec version", id="long-garbage"),
    pytest.param("1.!!!", 400, "not valid base64url", id="bad-alphabet"),
    pytest.param("1.a", 400, "not valid base64url", id="truncated-base64"),
    pytest.param("1.", 400, "cut short", id="no-payload"),
    pytest.param("1.AAAA", 400, "not valid DEFLATE", id="bad-deflate"),
    pytest.param(BOMB, 413, "inflates past 1048576 bytes", id="deflate-bomb"),
    pytest.param(raw_code(b"{not json"), 400, "not valid JSON", id="not-json"),
    pytest.param(raw_code(b"[1, 2]"), 400, "not an object", id="json-array"),
    pytest.param(raw_code(b"\xff\xfe"), 400, "not valid UTF-8", id="not-utf8"),
    pytest.param(raw_code(b"[" * 100_000), 400, "nested too deeply", id="deep-nesting"),
    pytest.param(raw_code(b'{"a": NaN}'), 400, "NaN is not a JSON number", id="nan"),
    pytest.param(
        raw_code(json.dumps(scenario([{"op": "write", "gfn": "0x9999"}])).encode()),
        422,
        "step 0 (write): gfn 0x9999 is outside every memslot",
        id="gfn-outside",
    ),
    pytest.param(
        raw_code(json.dumps(scenario([{"op": "fly"}])).encode()), 422, "unknown op 'fly'", id="unknown-op"
    ),
]


@pytest.mark.parametrize("route", SOURCE_ROUTES)
@pytest.mark.parametrize(("code", "status", "fragment"), BAD_CODES)
def test_bad_share_codes_are_refused_on_every_route(
    client: TestClient, route: str, code: str, status: int, fragment: str
) -> None:
    refused(client.get(source_query(route, code)), status, fragment)


def test_a_truncated_code_is_refused(client: TestClient) -> None:
    code = encode_scenario(example())
    for cut in (1, 2, 3, 10, len(code) // 2):
        text = refused(client.get(f"/play?s={code[:-cut]}"), 400, "share code: not valid")
        assert "base64url" in text or "DEFLATE" in text


def test_a_deflate_bomb_is_refused_quickly_without_inflating_it() -> None:
    # 100 MB of zeros in a 100 KB code (no URL carries that much, but the codec must not care).
    bomb = raw_code(bytes(100_000_000))
    start = time.perf_counter()
    with pytest.raises(CodecError) as caught:
        decode_code(bomb)
    assert time.perf_counter() - start < 1.0
    assert caught.value.status == 413 and "inflates past" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Bodies: size, nesting, numbers, encoding


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread of its own: the browser tests'
    Playwright keeps an event loop running in the main thread for the whole session."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _asgi(
    application: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, bytes, int]:
    """One request straight into the ASGI app: (status, body, bytes of the request body it read)."""
    client = AsgiClient(chunks)
    await application(http_scope(application, method, path, headers), client.receive, client.send)
    return client.status, client.body, client.read


@pytest.mark.parametrize("path", ["/api/run", "/api/encode", "/play", "/validate", "/upload"])
def test_a_10mb_body_is_refused_before_it_is_read(path: str) -> None:
    application = create_app()
    ten_mb = 10 * 1024 * 1024
    chunks = [b"x" * (1 << 20)] * 10
    declared = [(b"content-length", str(ten_mb).encode()), (b"content-type", b"application/json")]
    status, body, read = run_async(_asgi(application, "POST", path, declared, chunks))
    assert status == 413 and read == 0
    assert b"too large" in body
    # Chunked, with no length: read up to the limit, not to the end.
    chunked = [(b"content-type", b"application/json")]
    status, body, read = run_async(_asgi(application, "POST", path, chunked, chunks))
    assert status == 413 and read <= MAX_BODY_BYTES + (1 << 20)
    assert b"too large" in body


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("path", ["/api/run", "/api/encode"])
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param(DEEP, 400, "nested too deeply", id="deep-array"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, 400, "nested too deeply", id="deep-object"),
        pytest.param('{"scenario": ' + DEEP + "}", 400, "nested too deeply", id="deep-field"),
        pytest.param('{"scenario": {"a": NaN}}', 400, "NaN is not a JSON number", id="nan"),
        pytest.param('{"scenario": {"a": -Infinity}}', 400, "-Infinity is not a JSON number", id="inf"),
        pytest.param('{"scenario": {"a": ' + "9" * 10_000 + "}}", 400, "too many digits", id="digits"),
        pytest.param('{"scenario": {}, "scenario": {}}', 400, "appears twice", id="repeated-key"),
        pytest.param(b'{"scenario": "\xff"}', 400, "not valid UTF-8 (byte 14)", id="not-utf8"),
        pytest.param("{not json", 400, "not valid JSON (line 1, column 2)", id="broken"),
        pytest.param("", 400, "the request body is empty", id="empty"),
        pytest.param("[]", 400, "not a JSON object", id="array"),
        pytest.param(
            '{"scenario": {}, "pad": "' + " " * MAX_SCENARIO_BYTES + '"}', 413, "larger than", id="over-1mib"
        ),
    ],
)
def test_hostile_json_bodies(
    client: TestClient, path: str, body: str | bytes, status: int, fragment: str
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    refused(response, status, fragment)


def test_deep_nesting_in_the_editor_and_upload(client: TestClient) -> None:
    refused(client.post("/play", data={"scenario": DEEP}), 422, "nested too deeply")
    status = client.post("/validate", data={"scenario": DEEP})
    assert status.status_code == 200 and "nested too deeply" in status.text
    refused(client.post("/upload", files={"file": ("deep.json", DEEP.encode())}), 422, "nested too deeply")
    refused(client.post("/upload", files={"file": ("bad.json", b"\xff\xfe{}")}), 422, "not valid UTF-8")


NUMBERS = [
    pytest.param("npages", 10**30, "memslots[0].npages: must fit in 64 bits", id="1e30-int"),
    pytest.param("npages", 1e30, "must be an integer or a hex string", id="1e30-float"),
    pytest.param("npages", 1.0, "not the number 1.0", id="float"),
    pytest.param("npages", -1, "must not be negative", id="negative"),
    pytest.param("npages", "0x" + "f" * 40, "must fit in 64 bits", id="huge-hex"),
    pytest.param("npages", "512", "not the string '512'", id="decimal-string"),
    pytest.param("npages", True, "not a boolean", id="bool"),
    pytest.param("gfn", 10**30, "step 0 (write): gfn must fit in 64 bits", id="gfn-1e30"),
    pytest.param("count", -1, "step 0 (write): count must not be negative", id="count-negative"),
    pytest.param("count", 0, "count must be between 1 and 1048576", id="count-zero"),
    pytest.param("count", MAX_COUNT + 1, "count must be between 1 and 1048576", id="count-huge"),
    pytest.param("vcpu", 10**30, "vcpu must fit in 64 bits", id="vcpu-huge"),
]


@pytest.mark.parametrize(("field", "value", "fragment"), NUMBERS)
def test_numbers_where_ints_are_expected(client: TestClient, field: str, value: Any, fragment: str) -> None:
    data = scenario([{"op": "write", "gfn": 0}])
    if field == "npages":
        data["memslots"][0]["npages"] = value
    else:
        data["steps"][0][field] = value
    refused(client.post("/api/run", json={"scenario": data}), 422, fragment)
    refused(client.post("/api/encode", json={"scenario": data}), 422, fragment)
    refused(client.post("/play", data={"scenario": json.dumps(data)}), 422, fragment)
    refused(client.get(f"/play?s={raw_code(json.dumps(data).encode())}"), 422, fragment)


# ---------------------------------------------------------------------------------------------------------
# The query: step, presets, switches, duplicates, empty values, encodings


@pytest.mark.parametrize("route", [*PLAYER_ROUTES, "/compare"])
@pytest.mark.parametrize(
    ("step", "fragment"),
    [
        pytest.param("1e30", "step='1e30': must be a whole number from 0 to 12", id="exponent"),
        pytest.param("1" * 31, "must be a whole number", id="10^30"),
        pytest.param("1.5", "must be a whole number", id="fraction"),
        pytest.param("NaN", "must be a whole number", id="nan"),
        pytest.param("0x3", "must be a whole number", id="hex"),
        pytest.param("%C2%B2", "step='²'", id="superscript-two"),
        pytest.param("%D9%A1", "step='١'", id="arabic-one"),
        pytest.param("%00", "must be a whole number", id="nul"),
    ],
)
def test_a_step_that_is_not_a_whole_number(client: TestClient, route: str, step: str, fragment: str) -> None:
    refused(client.get(f"{route}?scenario={EXAMPLE}&step={step}"), 400, fragment)


def test_negative_and_huge_steps_are_clamped(client: TestClient) -> None:
    for step, shown, notice in (("-5", "0", "before the start"), ("99999999999", "12", "past the end")):
        response = client.get(f"/play?scenario={EXAMPLE}&step={step}")
        assert response.status_code == 200 and notice in response.text
        assert f'data-step="{shown}"' in response.text
    # A file named after the step must not be clamped: the picture refuses it instead.
    refused(client.get(f"/export.svg?scenario={EXAMPLE}&step=-5"), 400, "out of range")


@pytest.mark.parametrize("route", PLAYER_ROUTES)
@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        pytest.param(
            "variant=nope", "unknown variant 'nope' (known: zap, lazy-buggy, lazy, modern)", id="variant"
        ),
        pytest.param("variant=%00", "unknown variant '\\x00'", id="variant-nul"),
        pytest.param("policy=x=y", "unknown policy switch 'x'", id="policy-switch"),
        pytest.param("policy=wp_large=bad", "switch wp_large: unknown value 'bad'", id="policy-value"),
        pytest.param("policy=wp_large=zap%00", "unknown value 'zap\\x00'", id="policy-nul"),
        pytest.param("policy=garbage", "expected SWITCH=VALUE pairs", id="policy-shape"),
        pytest.param("spte=%1b[2J", "expected LEVEL:SPGFN:INDEX", id="spte-escape"),
        pytest.param("mode=%07", "the only mode is 'predict'", id="mode-bell"),
        pytest.param("step=1&step=2", "step is given 2 times; give it once", id="duplicate-step"),
        pytest.param("variant=zap&variant=lazy", "variant is given 2 times", id="duplicate-variant"),
        pytest.param(f"scenario={EXAMPLE}", "scenario is given 2 times", id="duplicate-scenario"),
    ],
)
def test_bad_player_parameters(client: TestClient, route: str, query: str, fragment: str) -> None:
    refused(client.get(f"{route}?scenario={EXAMPLE}&{query}"), 400, fragment)


@pytest.mark.parametrize("route", PLAYER_ROUTES)
def test_unimplemented_switch_values_are_refused(
    client: TestClient, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every value the switch table lists is implemented today; the refusal is for the next one.
    monkeypatch.setitem(NOT_IMPLEMENTED, ("eager_split", True), "eager page splitting")
    query = f"{route}?scenario={EXAMPLE}&policy=eager_split=true"
    refused(client.get(query), 400, "is not implemented by this engine yet")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        pytest.param("sw.nope=1", "unknown policy switch 'nope'", id="switch"),
        pytest.param("sw.wp_large=bad", "switch wp_large: unknown value 'bad'", id="value"),
        pytest.param("sw.=", "unknown policy switch ''", id="empty"),
    ],
)
def test_bad_what_if_switches(client: TestClient, query: str, fragment: str) -> None:
    refused(client.get(f"/play?scenario={EXAMPLE}&{query}"), 400, fragment)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        pytest.param("variants=nope", "unknown variant 'nope'", id="variant"),
        pytest.param("variants=,,", "variants= names no preset", id="no-variant"),
        pytest.param("step=1&step=2", "step is given 2 times", id="duplicate-step"),
        pytest.param("variants=zap&variants=lazy", "variants is given 2 times", id="duplicate-variants"),
        pytest.param(f"scenario={EXAMPLE}", "scenario is given 2 times", id="duplicate-scenario"),
    ],
)
def test_bad_compare_parameters(client: TestClient, query: str, fragment: str) -> None:
    refused(client.get(f"/compare?scenario={EXAMPLE}&{query}"), 400, fragment)


def test_duplicate_sources_are_refused_everywhere(client: TestClient) -> None:
    code = encode_scenario(example())
    for route in SOURCE_ROUTES:
        if route != "/api/decode":
            refused(client.get(f"{route}?scenario={EXAMPLE}&s={code}"), 400, "not both")
            refused(client.get(f"{route}?s={code}&s={code}"), 400, "s is given 2 times")
    refused(client.get(f"/api/decode?s={code}&s={code}"), 400, "s is given 2 times")
    refused(client.get("/download?scenario=a&scenario=b"), 400, "scenario is given 2 times")


def test_empty_values(client: TestClient) -> None:
    for query in ("step=", "variant=", "policy=", "spte=", "present=", "focus="):
        assert client.get(f"/play?scenario={EXAMPLE}&{query}").status_code == 200, query
    assert client.get(f"/compare?scenario={EXAMPLE}&variants=&step=").status_code == 200
    refused(client.get("/play?s="), 400, "unknown codec version ''")
    refused(client.get("/play?scenario="), 404, "no built-in scenario named ''")
    refused(client.get("/play"), 400, "no scenario given")
    refused(client.get("/api/decode"), 400, "query parameter s")
    refused(client.post("/upload"), 400, "no file uploaded")


@pytest.mark.parametrize(
    "url",
    [
        "/play?scenario=worked-example&step=%ff",
        "/compare?scenario=%C3%28",
        "/download?s=%80",
        "/export.svg?scenario=worked-example&spte=%fe",
        "/result.json?scenario=worked-example&variant=%ed%a0%80",
        "/api/decode?s=%ff",
        "/api/scenarios?x=%c0%af",
        "/?x=%ff",
        "/healthz?%ff=1",
    ],
)
def test_a_query_that_is_not_utf8(client: TestClient, url: str) -> None:
    refused(client.get(url), 400, "is not valid UTF-8")


def test_unknown_names_and_paths(client: TestClient) -> None:
    refused(client.get("/play?scenario=../etc/passwd"), 404, "no built-in scenario named '../etc/passwd'")
    refused(client.get("/api/scenarios/%00"), 404, "no built-in scenario named '\\x00'")
    refused(client.get("/%ff"), 404, "nothing here")
    refused(client.get("/play?" + "x" * MAX_URL_BYTES), 414, "more than the 8192")


def test_non_utf8_form_bodies(client: TestClient) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    refused(client.post("/play", content=b"scenario=%ff%fe", headers=form), 422, "not valid JSON")
    refused(client.post("/play", content=b"scenario=\xff\xfe", headers=form), 422, "not valid JSON")
    response = client.post("/validate", content=b"scenario=\xff", headers=form)
    assert response.status_code == 200 and "not valid JSON" in response.text
    refused(client.post("/api/run", content=b"\xff\xfe{}", headers={"content-type": "application/json"}), 400)


def test_a_large_scenario_in_the_editor_form_is_not_refused_by_the_form_parser(client: TestClient) -> None:
    # 600 KB of JSON is 1 MB once percent-encoded: the form parser's own 1 MiB per field must not refuse it.
    # In notes of at most MAX_NOTE_CHARS characters each.
    note = {"op": "note", "text": "x, " * 666}
    data = scenario([{"op": "write", "gfn": 0}, *[note] * 300])
    response = client.post("/validate", data={"scenario": json.dumps(data)})
    assert response.status_code == 200 and "Valid" in response.text
    data["steps"] = [*data["steps"], *[note] * 300]
    refused(client.post("/play", data={"scenario": json.dumps(data)}), 413, "larger than 1048576 bytes")


# ---------------------------------------------------------------------------------------------------------
# NUL and control characters: text, never refused, never breaking an output


CONTROL = "\x00\x01\x07\x08\x0b\x0c\x1b[2J\x7f\x85\x9f"


def test_control_characters_in_text_pass_through_every_route(client: TestClient) -> None:
    data = scenario(
        [{"op": "note", "text": f"note {CONTROL}"}, {"op": "write", "gfn": 0}],
        title=f"t{CONTROL}",
        description=f"*d* {CONTROL}",
    )
    code = encode_scenario(data)
    for route in ("/play", "/compare", "/download", "/export.svg", "/result.json"):
        response = client.get(f"{route}?s={code}&step=1")
        assert response.status_code == 200, route
    svg = client.get(f"/export.svg?s={code}&step=1").text
    ElementTree.fromstring(svg.encode("utf-8"))  # XML 1.0 holds no C0 control characters: still parses
    assert client.get(f"/result.json?s={code}").json()["scenario"]["title"] == f"t{CONTROL}"
    assert client.post("/api/run", json={"scenario": data}).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# The limits of contract §1, each refused with a message that names it


def _many(n: int, step: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(step) for _ in range(n)]


LIMITS = [
    pytest.param(
        {**scenario([]), "vm": {"vcpus": MAX_VCPUS + 1}}, "vm.vcpus: must be between 1 and 8", id="vcpus"
    ),
    pytest.param(
        {
            **scenario([]),
            "memslots": [{"id": k, "base_gfn": k, "npages": 1} for k in range(MAX_MEMSLOTS + 1)],
        },
        "must hold between 1 and 64 memslots, not 65",
        id="memslots",
    ),
    pytest.param(
        {
            **scenario([]),
            "memslots": [
                {"id": k, "base_gfn": k << 20, "npages": MAX_TOTAL_PAGES // 2 + 1} for k in range(2)
            ],
        },
        "more than the limit of 1048576 (4 GiB)",
        id="pages",
    ),
    pytest.param(
        scenario(_many(MAX_STEPS + 1, {"op": "flush_tlb"})),
        "must hold at most 100000 steps, not 100001",
        id="steps",
    ),
    pytest.param(
        scenario([{"op": "read", "gfn": 0, "count": MAX_COUNT + 1, "stride": 0}]),
        "count must be between 1 and 1048576",
        id="count",
    ),
    pytest.param(
        scenario(_many(5, {"op": "read", "gfn": 0, "count": MAX_COUNT, "stride": 0})),
        f"takes the scenario to {MAX_ACCESSES + MAX_COUNT} guest accesses, more than the limit of 4194304",
        id="accesses",
    ),
]


@pytest.mark.parametrize(("data", "fragment"), LIMITS)
def test_every_limit_is_refused_by_name(client: TestClient, data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(fragment)):
        parse_scenario(data)
    body = json.dumps({"scenario": data})
    if len(body) <= MAX_SCENARIO_BYTES:
        refused(
            client.post("/api/run", content=body, headers={"content-type": "application/json"}), 422, fragment
        )


def test_size_limits_are_refused_by_name(client: TestClient) -> None:
    too_big = json.dumps(scenario([], description="x" * MAX_SCENARIO_BYTES))
    with pytest.raises(ScenarioTooLargeError, match="larger than 1048576 bytes"):
        parse_scenario(too_big)
    refused(client.post("/upload", files={"file": ("big.json", too_big.encode())}), 413, "1048576 bytes")
    refused(client.post("/play", data={"scenario": too_big}), 413, "larger than 1048576 bytes")
    body = json.dumps({"scenario": json.loads(too_big)})
    refused(
        client.post("/api/run", content=body, headers={"content-type": "application/json"}),
        413,
        "larger than",
    )
    # A scenario whose canonical form (defaults filled in) is over 1 MiB has no share code.
    long_form = scenario(_many(47_000, {"op": "read", "gfn": 0}))
    assert len(json.dumps(long_form, separators=(",", ":"))) <= MAX_SCENARIO_BYTES
    with pytest.raises(CodecError, match="once its defaults are filled in") as caught:
        encode_scenario(long_form)
    assert caught.value.status == 413
    refused(client.post("/api/encode", json={"scenario": long_form}), 413, "a share code may hold")
    compact = json.dumps(long_form, separators=(",", ":"))
    refused(client.post("/play", data={"scenario": compact}), 413, "a share code may hold")
    # ... and a code another encoder made of it is refused too (it would key no canonical run).
    refused(client.get(f"/play?s={raw_code(compact.encode())}"), 413, "a share code may hold")


# ---------------------------------------------------------------------------------------------------------
# The request budget


def test_the_estimate_is_consistent_and_small_for_the_builtins() -> None:
    for name, parsed in builtin_scenarios():
        prefix = cumulative_work(parsed)
        assert len(prefix) == len(parsed.steps) + 1
        assert prefix == sorted(prefix), name
        assert all(prefix[n] == estimate_work(parsed, n).total for n in range(len(prefix))), name
        # Each built-in runs under every preset (four) on the landing page and /compare: far below any sane
        # budget. The estimate bounds the costliest preset: `modern` splits every huge page the guest
        # mapped when logging starts and recovers them when it stops, and one-gig-page's gigabyte is
        # 262 144 pages each way (about 1.7 s), which still fits the default budget four times over.
        if name == "one-gig-page":
            assert prefix[-1] * len(PRESETS) <= Settings().run_budget, name
        else:
            assert prefix[-1] * len(PRESETS) < 25_000, name


def test_the_estimate_follows_the_ops_that_cost() -> None:
    def total(steps: list[dict[str, Any]], npages: int = 1 << 20) -> int:
        return estimate_work(parse_scenario(scenario(steps, npages=npages))).total

    base = total([])
    assert total([{"op": "write", "gfn": 0, "count": 1000}]) == base + 1 + math.ceil(1000 * estimate.FAULT)
    # Write-protecting a slot is bounded by what the accesses so far can have mapped ...
    few = total([{"op": "write", "gfn": 0}, {"op": "enable_dirty_log", "slot": 1}])
    many = total([{"op": "write", "gfn": 0, "count": 1 << 16}, {"op": "enable_dirty_log", "slot": 1}])
    assert few < base + 10 and many - few > (1 << 16) * (estimate.FAULT + estimate.PROTECT)
    # ... and reading its bitmap by its size.
    logged = [{"op": "enable_dirty_log", "slot": 1}, *_many(100, {"op": "get_dirty_log", "slot": 1})]
    assert total(logged) >= base + 100 * (1 << 20) * estimate.BITMAP
    assert total(logged, npages=512) < 500
    assert total(_many(10, {"op": "zap_all"})) < total(
        [{"op": "write", "gfn": 0, "count": 8, "stride": 512}, *_many(10, {"op": "zap_all"})]
    )
    # A 1G leaf maps 262144 pages from one access (§1.2): enabling logging may split them all (the modern
    # preset's eager split, §5.2) and disabling may recover them (§5.3, §5.7: in place, freeing every table
    # under the gigabyte); a 4K-backed slot has none to split.
    gig: dict[str, Any] = {
        "vm": {"max_page_level": "1G"},
        "memslots": [{"id": 1, "base_gfn": "0x40000", "npages": 1 << 18, "host_page": "1G"}],
    }
    toggled: list[dict[str, Any]] = [
        {"op": "read", "gfn": "0x40000"},
        {"op": "enable_dirty_log", "slot": 1},
        {"op": "disable_dirty_log", "slot": 1},
    ]
    split = estimate_work(parse_scenario(scenario(toggled, **gig)))
    assert split.huge >= (1 << 18) * (estimate.SPLIT + estimate.RECOVER)
    small: dict[str, Any] = {
        "memslots": [{"id": 1, "base_gfn": "0x40000", "npages": 1 << 18, "host_page": "4K"}]
    }
    flat = estimate_work(parse_scenario(scenario(toggled, **{**gig, **small})))
    assert flat.huge == 0 and flat.slot_pages < 10
    heavy = parse_scenario(HEAVY)
    assert estimate_work(heavy).total > 4 * MAX_COUNT * estimate.FAULT
    assert estimate_result_rows(heavy) >= MAX_TOTAL_PAGES


def test_the_default_budget_runs_the_builtins_and_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded from its file: benchmarks/ is scripts, not a package.
    spec = importlib.util.spec_from_file_location("web_latency", REPO / "benchmarks" / "web_latency.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)
    spec.loader.exec_module(benchmark)
    budget = Settings().run_budget
    per_run = estimate_work(parse_scenario(benchmark.build_scenario())).total
    # The benchmark asks the player for each preset in turn, one run per request, to the last step. The
    # estimate bounds the costliest preset: under `modern` each of its hundred enable_dirty_log steps splits
    # the slot's sixteen 2M pages and each disable recovers them (about 7 s of the summary pass), so the
    # estimate is several times the 3.x presets' cost and four runs of it (/compare) no longer fit.
    assert per_run <= budget


def test_every_builtin_passes_every_route_at_its_last_step(client: TestClient) -> None:
    for name in builtin_names():
        total = len(parse_scenario(load_builtin_text(name)).steps)
        for url in (
            f"/play?scenario={name}&step={total}",
            f"/play?scenario={name}&step={total - 1}&mode=predict",
            f"/compare?scenario={name}&step={total}",
            f"/result.json?scenario={name}",
        ):
            assert client.get(url).status_code == 200, url
        assert (
            client.post("/api/run", json={"scenario": json.loads(load_builtin_text(name))}).status_code == 200
        )


def test_a_request_over_the_budget_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("the engine ran for a request over the budget")

    monkeypatch.setattr(app.cache.Run, "ensure", never)
    monkeypatch.setattr(app.cache.Run, "__init__", never)
    heavy_client = TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)
    code = encode_scenario(HEAVY)
    common = ("SPTELAB_RUN_BUDGET", "most of it guest accesses", "sptelab run FILE")
    refused(
        heavy_client.get(f"/play?s={code}&step=4"), 413, "showing step 4", "show an earlier step", *common
    )
    refused(heavy_client.get(f"/export.svg?s={code}&step=2"), 413, "showing step 2", *common)
    refused(heavy_client.get(f"/play?s={code}&step=1&mode=predict"), 413, "showing step 1", *common)
    refused(
        heavy_client.get(f"/compare?s={code}&step=1"), 413, "comparing 4 presets at step 1", "4 runs", *common
    )
    refused(heavy_client.get(f"/compare?s={code}&step=2&variants=zap"), 413, "comparing 1 presets", *common)
    refused(heavy_client.get(f"/result.json?s={code}"), 413, "writing out the result", *common)
    refused(heavy_client.post("/api/run", json={"scenario": HEAVY, "detail": "summary"}), 413, *common)
    # Step 0 runs nothing but the VM's creation.
    monkeypatch.undo()
    assert heavy_client.get(f"/play?s={code}&step=0").status_code == 200


def test_dirty_log_work_is_named_as_what_is_too_big() -> None:
    small = TestClient(create_app(Settings(run_budget=50_000)), raise_server_exceptions=False)
    logged = scenario(
        [{"op": "enable_dirty_log", "slot": 1}, *_many(100, {"op": "get_dirty_log", "slot": 1})],
        npages=MAX_TOTAL_PAGES,
    )
    code = encode_scenario(logged)
    refused(small.get(f"/play?s={code}&step=101"), 413, "dirty-log, flush and migration steps, per memslot")
    assert small.get(f"/play?s={code}&step=10").status_code == 200


def test_the_budget_is_a_setting_and_the_command_line_has_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPTELAB_RUN_BUDGET", "30")
    assert Settings().run_budget == 30
    tight = TestClient(create_app(Settings()), raise_server_exceptions=False)
    refused(tight.get(f"/play?scenario={EXAMPLE}&step=12"), 413, "at most 30 (SPTELAB_RUN_BUDGET)")
    assert tight.get(f"/play?scenario={EXAMPLE}&step=2").status_code == 200
    assert cli_main(["run", EXAMPLE, "--json"]) == 0
    capsys.readouterr()


def test_api_run_in_full_detail_is_bounded_like_result_json() -> None:
    small = TestClient(create_app(Settings(result_work=100)), raise_server_exceptions=False)
    data = scenario([{"op": "write", "gfn": 0, "count": 101}])
    refused(small.post("/api/run", json={"scenario": data}), 413, "RESULT_WORK", '"detail": "summary"')
    assert small.post("/api/run", json={"scenario": data, "detail": "summary"}).status_code == 200
    refused(small.get(f"/result.json?s={encode_scenario(data)}"), 413, "SPTELAB_RESULT_WORK")


def test_checkpoints_of_a_big_state_wait_for_work_in_proportion() -> None:
    # 128 level-1 tables, then many cheap steps: a copy of the state every 256 steps would cost far more
    # than the steps (the copies alone made such a scenario ten times slower than its run).
    steps = [{"op": "write", "gfn": 0, "count": 128, "stride": 512}, *_many(1500, {"op": "flush_tlb"})]
    parsed = parse_scenario(scenario(steps, npages=1 << 16))
    policy = PRESETS["lazy"]
    run = app.cache.Run(("a", policy), parsed, policy, Settings())
    run.ensure(len(steps))
    tables = len(run.finished.kvm.active_mmu_pages)
    assert tables > 128
    assert app.replay.copy_work(run.finished, Settings().checkpoint_copy_work) > 256 * app.cache.STEP_COST
    assert len(run._checkpoints) <= 2  # step 0, and at most one after 2000+ steps' worth of work
    # Every state is still reachable, replayed from the nearest checkpoint.
    assert run.at(1400).sim.index == 1400


# ---------------------------------------------------------------------------------------------------------
# The command line: exit 2 and one line on stderr


HOSTILE_FILES: dict[str, bytes] = {
    "deep.json": DEEP.encode(),
    "deep-object.json": ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
    "big.json": b" " * (10 * 1024 * 1024),
    "not-utf8.json": b"\xff\xfe\x00{",
    "nan.json": json.dumps(scenario([{"op": "write", "gfn": 0}])).replace('"gfn": 0', '"gfn": NaN').encode(),
    "huge.json": json.dumps(scenario([{"op": "write", "gfn": 10**30}])).encode(),
    "digits.json": json.dumps(scenario([{"op": "write", "gfn": 0}]))
    .replace('"gfn": 0', '"gfn": ' + "9" * 10_000)
    .encode(),
    "float.json": json.dumps(scenario([{"op": "write", "gfn": 1e30}])).encode(),
    "unknown-op.json": json.dumps(scenario([{"op": "fly"}])).encode(),
    "outside.json": json.dumps(scenario([{"op": "write", "gfn": 9999}])).encode(),
    "negative-count.json": json.dumps(scenario([{"op": "write", "gfn": 0, "count": -5}])).encode(),
    "repeated-key.json": b'{"format": "sptelab-scenario", "format": "x"}',
    "empty.json": b"",
    "surrogate.json": json.dumps(scenario([], title="\ud800")).encode(),
    "array.json": b"[1, 2]",
    "steps.json": json.dumps(scenario(_many(MAX_STEPS + 1, {"op": "zap_all"}))).encode()[:MAX_SCENARIO_BYTES],
}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, data in HOSTILE_FILES.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("command", ["run", "check", "url", "compare"])
def test_the_command_line_refuses_hostile_files_in_one_line(
    hostile_dir: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in HOSTILE_FILES:
        status = cli_main([command, str(hostile_dir / name)])
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert status == 2, (command, name, captured.err)
        assert len(lines) == 1 and lines[0].startswith(f"sptelab {command}: "), (name, captured.err)
        assert "Traceback" not in captured.err


def test_the_command_line_refuses_a_scenario_too_large_to_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "long.json"
    path.write_text(json.dumps(scenario(_many(47_000, {"op": "read", "gfn": 0})), separators=(",", ":")))
    assert cli_main(["url", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# Hypothesis: the codec and the parser return or refuse with their own error, nothing else

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def valid_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Small valid scenarios: one or two slots, accesses inside them, logging ops in a legal order."""
    npages = draw(st.sampled_from([1, 8, 512, 513, 4096]))
    slots = [{"id": 1, "base_gfn": 0x200, "npages": npages, "host_page": draw(st.sampled_from(["4K", "2M"]))}]
    steps: list[dict[str, Any]] = []
    logged = False
    for op in draw(
        st.lists(
            st.sampled_from(["read", "write", "log", "get", "unlog", "flush", "zap", "note"]), max_size=8
        )
    ):
        if op in ("read", "write"):
            count = draw(st.integers(1, 4))
            steps.append(
                {"op": op, "gfn": hex(0x200 + draw(st.integers(0, npages - 1))), "count": count, "stride": 0}
            )
        elif op == "log":
            steps.append({"op": "enable_dirty_log", "slot": 1})
            logged = True
        elif op == "get" and logged:
            steps.append({"op": "get_dirty_log", "slot": 1})
        elif op == "unlog":
            steps.append({"op": "disable_dirty_log", "slot": 1})
            logged = False
        elif op == "flush":
            steps.append({"op": "flush_tlb"})
        elif op == "zap":
            steps.append({"op": "zap_all"})
        elif op == "note":
            steps.append({"op": "note", "text": draw(st.text(max_size=20))})
    title = draw(st.text(max_size=20))
    return {"format": "sptelab-scenario", "version": 1, "title": title, "memslots": slots, "steps": steps}


def _refuses_cleanly(call: Any) -> object:
    """Call; a ScenarioError or CodecError is an answer, anything else fails the test."""
    try:
        return call()
    except (ScenarioError, CodecError) as error:
        text = str(error)
        assert text and "\n" not in text
        if isinstance(error, CodecError):
            assert error.status in (400, 413, 422)
        return error


@FUZZ
@given(st.text(max_size=200))
def test_any_text_decodes_or_is_refused(text: str) -> None:
    result = _refuses_cleanly(lambda: decode_code(text))
    assert isinstance(result, dict | CodecError)


@FUZZ
@given(st.binary(max_size=300))
def test_any_deflate_payload_decodes_or_is_refused(data: bytes) -> None:
    for code in (raw_code(data), "1." + base64.urlsafe_b64encode(data).rstrip(b"=").decode()):
        result = _refuses_cleanly(lambda code=code: decode_code(code))
        if isinstance(result, dict):
            assert isinstance(
                _refuses_cleanly(lambda result=result: parse_scenario(result)), Scenario | ScenarioError
            )


@FUZZ
@given(valid_scenarios())
def test_valid_scenarios_round_trip_through_the_codec(data: dict[str, Any]) -> None:
    parsed = parse_scenario(data)
    code = encode_scenario(data)
    assert code.startswith("1.") and len(code) < MAX_URL_BYTES
    assert parse_scenario(decode_code(code)).canonical() == parsed.canonical()
    # Hex or decimal, defaults or not: one scenario, one code.
    assert encode_scenario(parsed.canonical()) == code


@FUZZ
@given(json_values)
def test_any_json_value_parses_or_is_refused(value: object) -> None:
    if isinstance(value, dict):
        _refuses_cleanly(lambda: parse_scenario(value))
    _refuses_cleanly(lambda: parse_scenario(json.dumps(value)))


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    _refuses_cleanly(lambda: parse_scenario(data))


def _paths(value: object, prefix: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@FUZZ
@given(st.sampled_from(sorted(builtin_names())), st.data())
def test_mutated_builtins_parse_or_are_refused(name: str, data: st.DataObject) -> None:
    value: dict[str, Any] = json.loads(load_builtin_text(name))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(value))[1:]))
        parent: Any = value
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "duplicate", "add"]))
        if action == "replace":
            parent[key] = data.draw(json_values | st.sampled_from(STEP_OPS) | st.integers(-5, 2**64 + 5))
        elif action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(int(key), json.loads(json.dumps(parent[int(key)])))  # type: ignore[call-overload]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(json_values)
    result = _refuses_cleanly(lambda: parse_scenario(value))
    if isinstance(result, Scenario):
        code = _refuses_cleanly(lambda: encode_scenario(result))
        if isinstance(code, str):
            assert parse_scenario(decode_code(code)).canonical() == result.canonical()


# ---------------------------------------------------------------------------------------------------------
# A real server: the hostile requests over HTTP leave no traceback and no 500 in its log

ARTIFACTS = REPO / "test-artifacts"
STARTUP_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log

    def raw(self, request: bytes, body_chunks: list[bytes] | None = None) -> bytes:
        """Send `request` (request line and headers) and the body chunks as they are; the response's
        status line and headers (the server may answer before reading the body, and close)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(request)
            try:
                for chunk in body_chunks or []:
                    sock.sendall(chunk)
            except OSError:
                pass  # the server answered and closed before reading it all: what a 413 may do
            answer = b""
            try:
                while b"\r\n\r\n" not in answer:
                    more = sock.recv(65536)
                    if not more:
                        break
                    answer += more
            except OSError:
                pass
            return answer

    def get(self, target: bytes) -> int:
        return _status(self.raw(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))

    def post(self, target: bytes, body: bytes, content_type: bytes) -> int:
        head = (
            b"POST " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )  # fmt: skip
        return _status(self.raw(head, [body]))


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match.group(1))


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "hostile-server.log"
    port = _free_port()
    command = [sys.executable, "-m", "app"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPTELAB_HOST": "127.0.0.1", "SPTELAB_PORT": str(port)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0, trust_env=False).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield Server(port, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_a_real_server_answers_hostile_requests_and_logs_no_traceback(server: Server) -> None:
    heavy = encode_scenario(HEAVY).encode()
    control = encode_scenario(scenario([{"op": "note", "text": CONTROL}], title=CONTROL)).encode()
    gets = {
        b"/play?s=" + BOMB.encode(): 413,
        b"/play?s=1.!!!": 400,
        b"/play?s=1.a": 400,
        b"/play?s=2.abc": 400,
        b"/compare?s=" + BOMB.encode(): 413,
        b"/play?scenario=worked-example&step=%C2%B2": 400,
        b"/play?scenario=worked-example&step=\xff": 400,
        b"/play?scenario=worked-example&step=%ff": 400,
        b"/play?scenario=worked-example&variant=nope": 400,
        b"/play?scenario=worked-example&policy=wp_large=%00": 400,
        b"/play?scenario=worked-example&sw.nope=1": 400,
        b"/compare?scenario=worked-example&step=1&step=2": 400,
        b"/export.svg?scenario=worked-example&step=99": 400,
        b"/result.json?s=" + heavy: 413,
        b"/play?s=" + heavy + b"&step=4": 413,
        b"/compare?s=" + heavy + b"&step=4": 413,
        b"/play?s=" + control + b"&step=1": 200,
        b"/export.svg?s=" + control + b"&step=1": 200,
        b"/api/decode?s=" + BOMB.encode(): 413,
        b"/api/scenarios/%00": 404,
        b"/%ff": 404,
        b"/play?" + b"x" * MAX_URL_BYTES: 414,
    }
    for target, status in gets.items():
        assert server.get(target) == status, target[:80]
    json_type = b"application/json"
    posts = [
        (b"/api/run", DEEP.encode(), json_type, 400),
        (b"/api/run", b'{"scenario": {"a": NaN}}', json_type, 400),
        (b"/api/run", b'{"scenario": "\xff"}', json_type, 400),
        (b"/api/run", json.dumps({"scenario": HEAVY}).encode(), json_type, 413),
        (b"/api/encode", b'{"scenario": {}, "scenario": {}}', json_type, 400),
        (b"/play", b"scenario=" + b"%5B" * 100_000, b"application/x-www-form-urlencoded", 422),
        (b"/validate", b"scenario=\xff\xfe", b"application/x-www-form-urlencoded", 200),
        (b"/upload", b"--x\r\nbroken", b"multipart/form-data; boundary=x", 400),
    ]
    for target, body, content_type, status in posts:
        assert server.post(target, body, content_type) == status, (target, body[:40])
    # 10 MB announced: refused from the headers; 10 MB chunked: refused at the limit.
    head = b"POST /api/run HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
    assert _status(server.raw(head + b"Content-Length: 10485760\r\n\r\n", [b"x" * 65536])) == 413
    chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
    assert (
        _status(server.raw(head + b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 10 + [b"0\r\n\r\n"]))
        == 413
    )
    # Still up, and nothing in its log but the answers.
    assert server.get(b"/healthz") == 200
    assert server.get(b"/play?scenario=worked-example&step=5") == 200
    text = server.log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert not re.search(r'" 5\d\d ', text), text[-3000:]
