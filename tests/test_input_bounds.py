"""The bounds of the two routes that parse whatever they are given, without a run budget to stop them:
`GET /api/decode?s=CODE` and the editor's `POST /validate`. Their input is capped (a code by the URL's
8 KiB and the 1 MiB it may inflate to; a scenario by 1 MiB), each cap refused with a message that names
it; and the work of a parse follows the input's size, since nothing in the JSON can make it do more
(nesting, long numbers and repeated keys are refused as they are met). A valid scenario of 1 MiB, the
worst case, parses in about 0.2 s (docs/contract-extensions.md)."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from fastapi.testclient import TestClient

from app.main import MAX_BODY_BYTES, create_app
from app.settings import Settings
from engine.codec import MAX_URL_BYTES
from engine.scenario import MAX_SCENARIO_BYTES
from scenarios import load_builtin_text


def raw_code(data: bytes) -> str:
    packer = zlib.compressobj(level=9, wbits=-15)
    return "1." + base64.urlsafe_b64encode(packer.compress(data) + packer.flush()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()), raise_server_exceptions=False, follow_redirects=False)


def test_decode_refuses_a_code_longer_than_a_url_may_be(client: TestClient) -> None:
    response = client.get("/api/decode?s=1." + "A" * MAX_URL_BYTES)
    assert response.status_code == 414
    assert f"more than the {MAX_URL_BYTES} this app accepts" in response.json()["detail"]


def test_decode_refuses_a_code_that_inflates_past_a_scenario(client: TestClient) -> None:
    bomb = raw_code(b" " * (MAX_SCENARIO_BYTES * 5))
    assert len(bomb) < MAX_URL_BYTES
    response = client.get(f"/api/decode?s={bomb}")
    assert response.status_code == 413
    assert "1 MiB" in response.json()["detail"] or "1048576" in response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
        (b'{"x":' + b"9" * 5000 + b"}", "too many digits"),
        (b'{"title": "a", "title": "b"}', "appears twice"),
    ],
)
def test_decode_refuses_json_that_would_cost_more_than_its_size(
    client: TestClient, payload: bytes, words: str
) -> None:
    response = client.get(f"/api/decode?s={raw_code(payload)}")
    assert response.status_code in (400, 422)
    assert words in response.json()["detail"]


def test_validate_names_the_scenario_cap(client: TestClient) -> None:
    text = "x" * (MAX_SCENARIO_BYTES + 1)
    response = client.post("/validate", data={"scenario": text}, headers={"HX-Request": "true"})
    # The editor's status is swapped in by htmx, so it answers 200 and says why.
    assert response.status_code == 200
    assert "larger than 1048576 bytes (1 MiB)" in response.text


def test_validate_refuses_a_body_over_the_limit_before_reading_it(client: TestClient) -> None:
    body = b"scenario=" + b"x" * MAX_BODY_BYTES
    response = client.post(
        "/validate", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413
    assert "Too large" in response.text


def test_validate_still_checks_a_real_scenario(client: TestClient) -> None:
    text = load_builtin_text("worked-example")
    response = client.post("/validate", data={"scenario": text}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and "Valid" in response.text
    broken = json.loads(text)
    broken["steps"][0]["op"] = "nope"
    response = client.post("/validate", data={"scenario": json.dumps(broken)}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and "step 0" in response.text
