"""walk_repo and read_file: ignore files with git semantics, every skip reason, order, symlinks, hostile input."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fimtune.config import WalkConfig
from fimtune.corpus import walk as walk_mod
from fimtune.corpus.walk import WalkItem, read_file, walk_repo
from tests.hostile import make_hostile_repo

CODE = "def f(x):\n    return x + 1\n"


def make(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)


def reasons(root: Path, cfg: WalkConfig | None = None, languages: tuple[str, ...] = ()) -> dict[str, str]:
    return {it.path: it.reason or "ok" for it in walk_repo(root, cfg or WalkConfig(), languages)}


def test_candidates_carry_language_and_size(tmp_path: Path) -> None:
    make(tmp_path, {"a.py": CODE, "lib/b.ts": "export const x = 1;\n", "c.go": "package c\n"})
    items = list(walk_repo(tmp_path, WalkConfig(), []))
    assert items == [
        WalkItem("a.py", "python", None, len(CODE)),
        WalkItem("c.go", "go", None, 10),
        WalkItem("lib/b.ts", "typescript", None, 20),
    ]


def test_order_is_sorted_and_deterministic(tmp_path: Path) -> None:
    make(tmp_path, {p: CODE for p in ["b.py", "a/z.py", "a.py", "a-b/c.py", "A.py", "a/b/c.py", "ab.py"]})
    first = [it.path for it in walk_repo(tmp_path, WalkConfig(), [])]
    assert first == ["A.py", "a-b/c.py", "a.py", "a/b/c.py", "a/z.py", "ab.py", "b.py"]
    assert first == sorted(first)
    assert first == [it.path for it in walk_repo(tmp_path, WalkConfig(), [])]


def test_gitignore_patterns_negation_and_directories(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "# comment\n*.py\n!main.py\nstage/\n/top.js\ncache/\n!cache/keep.py\n",
            "main.py": CODE,
            "other.py": CODE,
            "top.js": "x\n",
            "sub/top.js": "x\n",
            "sub/main.py": CODE,
            "stage/gen.js": "x\n",
            "src/stage": "x\n",  # a file named like the folder pattern is not matched by "stage/"
            "cache/keep.py": CODE,  # the folder is excluded: git cannot re-include a file inside it
        },
    )
    got = reasons(tmp_path)
    assert got["main.py"] == "ok" and got["sub/main.py"] == "ok"
    assert got["other.py"] == "ignored"
    assert got["top.js"] == "ignored" and got["sub/top.js"] == "ok"
    assert got["stage"] == "ignored_dir" and "stage/gen.js" not in got
    assert got["src/stage"] == "unsupported_language"
    assert got["cache"] == "ignored_dir" and "cache/keep.py" not in got


def test_nested_gitignore_is_relative_to_its_folder_and_overrides_parents(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.js\n",
            "pkg/.gitignore": "!keep.js\n/local.py\n",
            "pkg/keep.js": "x\n",
            "pkg/drop.js": "x\n",
            "pkg/local.py": CODE,
            "pkg/deep/local.py": CODE,
            "other/keep.js": "x\n",  # the negation in pkg/ does not reach other/
            "other/local.py": CODE,
        },
    )
    got = reasons(tmp_path)
    assert got["pkg/keep.js"] == "ok"
    assert got["pkg/drop.js"] == "ignored"
    assert got["pkg/local.py"] == "ignored"
    assert got["pkg/deep/local.py"] == "ok"
    assert got["other/keep.js"] == "ignored"
    assert got["other/local.py"] == "ok"


def test_fimtuneignore_adds_rules_and_wins_over_gitignore(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "wanted.py\n",
            ".fimtuneignore": "fixtures/\n*_test.go\n!wanted.py\n",
            "wanted.py": CODE,
            "fixtures/big.py": CODE,
            "x_test.go": "package x\n",
            "x.go": "package x\n",
        },
    )
    got = reasons(tmp_path)
    assert got["wanted.py"] == "ok"
    assert got["fixtures"] == "ignored_dir"
    assert got["x_test.go"] == "ignored"
    assert got["x.go"] == "ok"
    # Only the files named in cfg.ignore_files count.
    got = reasons(tmp_path, WalkConfig(ignore_files=[".gitignore"]))
    assert got["wanted.py"] == "ignored" and got["x_test.go"] == "ok" and got["fixtures/big.py"] == "ok"


def test_name_rules_and_languages(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".env": "A=1\n",
            ".env.local": "A=1\n",
            "prod.env": "A=1\n",
            "Cargo.lock": "x\n",
            "yarn.lock": "x\n",
            "go.sum": "x\n",
            "package-lock.json": "{}\n",
            "app.min.js": "x\n",
            "msg_pb2.py": CODE,
            "api.pb.go": "package api\n",
            "schema.generated.ts": "x\n",
            "notes.txt": "x\n",
            "Makefile": "x\n",
            "web.js": "x\n",
            "tool.py": CODE,
        },
    )
    got = reasons(tmp_path)
    for name in (".env", ".env.local", "prod.env"):
        assert got[name] == "env_file", name
    for name in ("Cargo.lock", "yarn.lock", "go.sum", "package-lock.json"):
        assert got[name] == "lock_file", name
    for name in ("app.min.js", "msg_pb2.py", "api.pb.go", "schema.generated.ts"):
        assert got[name] == "generated_name", name
    assert got["notes.txt"] == got["Makefile"] == "unsupported_language"
    assert got["web.js"] == got["tool.py"] == "ok"
    only_python = reasons(tmp_path, languages=("python",))
    assert only_python["web.js"] == "unsupported_language" and only_python["tool.py"] == "ok"


def test_skip_dirs_are_pruned_once(tmp_path: Path) -> None:
    make(tmp_path, {"node_modules/a/b.js": "x\n", ".git/hooks/x.py": CODE, "src/vendor/v.go": "x\n", "a.py": CODE})
    got = reasons(tmp_path)
    assert got == {".git": "skipped_dir", "a.py": "ok", "node_modules": "skipped_dir", "src/vendor": "skipped_dir"}
    assert reasons(tmp_path, WalkConfig(skip_dirs=[]))["node_modules/a/b.js"] == "ok"


def test_too_large_uses_stat_size(tmp_path: Path) -> None:
    make(tmp_path, {"small.py": CODE, "big.py": "x = 1\n" * 100})
    got = {it.path: it for it in walk_repo(tmp_path, WalkConfig(max_file_bytes=100), [])}
    assert got["big.py"].reason == "too_large" and got["big.py"].size == 600
    assert got["small.py"].reason is None


@pytest.mark.timeout(20)
def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    make(root, {"src/a.py": CODE, "lib/b.py": CODE})
    outside = tmp_path / "outside"
    make(outside, {"o.py": CODE})
    os.symlink("..", root / "src" / "parent")  # loops back to the root
    os.symlink(".", root / "src" / "self")
    os.symlink("../lib", root / "src" / "lib_link")  # a second path to a folder walked anyway
    os.symlink(outside, root / "out_dir")
    os.symlink(outside / "o.py", root / "out_file.py")
    os.symlink("a.py", root / "src" / "alias.py")
    os.symlink("nowhere.py", root / "src" / "broken.py")
    os.symlink("loop_b.py", root / "loop_a.py")
    os.symlink("loop_a.py", root / "loop_b.py")
    got = {it.path: it for it in walk_repo(root, WalkConfig(), [])}
    assert got["src/parent"].reason == "symlink_loop"
    assert got["src/self"].reason == "symlink_loop"
    assert got["src/lib_link"].reason == "symlink_duplicate"
    assert got["out_dir"].reason == "symlink_outside_repo"
    assert got["out_file.py"].reason == "symlink_outside_repo"
    assert got["src/broken.py"].reason == "broken_symlink"
    assert got["loop_a.py"].reason == got["loop_b.py"].reason == "symlink_loop"
    # A link to a file inside the repository is read as that file, under the link's own path.
    assert got["src/alias.py"] == WalkItem("src/alias.py", "python", None, len(CODE))
    assert read_file(root, got["src/alias.py"]) == (CODE.encode(), None)
    assert got["src/a.py"].reason is None and got["lib/b.py"].reason is None
    assert not [p for p in got if p.startswith(("src/parent/", "src/self/", "out_dir/", "src/lib_link/"))]


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    make(tmp_path / "real", {"a.py": CODE})
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert reasons(tmp_path / "link") == {"a.py": "ok"}


@pytest.mark.timeout(20)
def test_special_files_are_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock.py"))
        got = reasons(tmp_path)
    finally:
        sock.close()
    assert got == {"pipe.py": "not_regular_file", "sock.py": "not_regular_file"}


def test_unreadable_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, {"a.py": CODE, "locked/b.py": CODE, "c.py": CODE})
    real_access, real_list = os.access, walk_mod._list

    def access(path: str, mode: int) -> bool:
        return not path.endswith("a.py") and real_access(path, mode)

    def listing(folder: str) -> list[os.DirEntry[str]]:
        if folder.endswith("locked"):
            raise PermissionError(13, "Permission denied", folder)
        return real_list(folder)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(walk_mod, "_list", listing)
    assert reasons(tmp_path) == {"a.py": "unreadable", "c.py": "ok", "locked": "unreadable"}


def test_undecodable_file_name(tmp_path: Path) -> None:
    try:
        fd = os.open(os.fsencode(tmp_path) + b"/caf\xe9.py", os.O_CREAT | os.O_WRONLY)
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    os.close(fd)
    (item,) = walk_repo(tmp_path, WalkConfig(), [])
    assert item.reason == "bad_name" and item.path == "caf\ufffd.py"
    item.path.encode("utf-8")  # safe to write anywhere


def test_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="nope"):
        list(walk_repo(tmp_path / "nope", WalkConfig(), []))


def test_read_file_rechecks_the_file(tmp_path: Path) -> None:
    make(tmp_path, {"a.py": CODE, "b.py": CODE, "c.py": CODE, "d.py": CODE})
    items = {it.path: it for it in walk_repo(tmp_path, WalkConfig(), [])}
    assert read_file(tmp_path, items["a.py"]) == (CODE.encode(), None)
    # Grown since the walk: over the size walk saw, or over an explicit limit.
    (tmp_path / "b.py").write_text(CODE * 3)
    assert read_file(tmp_path, items["b.py"]) == (None, "too_large")
    assert read_file(tmp_path, items["b.py"], max_bytes=len(CODE) * 3) == ((CODE * 3).encode(), None)
    assert read_file(tmp_path, items["b.py"], max_bytes=len(CODE) * 3 - 1) == (None, "too_large")
    # Gone, or replaced by a FIFO (which must not block).
    (tmp_path / "c.py").unlink()
    assert read_file(tmp_path, items["c.py"]) == (None, "unreadable")
    (tmp_path / "d.py").unlink()
    os.mkfifo(tmp_path / "d.py")
    assert read_file(tmp_path, items["d.py"]) == (None, "not_regular_file")
    assert read_file(tmp_path, WalkItem("x.py", None, "too_large")) == (None, "too_large")


def test_empty_file_reads_as_empty_bytes(tmp_path: Path) -> None:
    (tmp_path / "e.py").write_bytes(b"")
    (item,) = walk_repo(tmp_path, WalkConfig(), [])
    assert read_file(tmp_path, item) == (b"", None)


@pytest.mark.timeout(60)
def test_hostile_repository_walk(tmp_path: Path) -> None:
    expected = make_hostile_repo(tmp_path)
    got: dict[str, str] = {}
    for item in walk_repo(tmp_path, WalkConfig(), []):
        if item.reason is None:
            data, reason = read_file(tmp_path, item)
            got[item.path] = "read" if data is not None else str(reason)
        else:
            got[item.path] = item.reason
    content_reasons = {"kept", "binary", "invalid_utf8", "minified", "generated"}
    assert set(got) == set(expected)
    for path, want in expected.items():
        assert got[path] == ("read" if want in content_reasons else want), path


def test_classify_one_file_agrees_with_the_walk(tmp_path: Path) -> None:
    """What the server asks when the editor reports a file changed on disk: the walk's verdict, for one file."""
    root = tmp_path / "repo"
    make(
        root,
        {
            ".gitignore": "*.log.py\nstage/\n",
            "pkg/.gitignore": "!keep.log.py\n/local.py\n",
            ".fimtuneignore": "fixtures/\n",
            "main.py": CODE,
            "drop.log.py": CODE,
            "pkg/keep.log.py": CODE,
            "pkg/local.py": CODE,
            "pkg/deep/local.py": CODE,
            "stage/gen.py": CODE,
            "fixtures/f.py": CODE,
            "node_modules/m/index.js": "x\n",
            "src/app.ts": "export const x = 1;\n",
            "src/notes.txt": "x\n",
            "package-lock.json": "{}\n",
            ".env": "A=1\n",
            "big.py": "x = 1\n" * 100,
        },
    )
    os.symlink("../pkg", root / "src" / "pkg_link")
    os.symlink("app.ts", root / "src" / "alias.ts")
    os.symlink(tmp_path, root / "out")
    cfg = WalkConfig(max_file_bytes=500)
    walked = {it.path: it for it in walk_repo(root, cfg, [])}
    files = [
        str(p.relative_to(root)) for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and ".git" not in p.parts
    ]
    assert len(files) > 15
    for rel in files:
        item = walk_mod.classify(root, rel, cfg)
        assert item == walked[item.path], rel  # the file's own item, or that of the folder that prunes it
        assert item.path == rel or rel.startswith(item.path + "/")
    assert walk_mod.classify(root, "pkg/deep/local.py", cfg).reason is None
    assert walk_mod.classify(root, "stage/gen.py", cfg) == WalkItem("stage", None, "ignored_dir")
    assert walk_mod.classify(root, "gone.py", cfg) == WalkItem("gone.py", None, "missing")
    assert walk_mod.classify(root, "no/such/dir.py", cfg) == WalkItem("no/such/dir.py", None, "missing")
    (tmp_path / "secret.py").write_text(CODE)  # beside the repository
    for odd in ("../secret.py", "pkg/../main.py", "./main.py", "pkg//local.py", "/etc/passwd.py", ""):
        assert walk_mod.classify(root, odd, cfg).reason == "not_inside_repo", odd


