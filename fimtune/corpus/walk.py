"""Walking a repository: which files are candidates to read, and a named reason for every one that is not."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from fimtune.config import WalkConfig
from fimtune.languages import language_for_path

log = logging.getLogger(__name__)

# Reasons the walk gives to a whole folder it does not enter (the rest name a file).
FOLDER_REASONS = frozenset({"skipped_dir", "ignored_dir", "symlink_duplicate"})


def ignore_spec(lines: list[str], source: str = "") -> GitIgnoreSpec:
    """Gitignore patterns matched by RE2 (pathspec's re2 backend): time linear in the path whatever the patterns,
    where Python's backtracking `re` takes exponential time on a pattern like `a*a*a*a*a*a*a*a*a*a*a*a*b`. A
    pattern RE2 cannot compile is left out with a warning naming it and `source`."""
    try:
        return GitIgnoreSpec.from_lines(lines, backend="re2")
    except Exception:  # re2.error is not importable by name from every build; find the offending lines
        kept = []
        for line in lines:
            try:
                GitIgnoreSpec.from_lines([line], backend="re2")
            except Exception:
                log.warning("%s: ignore pattern %r left out (not matchable in linear time)", source or "ignore", line)
                continue
            kept.append(line)
        return GitIgnoreSpec.from_lines(kept, backend="re2")


@dataclass(frozen=True, slots=True)
class WalkItem:
    """One entry of a repository: a file to read (reason None) or a file/folder skipped for a named reason."""

    path: str  # relative to the repo root, '/'-separated
    language: str | None  # the language when reason is None
    reason: str | None  # None: a candidate to read; else why it is skipped
    size: int = 0  # bytes, from stat, when known


@dataclass(slots=True)
class _Frame:
    """A folder being listed: its path relative to the root ('' or 'a/b/'), its real path, its entries."""

    rel: str
    real: str
    entries: Iterator[os.DirEntry[str]]
    n_specs: int  # how many ignore specs this folder pushed


class _Rules:
    """Compiled name rules of a WalkConfig plus the stack of ignore files in effect."""

    def __init__(self, cfg: WalkConfig, languages: Collection[str]) -> None:
        self.cfg = cfg
        self.skip_dirs = frozenset(cfg.skip_dirs)
        self.languages = frozenset(languages)
        self.by_name = [
            ("env_file", ignore_spec(cfg.env_files, "walk.env_files")),
            ("lock_file", ignore_spec(cfg.lock_files, "walk.lock_files")),
            ("generated_name", ignore_spec(cfg.generated_names, "walk.generated_names")),
        ]
        # (folder prefix relative to the root, spec); deeper entries win, as in git.
        self.ignores: list[tuple[str, GitIgnoreSpec]] = []

    def push_ignores(self, folder: str, rel: str) -> int:
        """Load the folder's ignore files (cfg.ignore_files order: later files take precedence)."""
        lines: list[str] = []
        found: list[str] = []
        for name in self.cfg.ignore_files:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    lines.extend(f.read().decode("utf-8", errors="replace").splitlines())
            except OSError:  # absent, a folder, unreadable: no rules from it
                continue
            found.append(rel + name)
        if not any(line.strip() and not line.startswith("#") for line in lines):
            return 0
        self.ignores.append((rel, ignore_spec(lines, " + ".join(found))))
        return 1

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Git semantics: the last matching pattern of the deepest ignore file that matches decides."""
        verdict = False
        for prefix, spec in self.ignores:
            sub = rel[len(prefix) :] + ("/" if is_dir else "")
            include = spec.check_file(sub).include
            if include is not None:
                verdict = include
        return verdict

    def file_reason(self, rel: str, name: str, size: int) -> tuple[str | None, str | None]:
        """(language, None) for a candidate regular file, else (None, reason)."""
        for reason, spec in self.by_name:
            if spec.match_file(name):
                return None, reason
        language = language_for_path(name)
        if language is None or (self.languages and language not in self.languages):
            return None, "unsupported_language"
        if size > self.cfg.max_file_bytes:
            return None, "too_large"
        return language, None


def _inside(root_real: str, target: str) -> bool:
    return target == root_real or target.startswith(root_real.rstrip(os.sep) + os.sep)


def _list(folder: str) -> list[os.DirEntry[str]]:
    """Entries sorted so that the walk yields paths in sorted order (a folder sorts as 'name/')."""
    with os.scandir(folder) as it:
        entries = list(it)

    def key(e: os.DirEntry[str]) -> str:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        return e.name + "/" if is_dir else e.name

    return sorted(entries, key=key)


def walk_repo(root: Path, cfg: WalkConfig, languages: Collection[str]) -> Iterator[WalkItem]:
    """Every file of `root` in sorted path order, each a candidate (reason None) or skipped with a reason.

    Pruned folders (cfg.skip_dirs, gitignored ones) yield one item each ("skipped_dir", "ignored_dir") and
    are not descended. `.gitignore` files at any depth and `.fimtuneignore` (cfg.ignore_files) are honoured
    with git semantics, also in plain folders. Symlinks: to a file inside the repository, read as that file
    under the link's path (exact dedup removes the copy); to a folder inside, skipped as "symlink_duplicate"
    (its target is walked as itself) or "symlink_loop" when it points at an ancestor; anything leaving the
    repository is "symlink_outside_repo". FIFOs, sockets and devices are never opened ("not_regular_file").
    An empty `languages` means every supported language.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    rules = _Rules(cfg, languages)
    try:
        top = _list(str(root))
    except OSError as e:
        raise NotADirectoryError(f"cannot list repository {root}: {e.strerror or e}") from None
    frames = [_Frame("", root_real, iter(top), rules.push_ignores(str(root), ""))]
    while frames:
        frame = frames[-1]
        entry = next(frame.entries, None)
        if entry is None:
            frames.pop()
            del rules.ignores[len(rules.ignores) - frame.n_specs :]
            continue
        rel = frame.rel + entry.name
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            yield WalkItem(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), None, "bad_name")
            continue
        item, descend = _classify(entry, rel, frame, root_real, rules)
        if item is not None:
            yield item
            continue
        if descend:
            try:
                listing = _list(entry.path)
            except OSError:
                yield WalkItem(rel, None, "unreadable")
                continue
            real = os.path.join(frame.real, entry.name)
            frames.append(_Frame(rel + "/", real, iter(listing), rules.push_ignores(entry.path, rel + "/")))


