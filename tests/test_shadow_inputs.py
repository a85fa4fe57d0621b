"""Bad shadow-paging input is refused before anything runs, in one line that says where and what: the
guest's tables missing or misplaced, mappings that do not fit, the guest's paging ops under TDP, a split
GET that never ends. Over HTTP the same refusal is a 4xx body, on the command line exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from cli.main import main
from engine.scenario import ScenarioError, parse_scenario

SLOT = {"id": 1, "base_gfn": "0x200", "npages": 512, "host_page": "2M"}


def scenario(steps: list[dict[str, Any]], guest: Any = None, mmu: str = "shadow") -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": "sptelab-scenario",
        "version": 1,
        "vm": {"mmu": mmu},
        "memslots": [SLOT],
        "steps": steps,
    }
    if guest is not None:
        data["guest"] = guest
    return data


TABLES = {"tables_at": "0x200"}
CASES = [
    (scenario([]), "guest: vm.mmu \"shadow\" needs the guest's page tables"),
    (scenario([], {"tables_at": "0x100"}), "outside every memslot: the tables must live in guest memory"),
    (scenario([], {}), "a guest with paging on needs tables_at"),
    (scenario([], {"paging": False, "tables_at": "0x200"}), "a guest with paging off has no page tables"),
    (
        scenario([], {"tables_at": "0x200", "spaces": [{"maps": [{"gfn": "0x201", "page": "2M"}]}]}),
        "aligned to 512 pages",
    ),
    (
        scenario([], {"tables_at": "0x200", "spaces": [{"maps": [{"gfn": "0x300"}, {"gfn": "0x300"}]}]}),
        "gva 0x300000 is already mapped in this space",
    ),
    (scenario([], {"tables_at": "0x200", "spaces": [{}] * 9}), "between 1 and 8 spaces"),
    (scenario([{"op": "set_cr3", "space": 1}], TABLES), "space 1 does not exist"),
    (scenario([{"op": "write_gpte", "table": "0x900", "index": 0, "pte": "0x1"}], TABLES),
     "gfn 0x900 is outside every memslot"),
    (scenario([{"op": "write_gpte", "table": "0x200", "index": 512, "pte": "0x1"}], TABLES), "index"),
    (scenario([{"op": "read", "gfn": "0x210", "gva": "0x210000"}], TABLES), "give gfn or gva, not both"),
    (scenario([{"op": "read", "gva": "0x800000000000"}], TABLES), "gva"),
    (scenario([{"op": "invlpg", "gva": "0x1000"}], mmu="tdp"), 'invlpg needs vm.mmu "shadow"'),
    (scenario([{"op": "read", "gva": "0x1000"}], mmu="tdp"), 'gva needs vm.mmu "shadow"'),
    (
        scenario([{"op": "enable_dirty_log", "slot": 1}, {"op": "get_dirty_log", "slot": 1, "split": True}],
                 TABLES),
        "never ends: add a get_dirty_log_end step",
    ),
    (scenario([{"op": "get_dirty_log_end", "slot": 1}], TABLES), "no split get_dirty_log of slot 1"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "says"), CASES, ids=[says[:40] for _, says in CASES])
def test_bad_shadow_input_is_refused_in_one_line(data: dict[str, Any], says: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_over_http_and_on_the_command_line_the_refusal_is_a_4xx_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, says = CASES[0]
    response = TestClient(create_app()).post("/api/run", json={"scenario": data, "variant": "lazy"})
    assert 400 <= response.status_code < 500 and says in response.json()["detail"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
