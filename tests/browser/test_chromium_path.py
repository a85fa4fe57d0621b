"""Which Chromium the browser tests drive: Debian's by default, another through SPTELAB_CHROMIUM."""

from pathlib import Path

from .conftest import CHROMIUM_ENV, chromium_path


def test_debian_chromium_by_default() -> None:
    assert chromium_path({}) == Path("/usr/bin/chromium")
    assert chromium_path({CHROMIUM_ENV: ""}) == Path("/usr/bin/chromium")


def test_sptelab_chromium_names_another() -> None:
    assert CHROMIUM_ENV == "SPTELAB_CHROMIUM"
    assert chromium_path({CHROMIUM_ENV: "/opt/chromium/chrome"}) == Path("/opt/chromium/chrome")
