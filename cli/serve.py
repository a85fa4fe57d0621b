"""`sptelab serve`: the web app under its server, its settings from the environment with the flags on
top. The web app is imported only here, lazily: every other command works in a build without it."""

from __future__ import annotations

import argparse
import gc
import importlib
from collections.abc import Callable
from typing import IO, Any

from cli.common import EXIT_OK, CliError


def cmd_serve(args: argparse.Namespace, out: IO[str]) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        raise CliError(f"--port {args.port}: must be between 1 and 65535")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers {args.workers}: must be at least 1")
    # Import lazily: every other command must work in a build without the web app or its server.
    serving = _web_module("app.serving")
    settings = _serve_settings(args)
    # Each worker builds the app from the environment: the flags go there before the app is imported,
    # in this process and in every worker it starts.
    serving.export_settings(settings)
    _web_module("app.main")
    try:
        importlib.import_module("granian")
    except ModuleNotFoundError:
        raise CliError("the web app needs granian, which is not installed") from None
    # The server runs with the cyclic collector on (app.main tunes it while serving): the pause main()
    # puts around a command is for simulations, and a long-lived server would never free a cycle.
    collecting = gc.isenabled()
    gc.enable()
    try:
        serving.serve(settings)
    finally:
        if not collecting:
            gc.disable()
    return EXIT_OK


def _web_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (error.name == "app" or error.name.startswith("app.")):
            raise CliError("the web app is not installed in this build") from None
        raise CliError(f"the web app needs the module {error.name!r}, which is not installed") from None


def _serve_settings(args: argparse.Namespace) -> Any:
    """The app's settings from the environment (SPTELAB_*), with the flags given on top."""
    settings_module = _web_module("app.settings")
    validation_error = _web_module("pydantic").ValidationError
    try:
        settings_module.Settings()
    except validation_error as error:
        raise CliError(_setting_error(error, lambda name: f"SPTELAB_{name.upper()}")) from None
    # Each serving setting has its flag; None means "as the environment says".
    flags = _web_module("app.serving").SERVING_SETTINGS
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        return settings_module.Settings(**given)
    except validation_error as error:
        message = _setting_error(error, lambda name: f"--{name.replace('_', '-')} {given.get(name)}")
        raise CliError(message) from None


def _setting_error(error: Any, where: Callable[[str], str]) -> str:
    first = error.errors()[0]
    name = str(first["loc"][0]) if first.get("loc") else "settings"
    return f"{where(name)}: {str(first['msg']).removeprefix('Value error, ')}"
