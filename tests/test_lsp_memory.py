"""Memory bounded by settings, not by history: suggestions shown in a large document keep no copy of it."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stdio_client import Client


def test_shown_suggestions_keep_no_copy_of_their_document(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    client = Client({"engine": "fixed", "fixed": {"text": "return a + b"}, "debounceMs": 0}, tmp_path)
    try:
        client.wait_ready()
        block = "def function_{i}(value):\n    return value * {i}\n\n\n"
        text = "".join(block.format(i=i) for i in range(200_000))  # about 8 MB
        uri = (tmp_path / "big.py").as_uri()
        doc = {"uri": uri, "languageId": "python", "version": 1, "text": text}
        client.notify("textDocument/didOpen", {"textDocument": doc})
        lines = text.count("\n")

        def suggest(line: int) -> None:
            params = {
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": 4},
                "context": {"triggerKind": 1},
            }
            assert client.request("textDocument/inlineCompletion", params)["items"]

        suggest(2)
        before = psutil.Process(client.proc.pid).memory_info().rss
        for n in range(60):  # each suggestion at another cursor: a new prefix and suffix
            suggest(4 * ((n * 977) % (lines // 4 - 1)) + 2)  # an empty line between two functions
        grown = psutil.Process(client.proc.pid).memory_info().rss - before
        assert grown < 150 * 2**20, f"{grown / 2**20:.0f} MiB more after 60 suggestions in an 8 MB document"
    finally:
        client.close()


def test_handled_notifications_leave_nothing_behind(tmp_path: Path) -> None:
    """Each didChange is handled under a fresh id; pygls kept every such future (about 2 KB) for good."""
    client = Client({"engine": "fixed", "fixed": {"text": "x"}, "debounceMs": 0}, tmp_path)
    try:
        client.wait_ready()
        uri = (tmp_path / "typed.py").as_uri()
        doc = {"uri": uri, "languageId": "python", "version": 1, "text": ""}
        client.notify("textDocument/didOpen", {"textDocument": doc})
        for version in range(2, 502):  # 500 keystrokes
            change = {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "a"}
            client.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]},
            )
        client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        stats = client.request("fimtune/stats", None)
        assert stats["handlers_in_flight"] <= 2, stats["handlers_in_flight"]
    finally:
        client.close()


def _allocated_while(work: Callable[[], None]) -> int:
    """Bytes still allocated (by Python) after `work`, which runs twice: the first time warms caches up."""
    work()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_stage_timings_take_no_memory_as_they_fill() -> None:
    from lsp_server.completer import _Ring

    ring = _Ring(2048)
    assert _allocated_while(lambda: [ring.add(i * 0.5) for i in range(1500)]) < 1024  # the list comprehension's
    ring.add(-1.0)
    values = ring.values()
    assert len(values) == 2048 and values.count(-1.0) == 1 and max(values) == 1499 * 0.5  # the last 2048 kept
    ring.clear()
    assert ring.values() == []


def test_recent_suggestion_ids_take_no_memory_and_forget_the_oldest() -> None:
    from lsp_server.completer import _RecentIds

    recent = _RecentIds(1024)
    assert _allocated_while(lambda: [recent.add(f"s{n}", "python") for n in range(1, 1025)]) < 1024
    recent.add("s2000", "go")
    assert recent.get("s2000") == "go" and recent.get("s1024") == "python"
    assert recent.get(f"s{2000 - 1024}") is None  # its slot was taken by a newer one
    for bad in ("x1", "s", "s-1", "s1.5", "s\uff11", "", "1"):
        assert recent.get(bad) is None, bad
