"""The server's plain modules: positions and edits (UTF-16/UTF-8/UTF-32, CRLF), settings parsing and fallback."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lsp_server.completer import fimtune_language
from lsp_server.documents import Document, PositionError, line_starts, utf8_offset
from lsp_server.settings import Settings, parse_settings, settings_section

TEXT = "a = '😀中'\r\nb = 2\rc = 3\nd\u2028e = 4\x0c\n"


def test_positions_in_each_encoding() -> None:
    # Line breaks are \r\n, \r and \n only: U+2028 and form feed stay inside their lines (unlike splitlines).
    utf16 = Document("file:///t.py", TEXT, encoding="utf-16")
    assert utf16.line_count == 5
    emoji_end = TEXT.index("中")
    assert utf16.offset(0, 7) == emoji_end  # a = '  is 5 units, the emoji 2 more
    assert Document("file:///t.py", TEXT, encoding="utf-8").offset(0, 9) == emoji_end  # the emoji is 4 bytes
    assert Document("file:///t.py", TEXT, encoding="utf-32").offset(0, 6) == emoji_end
    assert utf16.offset(1, 0) == TEXT.index("b = 2")
    assert utf16.offset(2, 0) == TEXT.index("c = 3")
    assert utf16.offset(3, 2) == TEXT.index("e = 4")  # U+2028 is one unit of line 3
    # Past the end of a line: the end of that line (before its \r\n); past the last line: an error.
    assert utf16.offset(0, 99) == TEXT.index("\r\n")
    assert utf16.offset(4, 0) == len(TEXT)
    with pytest.raises(PositionError, match="outside the document"):
        utf16.offset(5, 0)
    with pytest.raises(PositionError):
        utf16.offset(-1, 0)
    # A column inside the emoji's surrogate pair moves to the end of the character.
    assert utf16.offset(0, 6) == emoji_end
    assert utf8_offset(TEXT, emoji_end) == len(TEXT[:emoji_end].encode("utf-8"))
    assert utf8_offset("a\ud800b", 2) == 4  # a lone surrogate (as an editor may hold) is 3 bytes


def test_an_edit_ending_past_the_last_line_ends_at_the_document_end() -> None:
    """Neovim deletes the last line of a file without a final newline (`dd`, noeol) with a range ending at the line
    after it: the document's end, not an error that leaves the server's copy out of sync."""
    doc = Document("file:///n.py", "import os\nx = 1", encoding="utf-16")
    doc.apply("", (1, 0), (2, 0))
    assert doc.text == "import os\n"
    doc.apply("\ny", (0, 9), (0, 9))
    assert doc.text == "import os\ny\n" and doc.line_count == 3
    doc.apply("z", (7, 3), (9, 0))  # a range wholly past the end appends
    assert doc.text == "import os\ny\nz"
    with pytest.raises(PositionError, match="outside the document"):
        doc.offset(5, 0)  # a request's position past the end is still an error


def test_crlf_detection() -> None:
    assert Document("file:///a", "x\r\ny\r\n").crlf
    assert not Document("file:///a", "x\ny\r\n").crlf
    assert not Document("file:///a", "no breaks").crlf


def _reference_offset(text: str, line: int, units: int) -> int:
    starts = [0, *(int(s) for s in line_starts(text))]
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    body = text[start:end].removesuffix("\n").removesuffix("\r")
    count = 0
    for i, ch in enumerate(body):
        if count >= units:
            return start + i
        count += 2 if ord(ch) > 0xFFFF else 1
    return start + len(body)


def test_random_edits_keep_line_starts_exact() -> None:
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "\r", "\r\n", "é", "😀", "中"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        doc = Document("file:///r.py", text, encoding="utf-16")
        for _ in range(6):
            lines = doc.line_count
            start = (rng.randrange(lines), rng.randint(0, 6))
            end = (rng.randrange(start[0], lines), rng.randint(0, 6))
            if end[0] == start[0] and end[1] < start[1]:
                start, end = end, start
            a = _reference_offset(doc.text, *start)
            b = _reference_offset(doc.text, *end)
            new = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
            expected = doc.text[:a] + new + doc.text[b:]
            doc.apply(new, start, end)
            assert doc.text == expected
            full = np.concatenate([np.zeros(1, dtype=np.int64), line_starts(doc.text)])
            assert doc._starts.tolist() == full.tolist()
        doc.apply("whole\r\nnew")
        assert doc.text == "whole\r\nnew" and doc.line_count == 2


def test_settings_parse_camel_case_and_keep_what_is_not_given() -> None:
    base = Settings(engine="fixed", run="/runs/a", given=frozenset({"engine", "run"}))
    s, warnings = parse_settings(
        {"maxTokens": 32, "context": {"maxChars": 100}, "telemetry": {"includeText": True}, "logLevel": "debug"},
        base,
    )
    assert warnings == []
    assert (s.engine, s.run, s.max_tokens, s.context.max_chars, s.context.enabled) == (
        "fixed",
        "/runs/a",
        32,
        100,
        True,
    )
    assert s.telemetry.include_text and s.log_level == "debug"
    assert {"maxTokens", "context.maxChars", "engine"} <= s.given


def test_bad_settings_fall_back_with_a_warning_naming_them() -> None:
    s, warnings = parse_settings(
        {
            "engine": "gpt",
            "maxTokens": True,
            "debounceMs": -1,
            "device": "tpu",
            "context": "on",
            "languages": {"python": "yes"},
            "fixed": {"delayMs": "slow", "colour": 1},
            "unknownKey": 1,
        }
    )
    assert s == Settings(given=s.given) and s.given == frozenset()
    joined = "\n".join(warnings)
    for name in ("'engine'", "'maxTokens'", "'debounceMs'", "'device'", "'context'", "'languages'"):
        assert name in joined
    assert "'fixed.delayMs'" in joined and "'fixed.colour'" in joined and "'unknownKey'" in joined
    assert parse_settings("not an object")[1]


def test_run_folder_decides_the_base_model_unless_named() -> None:
    s, _ = parse_settings({"run": "/runs/x"})
    assert s.engine_settings().base_model == ""  # from the run's fimtune.json
    s, _ = parse_settings({"run": "/runs/x", "baseModel": "/models/base"})
    assert s.engine_settings().base_model == "/models/base"
    s, _ = parse_settings({"fixed": {"delayMs": 250, "text": "t"}})
    es = s.engine_settings()
    assert (es.fixed_delay_s, es.fixed_text, es.timeout_s) == (0.25, "t", 5.0)


def test_languages_and_sections() -> None:
    s, _ = parse_settings({"languages": {"python": False}})
    assert not s.language_enabled("python") and s.language_enabled("go")
    s, _ = parse_settings({"languages": {"*": False, "go": True}})
    assert s.language_enabled("go") and not s.language_enabled("rust")
    assert settings_section({"fimtune": {"a": 1}, "other": 2}) == {"a": 1}
    assert settings_section({"maxTokens": 3}) == {"maxTokens": 3}
    assert fimtune_language("typescriptreact", "/x/a.tsx") == "tsx"
    assert fimtune_language("plaintext", "/x/a.rs") == "rust"
    assert fimtune_language("ruby", "/x/a.rb") == "ruby"


# ---- the workspace index and files changed on disk -----------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_files_changed_on_disk_follow_the_walk_rules(tmp_path: Path) -> None:
    from fimtune.config import ContextConfig
    from lsp_server.workspace import WorkspaceIndex

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def alpha():\n    return 1\n")
    (tmp_path / "pkg" / "b.py").write_text("def beta():\n    return 2\n")
    (tmp_path / "main.py").write_text("print(1)\n")
    index = WorkspaceIndex(ContextConfig())
    try:
        index.set_roots([str(tmp_path)])
        _wait(lambda: bool(index.stats()["ready"]))
        folder = index._folder_of(str(tmp_path / "main.py"))
        assert folder.index.paths == ["main.py", "pkg/a.py", "pkg/b.py"]

        # An npm install: thousands of events that cannot concern the index are dropped at once, not queued.
        for i in range(5000):
            index.on_disk(str(tmp_path / "node_modules" / "m" / f"f{i}.js"))
            index.on_disk(str(tmp_path / f"notes{i}.txt"))
        assert index.stats()["pending"] == 0

        # A new file is read with the walk's rules; one a .gitignore names is not.
        (tmp_path / ".gitignore").write_text("secret.py\n")
        (tmp_path / "secret.py").write_text("TOKEN = 1\n")
        (tmp_path / "new.py").write_text("def gamma():\n    return 3\n")
        index.on_disk(str(tmp_path / "secret.py"))
        index.on_disk(str(tmp_path / "pkg" / ".." / "new.py"))  # normalised, not "pkg/../new.py"
        index.on_disk(str(tmp_path.parent / "outside.py"))  # not in the folder: ignored
        _wait(lambda: "new.py" in folder.index)
        _wait(lambda: index.stats()["pending"] == 0)
        assert folder.index.paths == ["main.py", "new.py", "pkg/a.py", "pkg/b.py"]

        # A deleted folder is one event for the folder: every file under it leaves the index.
        for name in ("a.py", "b.py"):
            (tmp_path / "pkg" / name).unlink()
        (tmp_path / "pkg").rmdir()
        index.on_disk(str(tmp_path / "pkg"), deleted=True)
        _wait(lambda: folder.index.paths == ["main.py", "new.py"])

        # An open document's live text wins over the disk.
        index.opened(str(tmp_path / "main.py"), "python", "def live():\n    return 4\n")
        (tmp_path / "main.py").unlink()
        index.on_disk(str(tmp_path / "main.py"), deleted=True)
        time.sleep(0.2)
        assert "main.py" in folder.index
    finally:
        index.close()


def test_a_pathological_ignore_pattern_does_not_stall_the_workspace_index(tmp_path: Path) -> None:
    from fimtune.config import ContextConfig
    from lsp_server.workspace import WorkspaceIndex
    from tests.test_walk import _pathological_repo

    _pathological_repo(tmp_path)
    index = WorkspaceIndex(ContextConfig())
    try:
        start = time.monotonic()
        index.set_roots([str(tmp_path)])
        _wait(lambda: bool(index.stats()["ready"]), timeout=5.0)  # a backtracking matcher takes hours here
        assert time.monotonic() - start < 5.0
        assert sorted(index._folder_of(str(tmp_path / "x.py")).index.paths) == sorted(
            "a" * n + ".py" for n in range(40, 61, 4)
        )
    finally:
        index.close()
