"""Bad settings never keep the engine from starting: a generated grid of bad values for every setting, sent as
initializationOptions to the real server over stdio (the didChangeConfiguration side is in test_lsp_server.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_lsp_server import SUGGESTION


def bad_values() -> list[tuple[str, Any]]:
    """Every setting a client can send, each with values of the wrong type, out of range, empty or zero."""
    from dataclasses import fields, is_dataclass

    from lsp_server.settings import Settings, camel

    grid: list[tuple[str, Any]] = [("noSuchSetting", 1), ("context.noSuchKey", True)]

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            if f.name == "given":
                continue
            key, value = prefix + camel(f.name), getattr(obj, f.name)
            if is_dataclass(value):
                grid.append((key, "not an object"))
                walk(value, key + ".")
                continue
            wrong = [None, [], {"a": 1}, 1.5, "", 0, -1, 10**12, "x" * 5000]
            if isinstance(value, bool):
                wrong = [v for v in wrong if not isinstance(v, bool)] + ["true", 1]
            elif isinstance(value, str):
                wrong = [v for v in wrong if not isinstance(v, str)] + [True]
            grid.extend((key, v) for v in wrong)

    walk(Settings(), "")
    return grid


@pytest.mark.parametrize("which", range(9))
def test_bad_initialization_options_never_keep_the_engine_from_starting(tmp_path: Path, which: int) -> None:
    """Each run starts a server whose initializationOptions hold one bad value for every setting at once."""
    from tests.stdio_client import Client

    options: dict[str, Any] = {"engine": "fixed", "fixed": {"text": SUGGESTION}}
    for key, value in bad_values()[which::9]:
        if key in ("engine", "fixed.text", "enabled", "languages"):
            continue
        head, _, leaf = key.partition(".")
        if leaf:
            if isinstance(options.get(head), dict):
                options[head][leaf] = value
            elif head not in options:
                options[head] = {leaf: value}
        else:
            options[head] = value
    client = Client(options, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while (status := client.request("fimtune/status", None))["state"] == "loading":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["state"] == "ready", (options, status)
    finally:
        client.close()
