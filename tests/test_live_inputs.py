"""Bad input to the live kernel's new parameters gets one clear line: `/real`'s `guest=` and `tables=`,
the player's `live=`, the API's `guest`, and `sptelab real --guest`. None of it needs a KVM device: each
is refused before anything runs (the device is reported as usable so that the routes reach the check)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.budget_bytes import Lru
from app.main import create_app
from app.settings import Settings
from cli.main import main
from engine.scenario import parse_scenario
from live.backend import KernelRun
from live.stats import Snapshot
from scenarios import load_builtin_text


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("app.livekernel.kernel_unavailable", lambda settings: None)
    monkeypatch.setattr("app.livekernel.live_results", Lru(4))
    return TestClient(create_app(Settings()), follow_redirects=False)


def _quiet_run(steps: int) -> KernelRun:
    """A made-up run of `steps` steps that logged nothing: what the routes need to reach their checks."""
    quiet = Snapshot(vm={}, vcpus=({},))
    return KernelRun(
        logs=[None] * steps,
        step_stats=[quiet] * steps,
        totals=quiet,
        stats_missing=None,
        guest_accesses=0,
        pages_touched=0,
    )


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("guest=bochs", "guest='bochs': the live VM's guest is native or emulated"),
        ("tables=0", "tables='0': a step from 1 to 12"),
        ("tables=13", "tables='13': a step from 1 to 12"),
        ("tables=-1", "tables='-1': a step from 1 to 12"),
        ("tables=two", "tables='two': a step from 1 to 12"),
    ],
)
def test_the_real_page_refuses_what_it_cannot_show(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, query: str, words: str
) -> None:
    steps = len(parse_scenario(load_builtin_text("worked-example")).steps)
    monkeypatch.setattr("live.report.run_with_stats", lambda *args, **kwargs: _quiet_run(steps))
    page = client.get(f"/real?scenario=worked-example&{query}")
    assert page.status_code == 400 and words in page.text.replace("&#39;", "'")


def test_the_player_refuses_a_live_value_it_does_not_know(client: TestClient) -> None:
    page = client.get("/play?scenario=worked-example&live=yes")
    assert page.status_code == 400
    assert "live='yes': 1 to show the kernel's own tables" in page.text.replace("&#39;", "'")


def test_the_api_refuses_an_unknown_guest_as_json(client: TestClient) -> None:
    body = {"scenario": {"format": "sptelab-scenario", "version": 1}, "guest": "bochs"}
    response = client.post("/api/real", json=body)
    assert response.status_code == 422
    assert "guest" in str(response.json()["detail"])


def test_the_cli_refuses_an_unknown_guest_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["real", "worked-example", "--guest", "bochs"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "invalid choice: 'bochs'" in captured.err
