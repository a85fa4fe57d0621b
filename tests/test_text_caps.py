"""The caps on a scenario's text (title, description, each note): a share code compresses repeated text a
thousandfold, so without them a link of a kilobyte or two made a page of megabytes. Every entry point
refuses text over a cap with a message naming the field and the limit; the built-in lessons stay under."""

from __future__ import annotations

import base64
import html
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from cli.main import main as cli_main
from engine.codec import encode_scenario
from engine.scenario import (
    MAX_DESCRIPTION_CHARS,
    MAX_NOTE_CHARS,
    MAX_TITLE_CHARS,
    ScenarioError,
    parse_scenario,
)
from scenarios import builtin_names, load_builtin_text

# (the field's place in the scenario, what the message names it, the cap)
OVER = [
    pytest.param("title", MAX_TITLE_CHARS, "title:", "a title", id="title"),
    pytest.param("description", MAX_DESCRIPTION_CHARS, "description:", "a description", id="description"),
    pytest.param("note", MAX_NOTE_CHARS, "step 0 (note): text", "a note", id="note"),
]


def scenario_with(field: str, chars: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": "sptelab-scenario",
        "version": 1,
        "memslots": [{"id": 1, "base_gfn": 0, "npages": 512}],
        "steps": [{"op": "write", "gfn": 0, "count": 1}],
    }
    if field == "note":
        data["steps"].insert(0, {"op": "note", "text": "n" * chars})
    else:
        data[field] = "t" * chars
    return data


def raw_code(data: bytes) -> str:
    """A share code of the scenario's text as given (the canonical encoder refuses what does not parse)."""
    packer = zlib.compressobj(level=9, wbits=-15)
    packed = packer.compress(data) + packer.flush()
    return "1." + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def expected(where: str, limit: int, what: str) -> str:
    return f"{where} is {limit + 1:,} characters long, more than the {limit:,} {what} may hold"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)


@pytest.mark.parametrize(("field", "limit", "where", "what"), OVER)
def test_text_at_the_cap_is_accepted_and_one_more_character_refused(
    field: str, limit: int, where: str, what: str
) -> None:
    parse_scenario(json.dumps(scenario_with(field, limit)))
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(json.dumps(scenario_with(field, limit + 1)))
    assert str(caught.value) == expected(where, limit, what)


@pytest.mark.parametrize(("field", "limit", "where", "what"), OVER)
def test_the_command_line_refuses_it_with_one_line_and_exit_2(
    field: str, limit: int, where: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "long.json"
    path.write_text(json.dumps(scenario_with(field, limit + 1)))
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected(where, limit, what) in err


@pytest.mark.parametrize(("field", "limit", "where", "what"), OVER)
def test_the_editor_check_names_the_field_and_the_limit(
    client: TestClient, field: str, limit: int, where: str, what: str
) -> None:
    response = client.post("/validate", data={"scenario": json.dumps(scenario_with(field, limit + 1))})
    assert response.status_code == 200
    assert expected(where, limit, what) in html.unescape(response.text)


@pytest.mark.parametrize(("field", "limit", "where", "what"), OVER)
def test_a_share_code_over_a_cap_is_refused_by_the_player(
    client: TestClient, field: str, limit: int, where: str, what: str
) -> None:
    # The codec refuses nothing here: the code is short, the text compresses.
    code = encode_scenario(parse_scenario(json.dumps(scenario_with(field, limit))))
    assert client.get(f"/play?s={code}").status_code == 200
    long_code = raw_code(json.dumps(scenario_with(field, limit + 1)).encode())
    assert len(long_code) < 1024
    response = client.get(f"/play?s={long_code}")
    assert response.status_code == 422
    message = re.search(r"data-error-message>(.*?)</p>", response.text, re.DOTALL)
    assert message is not None and expected(where, limit, what) in html.unescape(message.group(1))


@pytest.mark.parametrize(("field", "limit", "where", "what"), OVER)
def test_the_api_refuses_it_with_a_json_message(
    client: TestClient, field: str, limit: int, where: str, what: str
) -> None:
    response = client.post("/api/run", json={"scenario": scenario_with(field, limit + 1)})
    assert response.status_code == 422
    assert expected(where, limit, what) in response.json()["detail"]


def test_the_schema_publishes_the_caps(client: TestClient) -> None:
    text = json.dumps(client.get("/api/schema").json())
    for limit in (MAX_TITLE_CHARS, MAX_DESCRIPTION_CHARS, MAX_NOTE_CHARS):
        assert f'"maxLength": {limit}' in text


@pytest.mark.parametrize("name", builtin_names())
def test_the_built_in_lessons_stay_under_the_caps(name: str) -> None:
    scenario = parse_scenario(load_builtin_text(name))
    assert len(scenario.title) <= MAX_TITLE_CHARS
    assert len(scenario.description) <= MAX_DESCRIPTION_CHARS
    notes = [step.text for step in scenario.steps if step.op == "note"]
    assert all(len(text) <= MAX_NOTE_CHARS for text in notes)
