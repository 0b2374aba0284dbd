"""Cross-file context: the repository index (definitions, imports, line windows) and retrieval for a cursor.

One retriever serves the corpus builder (every example) and the language server (every request), so a model
sees in training exactly the kind of context it gets live (DESIGN.md section 7).

- `index_file` is pure and runs in worker processes: tree-sitter tag queries (`queries/<lang>-tags.scm`) give the
  definitions, kept as compact stubs (signature, docstring or doc comment, for a class its members with bodies
  elided), and the import specifiers as written; the file is cut into overlapping line windows of identifier
  tokens for lexical retrieval.
- `RepoIndex` holds a repository: it resolves imports to files of the same repository (per-language rules kept
  as data in `_IMPORT_RULES`) and answers `retrieve` with the definitions of what the file imports (names used
  near the cursor first) plus the windows of other files most similar to the code just before the cursor.

Why an own BM25 inverted index and not `bm25s`: the server changes one file at a time, and an update must touch
only that file's entries. `bm25s` builds a static sparse matrix and would need a full rebuild (seconds on 100k
windows) per change. Here each token keeps its postings (window id, BM25 term weight) in growable `array`s that
numpy reads without copying; adding or removing a file edits only the postings of that file's tokens, and
document frequencies (hence idf) follow exactly. Term weights use a fixed length pivot (window_lines * 4 tokens)
instead of the live mean window length, so a posting's weight never depends on other files. A query
concatenates the postings of its tokens, rarest first, up to `max_postings` (the common tokens that are left out
weigh little in BM25), and sums them with one `bincount` over the windows they name, so a query costs what its
postings cost, not what the repository's size does. Every cut and tie is decided by content (document frequency,
token; equal scores by a hash of path and line, ranked in numpy: a repository of generated look-alike files ties
thousands of windows), never by insertion order, so an incrementally updated index and a full rebuild return
identical snippets.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import posixpath
import re
import sys
import textwrap
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import tree_sitter as ts

from fimtune.config import ConfigError, ContextConfig
from fimtune.languages import LANGUAGES, matches, parse
from fimtune.records import Snippet, SourceFile

# Identifiers and keywords (Unicode letters allowed); numbers and punctuation carry little retrieval signal.
_TOKEN_RE = re.compile(r"[^\W\d]\w*")
_FUNCTION_KINDS = frozenset({"function", "method"})
_BM25_K1 = 1.2
_BM25_B = 0.75
# BM25 normalises a window's length by a fixed pivot (window_lines * this), not by the live mean length, so
# that each posting's weight is computed once, when its file is indexed, and never changes with other files.
_TOKENS_PER_LINE = 4.0
_ELISION = "..."
# Names used within this many times cfg.query_lines lines before the cursor rank a definition above the rest.
_AROUND_LINES = 5
# A similar window is not worth showing in fewer characters than this (it is cut to whole lines to fit).
_MIN_WINDOW_CHARS = 120


@dataclass(frozen=True, slots=True)
class Definition:
    """A definition as shown to the model: a compact stub (signature and docstring; members for a class)."""

    name: str
    kind: str
    path: str
    text: str
    start_line: int = 0  # 0-based line of the definition itself (not of its doc comment)
    end_line: int = 0


@dataclass(frozen=True, slots=True)
class Window:
    """A short run of lines for lexical retrieval; `tokens` are its identifiers and keywords in order."""

    start_line: int
    text: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FileIndex:
    """Everything the repository index needs from one file; picklable, computed per file."""

    path: str
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[str, ...]  # raw import specifiers as written ("..utils", "./foo", "crate::x::y", "a/b.h")
    windows: tuple[Window, ...]


def tokenize(text: str) -> list[str]:
    """Identifier and keyword tokens of code, in order."""
    return _TOKEN_RE.findall(text)


# --------------------------------------------------------------------------------------------------------------
# Per-file indexing


@dataclass(slots=True)
class _Def:
    kind: str
    name: str
    node: ts.Node  # the whole definition (largest node of the merged matches)
    body: ts.Node | None
    doc: ts.Node | None
    parent: _Def | None = None
    members: list[_Def] = field(default_factory=list)


def _end_row(node: ts.Node) -> int:
    """Last row a node really occupies (a node that ends at column 0 ends on the row before)."""
    row = node.end_point.row
    if node.end_point.column == 0 and row > node.start_point.row:
        row -= 1
    return row


def _name_of(node: ts.Node) -> str:
    """The plain name of a name node: the last identifier of `A::foo`, `~Foo`, `operator==`."""
    text = (node.text or b"").decode("utf-8", "replace")
    found = _TOKEN_RE.findall(text)
    return found[-1] if found else text


# The tags query's matches over a file: (pattern index, capture name -> nodes). Run once, read for definitions
# and for imports (the query pass costs about as much as the parse).
_Matches = list[tuple[int, dict[str, list[ts.Node]]]]


def _collect_definitions(found: _Matches) -> list[_Def]:
    groups: dict[tuple[int, int], list[tuple[int, str, dict[str, list[ts.Node]]]]] = {}
    for pattern, caps in found:
        kinds = [c for c in caps if c.startswith("definition.")]
        if not kinds or "name" not in caps:
            continue
        name = caps["name"][0]
        groups.setdefault((name.start_byte, name.end_byte), []).append((pattern, kinds[0], caps))
    defs: list[_Def] = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda g: g[0])
        kind = group[0][1].removeprefix("definition.")
        node = max((caps[k][0] for _, k, caps in group), key=lambda n: (n.end_byte - n.start_byte, -n.start_byte))
        body = next((caps["body"][0] for _, _, caps in group if caps.get("body")), None)
        doc = next((caps["doc"][0] for _, _, caps in group if caps.get("doc")), None)
        defs.append(_Def(kind, _name_of(groups[key][0][2]["name"][0]), node, body, doc))
    # Nesting by byte ranges: a definition's parent is the smallest definition around it.
    defs.sort(key=lambda d: (d.node.start_byte, -d.node.end_byte))
    stack: list[_Def] = []
    for d in defs:
        while stack and stack[-1].node.end_byte < d.node.end_byte:
            stack.pop()
        if stack and stack[-1].node.start_byte <= d.node.start_byte:
            d.parent = stack[-1]
            stack[-1].members.append(d)
        stack.append(d)
    return defs


def _doc_comment_start(node: ts.Node, max_rows: int) -> int:
    """First row of the comments right above a definition (its doc comment), or its own first row."""
    anchor = node
    while (
        anchor.parent is not None
        and anchor.parent.parent is not None
        and anchor.parent.start_point.row == anchor.start_point.row
    ):
        anchor = anchor.parent
    row = anchor.start_point.row
    sib = anchor.prev_named_sibling
    while sib is not None and "comment" in sib.type and _end_row(sib) >= row - 1:
        before = sib.prev_named_sibling
        if before is not None and _end_row(before) == sib.start_point.row:
            break  # a trailing comment of the code before, not a doc comment
        if anchor.start_point.row - sib.start_point.row > max_rows:
            break
        row = sib.start_point.row
        sib = before
    return row


class _Stubber:
    """Builds the stub lines of definitions from the file's lines."""

    def __init__(self, lines: list[str], max_lines: int) -> None:
        self.lines = lines
        self.max_lines = max(4, max_lines)

    def rows(self, first: int, last: int) -> list[str]:
        return [line.rstrip() for line in self.lines[first : last + 1]]

    def indent_of(self, row: int) -> str:
        line = self.lines[row] if row < len(self.lines) else ""
        return line[: len(line) - len(line.lstrip())]

    def stub(self, d: _Def, nested: bool = False) -> list[str]:
        start, end = d.node.start_point.row, _end_row(d.node)
        comment_start = _doc_comment_start(d.node, self.max_lines // 2)
        out = self.rows(comment_start, start - 1)
        body = d.body
        inner = [c for c in body.named_children if c.end_byte > c.start_byte] if body is not None else []
        if body is None or not inner or start == end:
            whole = self.rows(start, end)
            if len(whole) > self.max_lines:
                whole = [*whole[: self.max_lines - 1], self.indent_of(start + 1) + _ELISION]
            return out + whole
        # A body that opens with a delimiter ("{") shares the header's last row; an indented block does not.
        opens_with_content = inner[0].start_byte == body.start_byte
        header_end = max(start, body.start_point.row - 1 if opens_with_content else body.start_point.row)
        closing_start = max(_end_row(inner[-1]) + 1, header_end + 1)
        out += self.rows(start, header_end)
        indent = self.indent_of(inner[0].start_point.row) if inner[0].start_point.row > header_end else "    "
        middle: list[str] = []
        doc = d.doc
        if doc is not None and doc.start_point.row > header_end:
            middle += self.rows(doc.start_point.row, _end_row(doc))
        if d.kind in _FUNCTION_KINDS or nested:
            middle.append(indent + _ELISION)
        else:
            middle += self._members(d, inner, indent)
        budget = self.max_lines - len(out) - (end - closing_start + 1)
        if len(middle) > budget:
            middle = [*middle[: max(budget - 1, 0)], indent + _ELISION]
        return out + middle + self.rows(closing_start, end)

    def _members(self, d: _Def, inner: list[ts.Node], indent: str) -> list[str]:
        by_range = {(m.node.start_byte, m.node.end_byte): m for m in d.members}
        doc = d.doc
        out: list[str] = []
        skipped = False
        for child in inner:
            member = by_range.get((child.start_byte, child.end_byte))
            if doc is not None and child.start_byte <= doc.start_byte and doc.end_byte <= child.end_byte:
                continue  # the docstring, already shown
            if member is not None:
                out += self.stub(member, nested=member.kind not in _FUNCTION_KINDS)
                skipped = False
            elif "comment" in child.type:
                continue
            elif _end_row(child) - child.start_point.row < 2:
                out += self.rows(child.start_point.row, _end_row(child))
                skipped = False
            elif not skipped:
                out.append(indent + _ELISION)
                skipped = True
        return out


def _definitions(source: SourceFile, found: _Matches, cfg: ContextConfig) -> tuple[Definition, ...]:
    lines = source.text.split("\n")
    stubber = _Stubber(lines, cfg.definition_max_lines)
    out: list[Definition] = []
    for d in _collect_definitions(found):
        if d.parent is not None and d.parent.kind in _FUNCTION_KINDS:
            continue  # local helpers are not importable
        kind = "method" if d.kind == "function" and d.parent is not None else d.kind
        text = textwrap.dedent("\n".join(stubber.stub(d))).strip("\n")
        if text:
            out.append(Definition(d.name, kind, source.path, text, d.node.start_point.row, _end_row(d.node)))
    return tuple(out)


def _expand_braces(spec: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e (Rust use trees); other specifiers unchanged."""
    open_at = spec.find("{")
    if open_at < 0:
        return [spec]
    depth, parts, start, close_at = 0, [], open_at + 1, len(spec)
    for i in range(open_at, len(spec)):
        ch = spec[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                close_at = i
                break
        elif ch == "," and depth == 1:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:close_at])
    head, tail = spec[:open_at], spec[close_at + 1 :]
    out: list[str] = []
    for part in parts:
        part = part.strip()
        if part:
            out += _expand_braces(head + part + tail)
    return out


def _clean_spec(text: str) -> str:
    text = " ".join(text.split()).rstrip(";").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1]
    return text


def _imports(lang: str, found_matches: _Matches) -> tuple[str, ...]:
    sep = _IMPORT_RULES[lang].member_sep if lang in _IMPORT_RULES else "."
    found: list[tuple[int, str]] = []
    for _, caps in found_matches:
        if "import" not in caps:
            continue
        base_node = caps["import"][0]
        base = _clean_spec((base_node.text or b"").decode("utf-8", "replace"))
        join = "" if base.endswith(sep) else sep
        specs = [base + join + "*"] if caps.get("import.wildcard") else [base]
        for member in caps.get("import.member", []):
            specs.append(base + join + _clean_spec((member.text or b"").decode("utf-8", "replace")))
        for spec in specs:
            found += [(base_node.start_byte, s) for s in _expand_braces(spec) if s]
    seen: set[str] = set()
    out: list[str] = []
    for _, spec in sorted(found, key=lambda f: f[0]):
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
    return tuple(out)


def _windows(text: str, cfg: ContextConfig) -> tuple[Window, ...]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    size, stride = max(1, cfg.window_lines), max(1, cfg.window_stride)

    def tokens_of(a: int, b: int) -> tuple[str, ...]:  # shared (interned) strings: smaller in memory and pickles
        return tuple(map(sys.intern, tokenize("\n".join(lines[a:b]))))

    # Overlapping windows: tokenize blocks of `step` lines once each. A window is a whole number of blocks, and
    # no token spans a newline, so its tokens are its blocks' tokens in order.
    step = math.gcd(size, stride) if stride < size else 0
    blocks = [tokens_of(i, i + step) for i in range(0, len(lines), step)] if step else []
    out: list[Window] = []
    start = 0
    while start < len(lines):
        if step:
            tokens = tuple(chain.from_iterable(blocks[start // step : (start + size) // step]))
        else:
            tokens = tokens_of(start, start + size)
        if tokens:
            chunk = lines[start : start + size]
            first, last = 0, len(chunk)
            while first < last and not chunk[first].strip():
                first += 1
            while last > first and not chunk[last - 1].strip():
                last -= 1
            out.append(Window(start + first, "\n".join(line.rstrip() for line in chunk[first:last]), tokens))
        if start + size >= len(lines):
            break
        start += stride
    return tuple(out)


def index_file(source: SourceFile, cfg: ContextConfig, tree: ts.Tree | None = None) -> FileIndex:
    """Definitions, import specifiers and retrieval windows of one file (pure; runs in worker processes).

    tree: the file's syntax tree when the caller already parsed it (the corpus build shares one parse).
    """
    definitions: tuple[Definition, ...] = ()
    imports: tuple[str, ...] = ()
    if source.language in LANGUAGES:
        root = (tree if tree is not None else parse(source.language, source.data)).root_node
        found = matches(source.language, "tags", root)
        definitions = _definitions(source, found, cfg)
        imports = _imports(source.language, found)
    return FileIndex(source.path, source.language, definitions, imports, _windows(source.text, cfg))


def imports_of(language: str, text: str) -> tuple[str, ...]:
    """Import specifiers of a text alone: what a file the index has not seen needs, without definitions or windows."""
    if language not in LANGUAGES:
        return ()
    return _imports(language, matches(language, "tags", parse(language, text.encode("utf-8")).root_node))


# --------------------------------------------------------------------------------------------------------------
# Import resolution: per-language rules over the set of paths in the index


class _Paths:
    """The repository's file paths, indexed by folder and by file name for import resolution."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.by_dir: dict[str, set[str]] = {}
        self.by_name: dict[str, set[str]] = {}
        self.dirs_by_name: dict[str, set[str]] = {}

    def add(self, path: str) -> None:
        self.files.add(path)
        folder, name = posixpath.split(path)
        self.by_name.setdefault(name, set()).add(path)
        while True:
            if folder not in self.by_dir:
                self.by_dir[folder] = set()
                self.dirs_by_name.setdefault(posixpath.basename(folder), set()).add(folder)
            self.by_dir[folder].add(path)
            parent = posixpath.dirname(folder)
            if not folder or parent == folder:  # "" for a relative path; "/" would be its own parent
                break
            folder = parent

    def discard(self, path: str) -> None:
        if path not in self.files:
            return
        self.files.discard(path)
        folder, name = posixpath.split(path)
        self.by_name[name].discard(path)
        if not self.by_name[name]:
            del self.by_name[name]
        while True:
            members = self.by_dir[folder]
            members.discard(path)
            if not members:
                del self.by_dir[folder]
                base = posixpath.basename(folder)
                self.dirs_by_name[base].discard(folder)
                if not self.dirs_by_name[base]:
                    del self.dirs_by_name[base]
            parent = posixpath.dirname(folder)
            if not folder or parent == folder:
                break
            folder = parent

    def direct_files(self, folder: str) -> list[str]:
        """Files directly in a folder (not in its subfolders), sorted."""
        return sorted(p for p in self.by_dir.get(folder, ()) if posixpath.dirname(p) == folder)

    def with_suffix(self, suffix: str) -> list[str]:
        """Files whose path is `suffix` or ends with `/suffix`."""
        name = posixpath.basename(suffix)
        return [p for p in self.by_name.get(name, ()) if p == suffix or p.endswith("/" + suffix)]

    def dirs_with_suffix(self, suffix: str) -> list[str]:
        name = posixpath.basename(suffix)
        return [d for d in self.dirs_by_name.get(name, ()) if d == suffix or d.endswith("/" + suffix)]


def _closest(candidates: Iterable[str], path: str) -> str | None:
    """The candidate nearest to `path` in the folder tree; then the shortest; then the first by name."""
    here = posixpath.dirname(path).split("/")

    def key(c: str) -> tuple[int, int, str]:
        parts = posixpath.dirname(c).split("/")
        common = 0
        for a, b in zip(here, parts, strict=False):
            if a != b:
                break
            common += 1
        return (-common, c.count("/"), c)

    ordered = sorted(candidates, key=key)
    return ordered[0] if ordered else None


def _join(folder: str, *parts: str) -> str | None:
    """Normalised repo path of folder/parts, or None when it leaves the repository."""
    joined = posixpath.normpath(posixpath.join(folder, *parts)) if folder or parts else ""
    if joined == ".":
        return ""
    if joined.startswith("../") or joined == ".." or joined.startswith("/"):
        return None
    return joined


def _resolve_python(paths: _Paths, path: str, spec: str) -> list[str]:
    exts = (".py", ".pyi")

    def module_in(folder: str, parts: list[str]) -> str | None:
        base = _join(folder, *parts)
        if base is None:
            return None
        for cand in [base + e for e in exts] + [_join(base, "__init__" + e) or "" for e in exts]:
            if cand in paths.files and cand:
                return cand
        return None

    if spec.startswith("."):
        dots = len(spec) - len(spec.lstrip("."))
        rest = [p for p in spec[dots:].split(".") if p]
        folder = posixpath.dirname(path)
        for _ in range(dots - 1):
            if not folder:
                return []
            folder = posixpath.dirname(folder)
        found = module_in(folder, rest)
        return [found] if found else []
    parts = [p for p in spec.split(".") if p]
    if not parts:
        return []
    rel = "/".join(parts)
    # (module file, the folder it is imported from): that folder must be an import root, not itself a package.
    candidates: list[tuple[str, str]] = []
    for ext in exts:
        candidates += [(c, c[: -len(rel + ext)]) for c in paths.with_suffix(rel + ext)]
    for folder in paths.dirs_with_suffix(rel):
        found = module_in(folder, [])
        if found:
            candidates.append((found, folder[: -len(rel)]))
    roots_ok = [c for c, root in candidates if not any(_join(root, "__init__" + e) in paths.files for e in exts)]
    best = _closest(roots_ok, path)
    return [best] if best else []


_JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".d.ts")


def _resolve_js(paths: _Paths, path: str, spec: str) -> list[str]:
    if not spec.startswith((".", "/")):
        return []  # a package, not a file of this repository
    target = _join(posixpath.dirname(path), spec.lstrip("/") if spec.startswith("/") else spec)
    if target is None:
        return []
    stem, ext = posixpath.splitext(target)
    candidates = [target]
    if ext in (".js", ".jsx", ".mjs", ".cjs"):  # TypeScript sources imported by their compiled name
        candidates += [stem + e for e in (".ts", ".tsx", ".mts", ".cts")]
    candidates += [target + e for e in _JS_EXTENSIONS]
    candidates += [f"{target}/index{e}" if target else f"index{e}" for e in _JS_EXTENSIONS]
    for cand in candidates:
        if cand in paths.files:
            return [cand]
    return []


def _resolve_go(paths: _Paths, path: str, spec: str) -> list[str]:
    segments = [s for s in spec.split("/") if s]
    if not segments:
        return []
    # Standard-library paths have no dot in their first element; module paths without one need 2 matching folders.
    min_k = 1 if "." in segments[0] else 2
    for k in range(len(segments), min_k - 1, -1):
        for folder in sorted(paths.dirs_with_suffix("/".join(segments[-k:]))):
            files = [f for f in paths.direct_files(folder) if f.endswith(".go") and not f.endswith("_test.go")]
            if files:
                return [f for f in files if f != path]
    return []


def _rust_module_dir(path: str) -> str:
    folder, name = posixpath.split(path)
    if name in ("mod.rs", "lib.rs", "main.rs"):
        return folder
    return posixpath.join(folder, name[:-3]) if name.endswith(".rs") else folder


def _rust_module_file(paths: _Paths, folder: str) -> str | None:
    for cand in (f"{folder}.rs", f"{folder}/mod.rs", f"{folder}/lib.rs", f"{folder}/main.rs"):
        cand = cand.lstrip("/")
        if cand in paths.files:
            return cand
    return None


def _rust_in(paths: _Paths, folder: str, segments: list[str], min_k: int) -> str | None:
    for k in range(len(segments), min_k - 1, -1):
        if k == 0:
            return _rust_module_file(paths, folder)
        base = posixpath.join(folder, *segments[:k])
        for cand in (base + ".rs", base + "/mod.rs"):
            if cand in paths.files:
                return cand
    return None


def _resolve_rust(paths: _Paths, path: str, spec: str) -> list[str]:
    mod = re.match(r"^(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)$", spec)
    if mod:
        module = _rust_in(paths, _rust_module_dir(path), [mod.group(1)], 1)
        return [module] if module else []
    spec = re.sub(r"\s+as\s+\w+$", "", spec)
    segments = [s for s in spec.split("::") if s and s not in ("*", "self")]
    if not segments:
        return []
    crate = posixpath.dirname(path)
    while crate and not ({f"{crate}/lib.rs", f"{crate}/main.rs"} & paths.files):
        crate = posixpath.dirname(crate)
    head, rest = segments[0], segments[1:]
    found: str | None = None
    if head == "crate":
        found = _rust_in(paths, crate, rest, 0)
    elif head in ("self", "super"):
        folder = _rust_module_dir(path)
        while rest and rest[0] == "super":
            rest = rest[1:]
            folder = posixpath.dirname(folder)
        if head == "super":
            folder = posixpath.dirname(folder)
        found = _rust_in(paths, folder, rest, 0)
    else:
        found = _rust_in(paths, crate, segments, 1)
        if found is None:  # another crate of the same workspace: <crate>/src/lib.rs
            for folder in sorted(paths.by_dir):
                if posixpath.basename(folder).replace("-", "_") == head and f"{folder}/src/lib.rs" in paths.files:
                    found = _rust_in(paths, f"{folder}/src", rest, 0)
                    break
    return [found] if found else []


def _resolve_java(paths: _Paths, path: str, spec: str) -> list[str]:
    segments = [s for s in spec.split(".") if s]
    if not segments:
        return []
    if segments[-1] == "*":
        for folder in sorted(paths.dirs_with_suffix("/".join(segments[:-1]))):
            files = [f for f in paths.direct_files(folder) if f.endswith(".java") and f != path]
            if files:
                return files
        return []
    # a.b.C, a.b.C.Inner or a static member a.b.C.m: the longest prefix that is a file.
    for k in range(len(segments), max(1, len(segments) - 2) - 1, -1):
        best = _closest(paths.with_suffix("/".join(segments[:k]) + ".java"), path)
        if best:
            return [best]
    return []


def _resolve_include(paths: _Paths, path: str, spec: str) -> list[str]:
    system = spec.startswith("<") and spec.endswith(">")
    name = spec[1:-1] if system else spec
    if not system:
        local = _join(posixpath.dirname(path), name)
        if local is not None and local in paths.files:
            return [local]
    clean = posixpath.normpath(name)
    if clean.startswith("../"):
        clean = clean.lstrip("./")
    best = _closest(paths.with_suffix(clean), path)
    return [best] if best else []


@dataclass(frozen=True, slots=True)
class _ImportRules:
    """How a language names what it imports: the separator of member imports and the resolver of specifiers."""

    member_sep: str
    resolve: Callable[[_Paths, str, str], list[str]]


_IMPORT_RULES: dict[str, _ImportRules] = {
    "python": _ImportRules(".", _resolve_python),
    "javascript": _ImportRules("/", _resolve_js),
    "typescript": _ImportRules("/", _resolve_js),
    "tsx": _ImportRules("/", _resolve_js),
    "go": _ImportRules("/", _resolve_go),
    "rust": _ImportRules("::", _resolve_rust),
    "java": _ImportRules(".", _resolve_java),
    "c": _ImportRules("/", _resolve_include),
    "cpp": _ImportRules("/", _resolve_include),
}


# --------------------------------------------------------------------------------------------------------------
# The repository index


@dataclass(slots=True)
class _Entry:
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[str, ...]
    wids: list[int]
    named: frozenset[str]  # the last name of each import specifier (imported by name: "x" of "a.b.x")


def _imported_names(specs: Iterable[str]) -> frozenset[str]:
    return frozenset(t for spec in specs for t in tokenize(spec)[-1:])


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


def _tie_key(path_hash: int, line: int) -> int:
    """A window's place among equal scores: its path's hash mixed with its line, as a signed 64-bit value."""
    key = (path_hash ^ (line * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    return key - (1 << 64) if key >= 1 << 63 else key


def _squash(text: str) -> str:
    return " ".join(text.split())


class RepoIndex:
    """Definitions, imports and BM25 windows of one repository; updated one file at a time."""

    def __init__(self, cfg: ContextConfig) -> None:
        for name in ("max_chars", "max_snippets", "window_lines", "window_stride", "query_lines"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"context.{name}: must be at least 1, not {getattr(cfg, name)}")
        if not 0.0 <= cfg.definitions_share <= 1.0:
            raise ConfigError(f"context.definitions_share: must be in [0, 1], not {cfg.definitions_share}")
        self.cfg = cfg
        self._files: dict[str, _Entry] = {}
        self._paths = _Paths()
        self._resolved: dict[str, tuple[str, ...]] = {}
        # Windows by id (ids of removed windows are reused).
        self._win_path: list[str] = []
        self._win_line: list[int] = []
        self._win_text: list[str] = []
        self._win_tids: list[array[int]] = []
        self._win_len: list[int] = []
        self._win_key = array("q")  # tie order among equal scores: a hash of (path, line)
        self._free: list[int] = []
        self._n_windows = 0
        self._total_len = 0
        # Inverted index: token id -> (window ids, term frequencies).
        self._vocab: dict[str, int] = {}
        self._token_of: list[str] = []  # token id -> token ("" for a free id)
        self._free_tids: list[int] = []  # ids of tokens no window holds any more (a server sees every typo once)
        self._post_w: list[array[int]] = []
        self._post_v: list[array[float]] = []
        self._pivot = cfg.window_lines * _TOKENS_PER_LINE

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
        if fi.path in self._files:
            self._drop(fi.path)
            self._resolved.pop(fi.path, None)
        else:
            self._paths.add(fi.path)
            self._resolved.clear()  # a new path can change how other files' imports resolve
        wids: list[int] = []
        path_hash = int.from_bytes(hashlib.blake2b(fi.path.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        for window in fi.windows:
            wid = self._alloc()
            counts = Counter(window.tokens)
            norm = _BM25_K1 * (1.0 - _BM25_B + _BM25_B * len(window.tokens) / self._pivot)
            tids = array("i")
            for token in sorted(counts):
                tid = self._vocab.get(token)
                if tid is None:
                    tid = self._vocab[token] = self._alloc_token(token)
                self._post_w[tid].append(wid)
                tf = counts[token]
                self._post_v[tid].append(tf * (_BM25_K1 + 1.0) / (tf + norm))
                tids.append(tid)
            self._win_path[wid] = fi.path
            self._win_line[wid] = window.start_line
            self._win_text[wid] = window.text
            self._win_tids[wid] = tids
            self._win_len[wid] = len(window.tokens)
            self._win_key[wid] = _tie_key(path_hash, window.start_line)
            self._n_windows += 1
            self._total_len += len(window.tokens)
            wids.append(wid)
        self._files[fi.path] = _Entry(fi.language, fi.definitions, fi.imports, wids, _imported_names(fi.imports))

    def remove(self, path: str) -> None:
        """Forget a file (no-op when it is not indexed)."""
        if path not in self._files:
            return
        self._drop(path)
        del self._files[path]
        self._paths.discard(path)
        self._resolved.clear()

    def _alloc(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        wid = len(self._win_path)
        self._win_path.append("")
        self._win_line.append(0)
        self._win_text.append("")
        self._win_tids.append(array("i"))
        self._win_len.append(0)
        self._win_key.append(0)
        return wid

    def _alloc_token(self, token: str) -> int:
        if self._free_tids:
            tid = self._free_tids.pop()
            self._token_of[tid] = token
            return tid
        self._token_of.append(token)
        self._post_w.append(array("i"))
        self._post_v.append(array("f"))
        return len(self._post_w) - 1

    def _drop(self, path: str) -> None:
        """Remove a file's windows from the postings of its own tokens."""
        entry = self._files[path]
        by_token: dict[int, list[int]] = {}
        for wid in entry.wids:
            for tid in self._win_tids[wid]:
                by_token.setdefault(tid, []).append(wid)
            self._n_windows -= 1
            self._total_len -= self._win_len[wid]
            self._win_len[wid] = 0
            self._win_path[wid] = ""
            self._win_text[wid] = ""
            self._win_tids[wid] = array("i")
            heapq.heappush(self._free, wid)
        for tid, gone in by_token.items():
            w = np.frombuffer(self._post_w[tid], dtype=np.int32)
            if len(gone) <= 4:
                keep = w != gone[0]
                for g in gone[1:]:
                    keep &= w != g
            else:
                keep = ~np.isin(w, np.asarray(gone, dtype=np.int32))
            v = np.frombuffer(self._post_v[tid], dtype=np.float32)
            new_w, new_v = array("i"), array("f")
            new_w.frombytes(w[keep].tobytes())
            new_v.frombytes(v[keep].tobytes())
            del w, v
            self._post_w[tid], self._post_v[tid] = new_w, new_v
            if not new_w:  # no window holds the token any more: forget it
                del self._vocab[self._token_of[tid]]
                self._token_of[tid] = ""
                self._free_tids.append(tid)
        entry.wids = []

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
        rules = _IMPORT_RULES.get(language)
        if rules is None:
            return []
        out: list[str] = []
        for spec in specs:
            for target in rules.resolve(self._paths, path, spec):
                if target != path and target not in out:
                    out.append(target)
        return out

    # ---- retrieval -----------------------------------------------------------------------------------------

    def retrieve(self, path: str, language: str, prefix: str, suffix: str = "") -> tuple[Snippet, ...]:
        """Context for a cursor in `path`: imported definitions and similar windows of other files.

        Most relevant first; at most cfg.max_snippets snippets of cfg.max_chars characters in all; never a
        snippet of `path` itself; no two overlapping windows.
        """
        cfg = self.cfg
        before = _tail_lines(prefix, _AROUND_LINES * cfg.query_lines)
        query = _tail_lines(before, cfg.query_lines)
        near = set(tokenize(query))
        # The lines before the query lines start after a newline: no token spans the cut.
        around = near.union(
            tokenize(before[: len(before) - len(query)]), tokenize(_head_lines(suffix, cfg.query_lines))
        )

        ranked = self._ranked_definitions(path, language, prefix, suffix, near, around)
        chosen: list[tuple[int, Definition]] = []
        taken: list[str] = []
        used = 0

        def take_definitions(budget: int, max_count: int) -> None:
            nonlocal used
            for tier, d in ranked:
                if len(chosen) >= max_count or used >= budget:
                    break
                if used + len(d.text) > budget or any(c is d for _, c in chosen):
                    continue
                flat = _squash(d.text)
                if any(flat in t for t in taken):
                    continue  # e.g. a method already shown in its class
                chosen.append((tier, d))
                taken.append(flat)
                used += len(d.text)

        share = cfg.definitions_share
        take_definitions(int(cfg.max_chars * share), math.ceil(cfg.max_snippets * share))
        windows = self._similar(path, near, cfg.max_chars - used, cfg.max_snippets - len(chosen), taken)
        used += sum(len(w.text) for w in windows)
        take_definitions(cfg.max_chars, cfg.max_snippets - len(windows))  # what the windows left over

        mentioned = [Snippet(d.path, d.text, "definition") for tier, d in chosen if tier > 0]
        others = [Snippet(d.path, d.text, "definition") for tier, d in chosen if tier == 0]
        return (*mentioned, *windows, *others)

    def _ranked_definitions(
        self, path: str, language: str, prefix: str, suffix: str, near: set[str], around: set[str]
    ) -> list[tuple[int, Definition]]:
        """Definitions of the imported files, by tier then import order then file order.

        Tier 2: the name is used in the query lines just before the cursor; tier 1: imported by name, or used
        in the lines around the cursor; tier 0: the rest. Methods only count when used near the cursor (their
        signatures are in their class's stub otherwise).
        """
        entry = self._files.get(path)
        if entry is not None:
            targets = self.resolve_imports(path)
            named = entry.named
        else:  # a file the index has not seen (a new buffer): its imports come from the live text
            specs = imports_of(language, prefix + suffix)
            targets = self._resolve(path, language, specs)
            named = _imported_names(specs)
        ranked: list[tuple[int, int, int, Definition]] = []
        for fi, target in enumerate(targets):
            for di, d in enumerate(self._files[target].definitions):
                if d.name in near:
                    tier = 2
                elif d.kind == "method":
                    continue
                elif d.name in named or d.name in around:
                    tier = 1
                else:
                    tier = 0
                ranked.append((-tier, fi, di, d))
        ranked.sort(key=lambda r: r[:3])
        return [(-r[0], r[3]) for r in ranked]

    def _scores(self, tokens: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(window ids, their BM25 scores) of the windows holding any of the query's tokens, ids ascending;
        None when no token is indexed."""
        n = self._n_windows
        if n == 0:
            return None
        vocab, post_w = self._vocab, self._post_w
        terms = []
        for token in tokens:
            tid = vocab.get(token)
            if tid is not None and len(post_w[tid]):
                terms.append((len(post_w[tid]), token, tid))
        if not terms:
            return None
        terms.sort()
        chosen: list[int] = []
        dfs: list[int] = []
        total = 0
        for df, _, tid in terms:
            if chosen and total + df > self.cfg.max_postings:
                break
            chosen.append(tid)
            dfs.append(df)
            total += df
        # All postings of the chosen tokens at once (one copy, not an array per token); bincount adds each
        # window's terms in token order.
        w = np.frombuffer(b"".join([post_w[t] for t in chosen]), dtype=np.int32)
        v = np.frombuffer(b"".join([self._post_v[t] for t in chosen]), dtype=np.float32)
        df_arr = np.asarray(dfs, dtype=np.float32)
        v = v * np.repeat(np.log1p((n - df_arr + 0.5) / (df_arr + 0.5)), dfs)
        if 8 * len(w) < len(self._win_path):  # few postings: sum over the windows they name
            ids, where = np.unique(w, return_inverse=True)
            return ids, np.bincount(where, weights=v, minlength=len(ids))
        scores = np.bincount(w, weights=v, minlength=len(self._win_path))
        hit = np.flatnonzero(scores)
        return hit, scores[hit]

    def _ranked_windows(self, ids: np.ndarray, scores: np.ndarray, exclude: list[int], limit: int) -> list[int]:
        """The `limit` best window ids, best first; equal scores in the order of their (path, line) hash."""
        if exclude:
            scores = np.where(np.isin(ids, np.asarray(exclude, dtype=ids.dtype)), 0.0, scores)  # not the own file
        keep = scores > 0.0
        ids, scores = ids[keep], scores[keep]
        if len(ids) > limit:  # only what can be consumed: the limit-th best score and up (its ties included)
            kth = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            keep = scores >= kth
            ids, scores = ids[keep], scores[keep]
        keys = np.frombuffer(self._win_key, dtype=np.int64)[ids]
        order = np.lexsort((keys, -scores))[:limit]
        return [int(i) for i in ids[order]]

    def _similar(self, path: str, tokens: set[str], budget: int, max_count: int, taken: list[str]) -> list[Snippet]:
        if budget <= 0 or max_count <= 0:
            return []
        scored = self._scores(tokens)
        if scored is None:
            return []
        entry = self._files.get(path)
        out: list[Snippet] = []
        spans: dict[str, list[tuple[int, int]]] = {}
        seen_text = set(taken)
        for wid in self._ranked_windows(*scored, entry.wids if entry else [], 8 * max_count + 32):
            if len(out) >= max_count or budget < _MIN_WINDOW_CHARS:
                break
            wpath, line, text = self._win_path[wid], self._win_line[wid], self._win_text[wid]
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
