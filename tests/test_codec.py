"""The share code of contract §6: the exact encoding, round trips, and what a decoder refuses."""

import base64
import json
import time
import zlib
from typing import Any

import pytest
from conftest import spec_example
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import MAX_URL_BYTES, CodecError, decode_code, encode_scenario
from engine.scenario import MAX_SCENARIO_BYTES, ScenarioError, parse_scenario

# The spec's worked example up to its first GET_DIRTY_LOG round.
EXAMPLE: dict[str, Any] = spec_example(rounds=1)


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(level=9, wbits=-15)
    return compressor.compress(data) + compressor.flush()


def code_of(raw: bytes) -> str:
    """A version-1 code holding `raw` as its DEFLATE stream, however bad `raw` is."""
    return "1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def refused(code: str) -> CodecError:
    with pytest.raises(CodecError) as caught:
        decode_code(code)
    return caught.value


def test_the_code_is_the_contract_encoding_of_the_canonical_json() -> None:
    canonical = parse_scenario(EXAMPLE).canonical()
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = "1." + base64.urlsafe_b64encode(deflate(text.encode("utf-8"))).decode().rstrip("=")
    code = encode_scenario(EXAMPLE)
    assert code == expected
    assert "=" not in code and "+" not in code and "/" not in code


def test_round_trip_gives_the_canonical_scenario() -> None:
    scenario = parse_scenario(EXAMPLE)
    decoded = decode_code(encode_scenario(scenario))
    assert decoded == json.loads(json.dumps(scenario.canonical()))
    assert parse_scenario(decoded) == scenario


def test_encoding_is_deterministic_and_ignores_spelling() -> None:
    code = encode_scenario(EXAMPLE)
    assert encode_scenario(EXAMPLE) == code
    assert encode_scenario(parse_scenario(EXAMPLE)) == code
    # Ints instead of hex, defaults left out, keys in another order: the same scenario, the same code.
    respelled: dict[str, Any] = {
        "steps": [
            {"gfn": 0x210, "op": "read"},
            {"op": "write", "gfn": 0x2A0, "count": 1},
            *EXAMPLE["steps"][2:],
        ],
        "memslots": [{"id": 1, "base_gfn": 512, "npages": "0x200", "host_page": "2M"}],
        "title": "t",
        "version": 1,
        "format": "sptelab-scenario",
    }
    assert encode_scenario(respelled) == code


def test_non_ascii_text_is_carried_as_utf8() -> None:
    scenario = dict(EXAMPLE, title="Größe ✓ 大页", description="**2 MiB** → 4 KiB")
    code = encode_scenario(scenario)
    inflated = zlib.decompress(base64.urlsafe_b64decode(code[2:] + "=" * (-len(code[2:]) % 4)), wbits=-15)
    assert "Größe ✓ 大页".encode() in inflated
    assert decode_code(code)["title"] == "Größe ✓ 大页"


def test_encode_refuses_an_invalid_scenario() -> None:
    with pytest.raises(ScenarioError, match=r"step 0: unknown op 'fly'"):
        encode_scenario(dict(EXAMPLE, steps=[{"op": "fly"}]))


def test_the_worked_example_fits_in_a_url() -> None:
    assert len("/play?s=" + encode_scenario(EXAMPLE)) < MAX_URL_BYTES == 8192


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("2.abcd", "unknown codec version '2'"),
        ("abcd", "unknown codec version"),
        ("", "unknown codec version"),
        ("1.ab+c", "not valid base64url"),
        ("1.ab/c", "not valid base64url"),
        ("1.abc=", "not valid base64url"),
        ("1.ab c", "not valid base64url"),
        ("1.a", "not valid base64url"),
        ("1.é", "not valid base64url"),
        ("1.", "not valid DEFLATE"),
        ("1.AAAAAAAA", "not valid DEFLATE"),
        (code_of(b"\xff\xff\xff\xff"), "not valid DEFLATE"),
        (code_of(deflate(b"{}")[:-1]), "not valid DEFLATE data (the stream is cut short)"),
        (code_of(deflate(b"{}") + b"junk"), "not valid DEFLATE data (bytes follow the end of the stream)"),
        (code_of(deflate(b"{not json")), "not valid JSON (line 1, column 2)"),
        (code_of(deflate(b'{"a": NaN}')), "not valid JSON"),
        (code_of(deflate(b"\xff{}")), "not valid UTF-8"),
        (code_of(deflate(b"[1, 2]")), "the JSON is not an object"),
        (code_of(deflate(b"[" * 200_000)), "nested too deeply"),
    ],
)
def test_undecodable_codes_are_refused_with_400(code: str, expected: str) -> None:
    error = refused(code)
    assert error.status == 400
    assert expected in str(error)
    assert str(error).startswith("share code: ")


