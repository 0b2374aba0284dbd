"""Retrieval for a cursor: the definitions of what the file imports (names used near the cursor first), then the
windows of other files most similar to the code just before it, within the context budget."""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

from fimtune.config import ContextConfig, check
from fimtune.context.files import TOKEN_RE, Definition, FileIndex, imports_of, line_starts, tokenize
from fimtune.context.imports import RESOLVERS, Paths, imported_names
from fimtune.context.store import WindowStore
from fimtune.records import Snippet

# Names used within this many times cfg.query_lines lines before the cursor rank a definition above the rest.
_AROUND_LINES = 5
# A similar window is not worth showing in fewer characters than this (it is cut to whole lines to fit).
_MIN_WINDOW_CHARS = 120


@dataclass(slots=True)
class _Entry:
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[str, ...]
    wids: list[int]
    tids: array[int]  # the tokens its windows hold (what dropping them touches)
    named: frozenset[str]  # the last name of each import specifier (imported by name: "x" of "a.b.x")


@dataclass(slots=True)
class _Imported:
    """The definitions of the files one file imports, in import order then file order, with what ranking them
    for a cursor needs: positions by name, which are methods, sizes, and for an exact early stop the smallest
    size of the non-method definitions from each position on."""

    defs: list[Definition]
    by_name: dict[str, list[int]]
    method: list[bool]
    sizes: list[int]
    tail_min: list[int]  # min size of the non-method definitions at positions >= i (len(defs) + 1 entries)
    flat: list[str | None]  # each one's text with white space squashed, made when first needed

    @classmethod
    def of(cls, definitions: list[Definition]) -> _Imported:
        by_name: dict[str, list[int]] = {}
        for i, d in enumerate(definitions):
            by_name.setdefault(d.name, []).append(i)
        method = [d.kind == "method" for d in definitions]
        sizes = [len(d.text) for d in definitions]
        tail_min = [sys.maxsize] * (len(definitions) + 1)
        for i in range(len(definitions) - 1, -1, -1):
            tail_min[i] = tail_min[i + 1] if method[i] else min(tail_min[i + 1], sizes[i])
        return cls(definitions, by_name, method, sizes, tail_min, [None] * len(definitions))

    def squashed(self, i: int) -> str:
        flat = self.flat[i]
        if flat is None:
            flat = self.flat[i] = _squash(self.defs[i].text)
        return flat


# The lines around a cursor that retrieval reads are cut to this many characters as well: a 5 MB minified line
# is one line, and tokenizing it on every request froze the server.
LINES_MAX_CHARS = 16_384


def _tail_lines(text: str, n: int) -> str:
    """The last n lines of text (at most LINES_MAX_CHARS characters)."""
    floor = max(0, len(text) - LINES_MAX_CHARS)
    pos = len(text)
    for _ in range(n):
        pos = text.rfind("\n", floor, pos)
        if pos < 0:
            return text[floor:]
    return text[pos + 1 :]


def _head_lines(text: str, n: int) -> str:
    """The first n lines of text (at most LINES_MAX_CHARS characters)."""
    ceiling = min(len(text), LINES_MAX_CHARS)
    pos = -1
    for _ in range(n):
        pos = text.find("\n", pos + 1, ceiling)
        if pos < 0:
            return text[:ceiling]
    return text[:pos]


def _fit_lines(text: str, budget: int, min_lines: int = 3) -> str:
    """The first whole lines of `text` that fit in `budget` characters; "" when fewer than `min_lines` fit."""
    lines = text.split("\n")
    size, count = -1, 0
    for line in lines:
        if size + 1 + len(line) > budget:
            break
        size += 1 + len(line)
        count += 1
    if count < min(min_lines, len(lines)):
        return ""
    return "\n".join(lines[:count])


def query_tokens(prefix: str, suffix: str, query_lines: int) -> tuple[set[str], set[str]]:
    """The tokens of a cursor's query (its last `query_lines` lines) and those around it (the query, the
    _AROUND_LINES times as many lines before the cursor, and the first `query_lines` lines after it)."""
    before = _tail_lines(prefix, _AROUND_LINES * query_lines)
    query = _tail_lines(before, query_lines)
    near = set(tokenize(query))
    # The lines before the query lines start after a newline: no token spans the cut.
    around = near.union(tokenize(before[: len(before) - len(query)]), tokenize(_head_lines(suffix, query_lines)))
    return near, around