def classify(root: Path, rel: str, cfg: WalkConfig, languages: Collection[str] = ()) -> WalkItem:
    """What walk_repo(root) would say of the one file at `rel` ('/'-separated, inside root), without walking
    the rest: the same folder pruning, ignore files along the way, symlink and size rules. "missing" when the
    file (or a folder on its way) is not there, as after a delete; "not_inside_repo" for a path that is not a
    plain relative one ('..', '.', empty parts, absolute).

    Where walk_repo yields a pruned folder instead of its files, the item names that folder and its reason.
    """
    root = Path(root)
    parts = rel.split("/")
    if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return WalkItem(rel, None, "not_inside_repo")  # only the canonical relative paths walk_repo yields
    rules = _Rules(cfg, languages)
    rules.push_ignores(str(root), "")
    *folders, name = parts
    folder, prefix = str(root), ""
    for part in folders:
        sub = prefix + part
        folder = os.path.join(folder, part)
        if part in rules.skip_dirs:
            return WalkItem(sub, None, "skipped_dir")
        if rules.ignored(sub, is_dir=True):
            return WalkItem(sub, None, "ignored_dir")
        if os.path.islink(folder):  # walk_repo walks a linked folder's target as itself, never through the link
            return WalkItem(sub, None, "symlink_duplicate")
        prefix = sub + "/"
        rules.push_ignores(folder, prefix)
    try:
        with os.scandir(folder) as it:
            entry = next((e for e in it if e.name == name), None)
    except OSError:
        entry = None
    if entry is None:
        return WalkItem(rel, None, "missing")
    item, _descend = _classify(
        entry, rel, _Frame(prefix, os.path.realpath(folder), iter(()), 0), os.path.realpath(root), rules
    )
    return item if item is not None else WalkItem(rel, None, "not_regular_file")  # a folder


def _classify(
    entry: os.DirEntry[str], rel: str, frame: _Frame, root_real: str, rules: _Rules
) -> tuple[WalkItem | None, bool]:
    """(item to yield, False) for a file or a pruned folder; (None, True) for a folder to descend."""
    try:
        is_link = entry.is_symlink()
        st = os.stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return _file_or(rules, rel, "broken_symlink"), False
    except OSError as e:
        return _file_or(rules, rel, "symlink_loop" if e.errno == errno.ELOOP else "unreadable"), False

    if stat.S_ISDIR(st.st_mode):
        if entry.name in rules.skip_dirs:
            return WalkItem(rel, None, "skipped_dir"), False
        if rules.ignored(rel, is_dir=True):
            return WalkItem(rel, None, "ignored_dir"), False
        if not is_link:
            return None, True
        target = os.path.realpath(entry.path)
        if not _inside(root_real, target):
            return WalkItem(rel, None, "symlink_outside_repo"), False
        if _inside(target, frame.real):  # points at the folder it sits in or one above it
            return WalkItem(rel, None, "symlink_loop"), False
        return WalkItem(rel, None, "symlink_duplicate"), False

    if rules.ignored(rel, is_dir=False):
        return WalkItem(rel, None, "ignored"), False
    if is_link and not _inside(root_real, os.path.realpath(entry.path)):
        return WalkItem(rel, None, "symlink_outside_repo", st.st_size), False
    if not stat.S_ISREG(st.st_mode):
        return WalkItem(rel, None, "not_regular_file"), False
    language, reason = rules.file_reason(rel, entry.name, st.st_size)
    if reason is None and not os.access(entry.path, os.R_OK):
        return WalkItem(rel, None, "unreadable", st.st_size), False
    return WalkItem(rel, language, reason, st.st_size), False


def _file_or(rules: _Rules, rel: str, reason: str) -> WalkItem:
    """An entry that cannot be stat'ed: "ignored" when the ignore rules say so, else `reason`."""
    return WalkItem(rel, None, "ignored" if rules.ignored(rel, is_dir=False) else reason)


def read_file(root: Path, item: WalkItem, max_bytes: int | None = None) -> tuple[bytes | None, str | None]:
    """The bytes of a candidate, or (None, reason): "unreadable", "not_regular_file" or "too_large".

    The size is checked again on the open file: it must not exceed `max_bytes` (pass cfg.max_file_bytes),
    or, when that is not given, the size walk_repo saw. The file is opened non-blocking, so a path that
    became a FIFO meanwhile cannot hang the build.
    """
    if item.reason is not None:
        return None, item.reason
    limit = item.size if max_bytes is None else max_bytes
    try:
        fd = os.open(Path(root) / item.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None, "unreadable"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not_regular_file"
        if st.st_size > limit:
            return None, "too_large"
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError:
        return None, "unreadable"
    finally:
        os.close(fd)
    if got > limit:
        return None, "too_large"
    return b"".join(chunks), None
