"""The shareable URL code of contract §6: a scenario packed into `?s=1.…`.

The code is the canonical scenario JSON (sorted keys, no spaces, UTF-8), raw DEFLATE at level 9, in
base64url without padding, behind the codec version `1.`. Encoding the canonical form, defaults filled in,
makes the code a function of what the scenario means: two spellings of one scenario share one URL.

Decoding trusts nothing: the code comes from whoever wrote the link. It is inflated only up to the
scenario size limit, so a small code cannot make the server inflate gigabytes. Encoding refuses a scenario
whose canonical text is over that limit (a valid scenario file of 1 MiB can double once its defaults are
filled in), so that every code this module makes, it also decodes. Pure: no I/O.
"""

import base64
import json
import re
import zlib
from collections.abc import Mapping

from engine.scenario import MAX_SCENARIO_BYTES, Scenario, ScenarioError, loads_json, parse_scenario

# The longest URL the app serves (HTTP 414 beyond it); a code must fit inside one with room for the path.
MAX_URL_BYTES = 8192

CODEC_VERSION = "1"
_PREFIX = CODEC_VERSION + "."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class CodecError(ValueError):
    """A share code that cannot be decoded, or a scenario too large for one; `status` is the HTTP status
    the app answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def encode_scenario(scenario: Scenario | Mapping[str, object]) -> str:
    """The share code of a scenario; a mapping is checked first, so only valid scenarios get a code.

    Raise ScenarioError for a mapping that is not a valid scenario, and CodecError (413) for one whose
    canonical text is over MAX_SCENARIO_BYTES: decode_code would refuse its code.
    """
    if not isinstance(scenario, Scenario):
        scenario = parse_scenario(scenario)
    text = json.dumps(scenario.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    data = text.encode("utf-8")
    if len(data) > MAX_SCENARIO_BYTES:
        raise CodecError(
            f"share code: the scenario is {len(data):,} bytes once its defaults are filled in, more than"
            f" the {MAX_SCENARIO_BYTES} (1 MiB) a share code may hold; use fewer steps, or fold runs of"
            " accesses into one step with count and stride",
            413,
        )
    compressor = zlib.compressobj(level=9, wbits=-15)
    packed = compressor.compress(data) + compressor.flush()
    return _PREFIX + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_code(code: str) -> dict[str, object]:
    """The JSON object a share code holds; it is not yet checked as a scenario (parse_scenario does that).

    Raise CodecError: status 400 for an unknown codec version, bad base64url, bad DEFLATE or bad JSON,
    413 for a code that inflates past MAX_SCENARIO_BYTES.
    """
    version, dot, payload = code.partition(".")
    if not dot or version != CODEC_VERSION:
        raise CodecError(f"share code: unknown codec version {version[:16]!r} (this program reads '1.')")
    # Check the alphabet first: the base64 module would otherwise skip stray characters silently.
    if not _BASE64URL.fullmatch(payload) or len(payload) % 4 == 1:
        raise CodecError("share code: not valid base64url")
    packed = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))

    inflater = zlib.decompressobj(wbits=-15)
    try:
        # One byte past the limit is enough to know the limit is passed; inflate no further.
        text = inflater.decompress(packed, MAX_SCENARIO_BYTES + 1)
    except zlib.error:
        raise CodecError("share code: not valid DEFLATE data") from None
    if len(text) > MAX_SCENARIO_BYTES:
        raise CodecError(f"share code: the scenario inflates past {MAX_SCENARIO_BYTES} bytes (1 MiB)", 413)
    if not inflater.eof:
        raise CodecError("share code: not valid DEFLATE data (the stream is cut short)")
    if inflater.unused_data:
        raise CodecError("share code: not valid DEFLATE data (bytes follow the end of the stream)")

    try:
        value = loads_json(text)
    except ScenarioError as error:
        raise CodecError(f"share code: {str(error).removeprefix('scenario: ')}") from None
    if not isinstance(value, dict):
        raise CodecError("share code: the JSON is not an object")
    return value


__all__ = ["MAX_URL_BYTES", "CodecError", "decode_code", "encode_scenario"]
