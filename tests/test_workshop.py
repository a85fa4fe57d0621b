"""Workshop mode as a room-safe server (app/workshop.py): the routes that let one visitor spend the
server on their own input answer 403 with a message, the built-ins and share links still play, and the
engine work a request may ask for is the smaller workshop budget."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from engine.codec import encode_scenario
from engine.estimate import estimate_work
from engine.scenario import parse_scenario
from scenarios import builtin_names, load_builtin_text

EXAMPLE = "worked-example"
TURNED_OFF = "this server runs in workshop mode, which turned off"


@pytest.fixture(scope="module")
def workshop() -> TestClient:
    return TestClient(create_app(Settings(workshop=True)), follow_redirects=False)


@pytest.fixture(scope="module")
def open_server() -> TestClient:
    return TestClient(create_app(Settings(workshop=False)), follow_redirects=False)


def scenario_json() -> str:
    return load_builtin_text(EXAMPLE)


@pytest.mark.parametrize(
    ("path", "named"),
    [("/api/run", "POST /api/run"), ("/api/encode", "POST /api/encode"), ("/api/real", "POST /api/real")],
)
def test_the_api_routes_that_run_your_own_input_are_off(workshop: TestClient, path: str, named: str) -> None:
    body = '{"scenario": ' + scenario_json() + "}"
    response = workshop.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 403
    assert response.json() == {"detail": response.json()["detail"]}
    assert response.json()["detail"].startswith(f"{TURNED_OFF} {named}")


def test_the_kernel_page_is_off_and_the_player_offers_no_kernel_run(workshop: TestClient) -> None:
    response = workshop.get(f"/real?scenario={EXAMPLE}")
    assert response.status_code == 403 and 'data-status="403"' in response.text
    assert f"{TURNED_OFF} /real" in response.text
    player = workshop.get(f"/play?scenario={EXAMPLE}&step=3")
    assert player.status_code == 200 and "/real?" not in player.text


def test_the_same_routes_are_on_without_workshop_mode(open_server: TestClient) -> None:
    body = '{"scenario": ' + scenario_json() + "}"
    headers = {"Content-Type": "application/json"}
    assert open_server.post("/api/encode", content=body, headers=headers).status_code == 200
    assert open_server.post("/api/run", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_plays_whole_in_workshop_mode(workshop: TestClient, name: str) -> None:
    steps = len(parse_scenario(load_builtin_text(name)).steps)
    response = workshop.get(f"/play?scenario={name}&variant=modern&step={steps}")
    assert response.status_code == 200, response.text[:300]


def test_share_links_and_the_read_only_api_still_work(workshop: TestClient) -> None:
    code = encode_scenario(parse_scenario(scenario_json()))
    assert workshop.get(f"/play?s={code}&variant=lazy&step=8").status_code == 200
    assert workshop.get(f"/compare?s={code}&step=4").status_code == 200
    assert workshop.get(f"/api/decode?s={code}").status_code == 200
    assert workshop.get("/api/scenarios").status_code == 200
    assert workshop.get(f"/api/scenarios/{EXAMPLE}").status_code == 200
    assert workshop.get(f"/export.svg?s={code}&step=4").status_code == 200


def test_workshop_mode_has_a_smaller_work_budget() -> None:
    """In workshop mode the workshop budget bounds each request: one between the price of one-gig-page's
    run and that of its four-preset compare admits the one and refuses the other. Outside workshop mode
    it bounds nothing, and by default every built-in compares whole in workshop mode too."""
    name = "one-gig-page"
    scenario = parse_scenario(load_builtin_text(name))
    steps = len(scenario.steps)
    between = 2 * estimate_work(scenario).total
    url = f"/compare?scenario={name}&step={steps}"
    assert TestClient(create_app(Settings(workshop=True))).get(url).status_code == 200
    small = TestClient(create_app(Settings(workshop=True, workshop_budget=between)))
    refused = small.get(url)
    assert refused.status_code == 413
    assert f"at most {between:,} (SPTELAB_WORKSHOP_BUDGET)" in refused.text
    assert small.get(f"/play?scenario={name}&step={steps}").status_code == 200
    assert TestClient(create_app(Settings(workshop_budget=between))).get(url).status_code == 200
    tight = TestClient(create_app(Settings(workshop=True, workshop_budget=1_000)))
    response = tight.get(f"/play?scenario={name}&step={steps}")
    assert response.status_code == 413 and "at most 1,000 (SPTELAB_WORKSHOP_BUDGET)" in response.text
