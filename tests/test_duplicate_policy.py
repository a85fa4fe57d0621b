"""A switch given twice is refused by name, wherever a policy override is read: the player's, the
exports' and /real's `policy=` parameter (the compare view takes none), the API's `policy` objects, and
`--policy` on the command line. `pml=true,pml=false` says two things; taking the last would show a run
the link's reader did not ask for."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from cli.main import main
from scenarios import load_builtin_text

EXAMPLE = "worked-example"
TWICE = "pml=true,pml=false"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()), raise_server_exceptions=False, follow_redirects=False)


@pytest.mark.parametrize(
    "url",
    [
        f"/play?scenario={EXAMPLE}&variant=modern&policy={TWICE}",
        f"/play?scenario={EXAMPLE}&variant=modern&step=3&policy=wp_large=zap,{TWICE}",
        f"/play?scenario={EXAMPLE}&variant=lazy&policy=wp_large=zap, wp_large =keep",
        f"/export.svg?scenario={EXAMPLE}&variant=modern&policy={TWICE}",
        f"/result.json?scenario={EXAMPLE}&variant=modern&policy={TWICE}",
        f"/real?scenario={EXAMPLE}&policy={TWICE}",
    ],
)
def test_a_switch_given_twice_in_a_link_is_refused_by_name(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 400, response.text[:300]
    assert "is given twice" in response.text
    name = "wp_large" if "keep" in url else "pml"
    assert f"the switch &#39;{name}&#39;" in response.text or f"the switch '{name}'" in response.text


def test_a_switch_given_once_still_plays(client: TestClient) -> None:
    assert client.get(f"/play?scenario={EXAMPLE}&variant=modern&policy=pml=false").status_code == 200


@pytest.mark.parametrize("path", ["/api/run", "/api/real"])
def test_a_switch_given_twice_in_an_api_body_is_refused_by_name(client: TestClient, path: str) -> None:
    scenario = load_builtin_text(EXAMPLE)
    body = '{"scenario": ' + scenario + ', "policy": {"pml": true, "pml": false}}'
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "'pml' appears twice" in detail


def test_a_switch_given_twice_on_the_command_line_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["run", EXAMPLE], ["compare", EXAMPLE]):
        status = main([*command, "--policy", "pml=true", "--policy", "pml=false"])
        err = capsys.readouterr().err
        assert status == 2, command
        assert err.count("\n") == 1 and "'pml' is given twice" in err, err
    assert main(["run", EXAMPLE, "--policy", "pml=false", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"]["pml"] is False