class _LineTokens:
    """A text's line starts and the tokens of each line: `query_tokens` for many cursors in one text. No token
    spans a newline, so the tokens of a run of lines are those of its lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = line_starts(text)  # line i is text[starts[i]:starts[i + 1] - 1]; one entry per line, then one
        self.lines = [TOKEN_RE.findall(line) for line in text.split("\n")]

    def query_tokens(self, end: int, start: int, query_lines: int) -> tuple[set[str], set[str]] | None:
        """`query_tokens(text[:end], text[start:], query_lines)`; None where a cut of LINES_MAX_CHARS falls inside
        a line (the caller computes those few from the text)."""
        text, starts, n_lines = self.text, self.starts, len(self.lines)
        at = bisect_right(starts, end) - 1  # the line the prefix ends in
        first = max(0, at - _AROUND_LINES * query_lines + 1)  # the first line of `before`
        if end - starts[first] > LINES_MAX_CHARS:
            return None  # _tail_lines cuts inside a line
        near = set(TOKEN_RE.findall(text, starts[at], end))
        query_first = max(first, at - query_lines + 1)
        near.update(*self.lines[query_first:at])
        around = near.union(*self.lines[first:query_first])
        # The suffix: the rest of its first line, then whole lines, query_lines lines in all.
        line = bisect_right(starts, start) - 1
        last = min(line + query_lines, n_lines)  # lines line..last-1
        if starts[last] - 1 - start > LINES_MAX_CHARS:
            return None  # _head_lines cuts inside a line
        around.update(TOKEN_RE.findall(text, start, starts[line + 1] - 1), *self.lines[line + 1 : last])
        return near, around


def _squash(text: str) -> str:
    return " ".join(text.split())


def _tiers(
    imp: _Imported, near: set[str], around: set[str], named: frozenset[str]
) -> tuple[list[int], list[int], set[int]]:
    """Positions of tier 2 (the name is used in the query lines just before the cursor) and tier 1 (imported by
    name, or used in the lines around the cursor; methods only count when used near the cursor, their signatures
    are in their class's stub otherwise), each in position order, and the set of both (tier 0 is the rest)."""
    by_name = imp.by_name
    top = sorted(i for name in near if name in by_name for i in by_name[name])
    mid = sorted(i for name in (named | around) - near if name in by_name for i in by_name[name] if not imp.method[i])
    return top, mid, {*top, *mid}


class RepoIndex:
    """Definitions, imports and BM25 windows of one repository; updated one file at a time."""

    def __init__(self, cfg: ContextConfig) -> None:
        check(cfg, "context")  # the server builds one from its own settings, without a CorpusConfig
        self.cfg = cfg
        self._files: dict[str, _Entry] = {}
        self._paths = Paths()
        self._resolved: dict[str, tuple[str, ...]] = {}
        self._imported: dict[str, _Imported] = {}  # per file; any update can change it, so any update clears it
        self.store = WindowStore(cfg.window_lines, cfg.max_postings)

    @classmethod
    def build(cls, files: Iterable[FileIndex], cfg: ContextConfig) -> RepoIndex:
        index = cls(cfg)
        for fi in files:
            index.update(fi)
        return index

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return path in self._files

    @property
    def paths(self) -> list[str]:
        return sorted(self._files)

    def definitions(self, path: str) -> tuple[Definition, ...]:
        entry = self._files.get(path)
        return entry.definitions if entry else ()

    # ---- updates -------------------------------------------------------------------------------------------

    def update(self, fi: FileIndex) -> None:
        """Add a file or replace its entries; nothing of any other file is touched."""
        self._imported.clear()
        if fi.path in self._files:
            self._drop(fi.path)
            self._resolved.pop(fi.path, None)
        else:
            self._paths.add(fi.path)
            self._resolved.clear()  # a new path can change how other files' imports resolve
        wids, tids = self.store.add(fi.path, fi.windows, fi.postings, fi.lines)
        self._files[fi.path] = _Entry(fi.language, fi.definitions, fi.imports, wids, tids, imported_names(fi.imports))

    def remove(self, path: str) -> None:
        """Forget a file (no-op when it is not indexed)."""
        if path not in self._files:
            return
        self._imported.clear()
        self._drop(path)
        del self._files[path]
        self._paths.discard(path)
        self._resolved.clear()

    def _drop(self, path: str) -> None:
        entry = self._files[path]
        self.store.drop(entry.wids, entry.tids)
        entry.wids, entry.tids = [], array("i")

    # ---- imports -------------------------------------------------------------------------------------------

    def resolve_imports(self, path: str) -> list[str]:
        """Repository paths the file imports, in the order of its imports (the file itself excluded)."""
        entry = self._files.get(path)
        if entry is None:
            return []
        cached = self._resolved.get(path)
        if cached is None:
            cached = self._resolved[path] = tuple(self._resolve(path, entry.language, entry.imports))
        return list(cached)

    def _resolve(self, path: str, language: str, specs: Iterable[str]) -> list[str]:
        resolve = RESOLVERS.get(language)
        if resolve is None:
            return []
        out: list[str] = []
        for spec in specs:
            for target in resolve(self._paths, path, spec):
                if target != path and target not in out:
                    out.append(target)
        return out

    # ---- retrieval -----------------------------------------------------------------------------------------

    def retrieve(self, path: str, language: str, prefix: str, suffix: str = "") -> tuple[Snippet, ...]:
        """Context for a cursor in `path`: imported definitions and similar windows of other files.

        Most relevant first; at most cfg.max_snippets snippets of cfg.max_chars characters in all; never a
        snippet of `path` itself; no two overlapping windows.
        """
        near, around = query_tokens(prefix, suffix, self.cfg.query_lines)
        return self._retrieve(path, language, prefix, suffix, near, around)

    def retrieve_many(
        self, path: str, language: str, text: str, cursors: Iterable[tuple[int, int]]
    ) -> list[tuple[Snippet, ...]]:
        """`retrieve` for many cursors in one text (the corpus build's middles of a file): for each (end of the
        prefix, start of the suffix), as character offsets, exactly what `retrieve(path, language,
        text[:end], text[start:])` gives, with each line of the text tokenized once, not once per cursor."""
        lines = _LineTokens(text)
        query_lines = self.cfg.query_lines
        out = []
        for end, start in cursors:
            prefix, suffix = text[:end], text[start:]
            found = lines.query_tokens(end, start, query_lines)
            near, around = found if found is not None else query_tokens(prefix, suffix, query_lines)
            out.append(self._retrieve(path, language, prefix, suffix, near, around))
        return out

    def _retrieve(
        self, path: str, language: str, prefix: str, suffix: str, near: set[str], around: set[str]
    ) -> tuple[Snippet, ...]:
        cfg = self.cfg
        imp, named = self._imported_for(path, language, prefix, suffix)
        top, mid, skip = _tiers(imp, near, around, named)
        chosen: list[tuple[int, Definition]] = []
        chosen_at: set[int] = set()
        taken: list[str] = []
        used = 0

        def take_definitions(budget: int, max_count: int) -> None:
            """In rank order: tier 2 (named in the query lines), tier 1 (imported by name or used around the
            cursor; no methods), tier 0 (the other non-methods, in order). Ends once no definition left can fit."""
            nonlocal used
            ranked = chain(
                ((2, i) for i in top), ((1, i) for i in mid), ((0, i) for i in range(len(imp.defs)) if i not in skip)
            )
            for tier, i in ranked:
                if len(chosen) >= max_count or used >= budget:
                    break
                if tier == 0 and budget - used < imp.tail_min[i]:
                    break  # every tier-0 definition from here on is larger than what is left
                if (tier == 0 and imp.method[i]) or used + imp.sizes[i] > budget or i in chosen_at:
                    continue
                flat = imp.squashed(i)
                if any(flat in t for t in taken):
                    continue  # e.g. a method already shown in its class
                chosen.append((tier, imp.defs[i]))
                chosen_at.add(i)
                taken.append(flat)
                used += imp.sizes[i]

        share = cfg.definitions_share
        take_definitions(int(cfg.max_chars * share), math.ceil(cfg.max_snippets * share))
        windows = self._similar(path, near, cfg.max_chars - used, cfg.max_snippets - len(chosen), taken)
        used += sum(len(w.text) for w in windows)
        take_definitions(cfg.max_chars, cfg.max_snippets - len(windows))  # what the windows left over

        mentioned = [Snippet(d.path, d.text, "definition") for tier, d in chosen if tier > 0]
        others = [Snippet(d.path, d.text, "definition") for tier, d in chosen if tier == 0]
        return (*mentioned, *windows, *others)

    def _imported_for(self, path: str, language: str, prefix: str, suffix: str) -> tuple[_Imported, frozenset[str]]:
        """The definitions `path` imports (cached per indexed file) and the names it imports by name."""
        entry = self._files.get(path)
        if entry is None:  # a file the index has not seen (a new buffer): its imports come from the live text
            specs = imports_of(language, prefix + suffix)
            targets = self._resolve(path, language, specs)
            return _Imported.of([d for t in targets for d in self._files[t].definitions]), imported_names(specs)
        imp = self._imported.get(path)
        if imp is None:
            targets = self.resolve_imports(path)
            imp = self._imported[path] = _Imported.of([d for t in targets for d in self._files[t].definitions])
        return imp, entry.named

    def _similar(self, path: str, tokens: set[str], budget: int, max_count: int, taken: list[str]) -> list[Snippet]:
        if budget <= 0 or max_count <= 0:
            return []
        entry = self._files.get(path)
        out: list[Snippet] = []
        spans: dict[str, list[tuple[int, int]]] = {}
        seen_text = set(taken)
        for wid in self.store.best(tokens, entry.wids if entry else [], 8 * max_count + 32):
            if len(out) >= max_count or budget < _MIN_WINDOW_CHARS:
                break
            wpath, line, text = self.store.window(wid)
            if len(text) > budget:
                text = _fit_lines(text, budget)
                if not text:
                    continue
            end = line + text.count("\n") + 1
            if any(line < e and s < end for s, e in spans.get(wpath, ())):
                continue
            flat = _squash(text)
            if flat in seen_text:
                continue
            seen_text.add(flat)
            spans.setdefault(wpath, []).append((line, end))
            out.append(Snippet(wpath, text, "similar"))
            budget -= len(text)
        return out