def test_a_deflate_bomb_is_refused_with_413_without_inflating_it() -> None:
    bomb = code_of(deflate(b"\0" * (50 << 20)))
    start = time.perf_counter()
    error = refused(bomb)
    assert time.perf_counter() - start < 1.0
    assert error.status == 413
    assert "inflates past 1048576 bytes" in str(error)


def test_the_1_mib_limit_is_exact() -> None:
    def padded(size: int) -> bytes:
        return b'{"a":"' + b"x" * (size - 8) + b'"}'

    assert len(padded(MAX_SCENARIO_BYTES)) == MAX_SCENARIO_BYTES
    assert decode_code(code_of(deflate(padded(MAX_SCENARIO_BYTES))))["a"] == "x" * (MAX_SCENARIO_BYTES - 8)
    assert refused(code_of(deflate(padded(MAX_SCENARIO_BYTES + 1)))).status == 413


def test_decode_does_not_validate_the_scenario() -> None:
    # Validity is parse_scenario's job (HTTP 422), not the codec's (400/413).
    assert decode_code(code_of(deflate(b'{"format":"nope"}'))) == {"format": "nope"}


# ---------------------------------------------------------------------------------------------------------
# Properties

slots = st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=4)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Valid scenarios: slots laid out with gaps, accesses inside them, dirty logs only when logged."""
    memslots: list[dict[str, Any]] = []
    base = draw(st.integers(min_value=0, max_value=0x1000))
    for index, npages in enumerate(draw(slots)):
        slot: dict[str, Any] = {"id": index * 3, "base_gfn": base, "npages": npages}
        if draw(st.booleans()):
            slot["host_page"] = draw(st.sampled_from(["4K", "2M", "1G"]))
        if draw(st.booleans()):
            slot["base_pfn"] = hex(draw(st.integers(min_value=0, max_value=1 << 30)))
        memslots.append(slot)
        base += npages + draw(st.integers(min_value=0, max_value=64))
    vcpus = draw(st.integers(min_value=1, max_value=8))
    steps: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        slot = draw(st.sampled_from(memslots))
        kind = draw(st.sampled_from(["access", "log", "plain", "note"]))
        if kind == "access":
            offset = draw(st.integers(min_value=0, max_value=slot["npages"] - 1))
            step: dict[str, Any] = {
                "op": draw(st.sampled_from(["read", "write"])),
                "gfn": slot["base_gfn"] + offset,
            }
            if draw(st.booleans()):
                step["count"] = draw(st.integers(min_value=1, max_value=slot["npages"] - offset))
            step["vcpu"] = draw(st.integers(min_value=0, max_value=vcpus - 1))
            steps.append(step)
        elif kind == "log":
            steps += [
                {"op": "enable_dirty_log", "slot": slot["id"]},
                {"op": "get_dirty_log", "slot": slot["id"]},
            ]
        elif kind == "plain":
            steps.append({"op": draw(st.sampled_from(["flush_tlb", "zap_all", "disable_dirty_log"]))})
            if steps[-1]["op"] == "disable_dirty_log":
                steps[-1]["slot"] = slot["id"]
        else:
            steps.append({"op": "note", "text": draw(st.text(max_size=40))})
    return {
        "format": "sptelab-scenario",
        "version": 1,
        "title": draw(st.text(max_size=30)),
        "vm": {"vcpus": vcpus, "max_page_level": draw(st.sampled_from(["4K", "2M", "1G"]))},
        "memslots": memslots,
        "steps": steps,
    }


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_any_scenario_round_trips_through_its_code(raw: dict[str, Any]) -> None:
    scenario = parse_scenario(raw)
    code = encode_scenario(raw)
    assert code.startswith("1.")
    assert parse_scenario(decode_code(code)) == scenario
    assert encode_scenario(decode_code(code)) == code


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet="1.ABCDEFabcdef0123456789-_=", max_size=80))
def test_any_text_decodes_or_is_refused_with_a_codec_error(code: str) -> None:
    try:
        decoded = decode_code(code)
    except CodecError as error:
        assert error.status in (400, 413)
        assert "\n" not in str(error)
    else:
        assert isinstance(decoded, dict)
