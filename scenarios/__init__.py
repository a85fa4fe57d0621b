"""The built-in scenario library: the `scenarios/*.json` files shipped beside this module.

The same files feed the CLI (`sptelab run NAME`, `sptelab scenarios`), the web app's menu and the golden
tests, so a scenario is written once and means the same everywhere. They are package data, read through
`importlib.resources`, so an installed wheel finds them as a checkout does, without a path on disk.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable

from engine.scenario import Scenario, ScenarioError, parse_scenario

_SUFFIX = ".json"


def _library() -> dict[str, Traversable]:
    """Every built-in scenario file, by name (the file name without `.json`)."""
    found: dict[str, Traversable] = {}
    for entry in files(__name__).iterdir():
        if entry.name.endswith(_SUFFIX) and entry.is_file():
            found[entry.name.removesuffix(_SUFFIX)] = entry
    return found


def builtin_names() -> list[str]:
    """The names of the built-in scenarios, sorted."""
    return sorted(_library())


def load_builtin_text(name: str) -> str:
    """The JSON text of the built-in scenario `name`.

    Raise LookupError, naming the known scenarios, for a name that is not one of them. Only names that
    `builtin_names()` lists are looked up, so a name cannot reach outside the library ("../x").
    """
    library = _library()
    if name not in library:
        known = ", ".join(sorted(library)) or "none"
        raise LookupError(f"no built-in scenario named {name!r} (known: {known})")
    return library[name].read_text(encoding="utf-8")


def builtin_scenarios() -> list[tuple[str, Scenario]]:
    """Every built-in scenario, parsed, as (name, scenario) sorted by name.

    Raise ScenarioError naming the file if one of them does not parse.
    """
    out: list[tuple[str, Scenario]] = []
    for name in builtin_names():
        try:
            out.append((name, parse_scenario(load_builtin_text(name))))
        except ScenarioError as error:
            raise ScenarioError(f"built-in scenario {name!r}: {error}") from None
    return out


__all__ = ["builtin_names", "builtin_scenarios", "load_builtin_text"]