# ---- ignore patterns in linear time ------------------------------------------------------------------------

PATHOLOGICAL = "a*a*a*a*a*a*a*a*a*a*a*a*b"  # exponential for a backtracking regex on names of a's


def _pathological_repo(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text(PATHOLOGICAL + "\n")
    for n in range(40, 61, 4):
        (root / ("a" * n + ".py")).write_text("x = 1\n")  # not matched: no b
    (root / ("a" * 58 + "b")).write_text("x = 2\n")  # matched: ignored


def test_a_pathological_ignore_pattern_is_matched_in_linear_time(tmp_path: Path) -> None:
    import time

    _pathological_repo(tmp_path)
    start = time.perf_counter()
    items = list(walk_repo(tmp_path, WalkConfig(), ()))
    assert time.perf_counter() - start < 2.0  # a backtracking matcher takes hours on the 60-character names
    kept = sorted(i.path for i in items if i.reason is None)
    assert kept == sorted("a" * n + ".py" for n in range(40, 61, 4))
    assert [i.reason for i in items if i.path == "a" * 58 + "b"] == ["ignored"]


def test_an_ignore_pattern_that_cannot_be_compiled_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from fimtune.corpus.walk import ignore_spec

    # A POSIX class RE2 does not take, a range Python's re refuses too, a lone backslash git itself rejects.
    spec = ignore_spec(["*.log", "[[:alpha:]", "[z-a]", "\\"], "repo/.gitignore")
    assert spec.match_file("x.log") and not spec.match_file("x.py")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(m.startswith("repo/.gitignore: ignore pattern") for m in messages), messages
