"""Browser tests: real headless Chromium against a live server, reading the page through its test hooks.

A package, so that its `conftest` does not shadow the engine tests' `conftest` module.
"""
