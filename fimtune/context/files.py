"""One file's entry in the repository index (pure; runs in worker processes): tree-sitter tag queries
(`queries/<lang>-tags.scm`) give the definitions, kept as compact stubs (signature, docstring or doc comment, for
a class its members with bodies elided), and the import specifiers as written; the file is cut into overlapping
line windows of identifier tokens for lexical retrieval."""

from __future__ import annotations

import math
import re
import textwrap
from array import array
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np
import tree_sitter as ts

from fimtune.config import ContextConfig
from fimtune.languages import LANGUAGES, matches, parse
from fimtune.records import SourceFile

# Identifiers and keywords (Unicode letters allowed); numbers and punctuation carry little retrieval signal. No
# look-behind or \b: retrieval runs it from a position inside a text (findall(text, pos)) as on a slice.
TOKEN_RE = re.compile(r"[^\W\d]\w*")
# How a language separates the member of a module it imports ("a.b.x", "./a/x", "crate::a::x").
MEMBER_SEP = {"javascript": "/", "typescript": "/", "tsx": "/", "go": "/", "rust": "::", "c": "/", "cpp": "/"}
_FUNCTION_KINDS = frozenset({"function", "method"})
_ELISION = "..."


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
    """A short run of lines for lexical retrieval: lines start_line..end_line - 1 of its file's `lines` (the
    file's lines with trailing blanks dropped; no blank line at either edge), holding `length` identifier and
    keyword tokens. Its text is not kept apart: overlapping windows would hold each line twice."""

    start_line: int
    end_line: int
    length: int


@dataclass(frozen=True, slots=True)
class FilePostings:
    """A file's windows inverted: for each distinct token (`terms`, in order of first occurrence), the windows
    holding it (positions in FileIndex.windows, ascending) and how often each holds it. Term k's entries are
    windows[starts[k]:starts[k + 1]] and counts[starts[k]:starts[k + 1]]. Made in the worker that indexes the
    file, so the repository index adds a file with one step per distinct token, not one per window and token."""

    terms: tuple[str, ...]
    starts: array[int]  # int32, len(terms) + 1
    windows: array[int]  # int32
    counts: array[int]  # int32


@dataclass(frozen=True, slots=True)
class FileIndex:
    """Everything the repository index needs from one file; picklable, computed per file."""

    path: str
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[str, ...]  # raw import specifiers as written ("..utils", "./foo", "crate::x::y", "a/b.h")
    windows: tuple[Window, ...]
    postings: FilePostings
    lines: str = ""  # the file's lines, trailing blanks dropped, joined by newlines: what windows show

    def window_text(self, k: int) -> str:
        """The text of window k."""
        starts, window = line_starts(self.lines), self.windows[k]
        return self.lines[starts[window.start_line] : starts[window.end_line] - 1]


def line_starts(text: str) -> array[int]:
    """Where each line of text starts, then len(text) + 1 (line i is text[starts[i]:starts[i + 1] - 1])."""
    return array("q", accumulate((len(line) + 1 for line in text.split("\n")), initial=0))


def tokenize(text: str) -> list[str]:
    """Identifier and keyword tokens of code, in order."""
    return TOKEN_RE.findall(text)


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
    found = TOKEN_RE.findall(text)
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
    sep = MEMBER_SEP.get(lang, ".")
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


def _windows(text: str, cfg: ContextConfig) -> tuple[tuple[Window, ...], FilePostings, str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    size, stride = max(1, cfg.window_lines), max(1, cfg.window_stride)
    ids: dict[str, int] = {}  # the file's distinct tokens, numbered in order of first occurrence
    flat: list[int] = []  # the token numbers of every tokenized run of lines, one run after the other

    def tokenize_lines(a: int, b: int) -> int:
        """Tokenize lines a..b onto `flat`; where the run ends in it."""
        flat.extend([ids.setdefault(t, len(ids)) for t in tokenize("\n".join(lines[a:b]))])
        return len(flat)

    # Overlapping windows: tokenize blocks of `step` lines once each. A window is a whole number of blocks, and
    # no token spans a newline, so its tokens are a run of `flat` from its first block's start to its last's end.
    step = math.gcd(size, stride) if stride < size else 0
    block_end = [0] + [tokenize_lines(i, i + step) for i in range(0, len(lines), step)] if step else []
    stripped = [line.rstrip() for line in lines]  # each line is in several windows: strip it once
    out: list[Window] = []
    begins: list[int] = []
    start = 0
    while start < len(lines):
        if step:
            first_block, end_block = start // step, min((start + size) // step, len(block_end) - 1)
            begin, end = block_end[first_block], block_end[end_block]
        else:
            begin = len(flat)
            end = tokenize_lines(start, start + size)
        if end > begin:
            first, last = start, min(start + size, len(lines))
            while first < last and not stripped[first]:
                first += 1
            while last > first and not stripped[last - 1]:
                last -= 1
            out.append(Window(first, last, end - begin))
            begins.append(begin)
        if start + size >= len(lines):
            break
        start += stride
    return tuple(out), _invert(tuple(ids), flat, begins, [w.length for w in out]), "\n".join(stripped)


def _invert(terms: tuple[str, ...], flat: list[int], begins: list[int], lengths: list[int]) -> FilePostings:
    """(term, window) pairs with their counts, sorted by term then window, from each window's run of `flat`."""
    if not lengths:
        return FilePostings((), array("i", [0]), array("i"), array("i"))
    n_windows = len(lengths)
    runs = np.asarray(lengths, dtype=np.int64)
    total = int(runs.sum())
    window = np.repeat(np.arange(n_windows, dtype=np.int64), runs)
    # Position in `flat` of each entry: its window's begin plus its place within the window's run.
    pos = np.arange(total, dtype=np.int64) + np.repeat(
        np.asarray(begins, dtype=np.int64) - (np.cumsum(runs) - runs), runs
    )
    pairs, counts = np.unique(np.asarray(flat, dtype=np.int64)[pos] * n_windows + window, return_counts=True)
    term = pairs // n_windows
    starts = np.zeros(len(terms) + 1, dtype=np.int32)
    np.cumsum(np.bincount(term, minlength=len(terms)), out=starts[1:])
    return FilePostings(
        terms,
        _int32(starts),
        _int32(pairs % n_windows),
        _int32(counts),
    )


def _int32(values: np.ndarray) -> array[int]:
    out = array("i")
    out.frombytes(values.astype(np.int32).tobytes())
    return out


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
    windows, postings, lines = _windows(source.text, cfg)
    return FileIndex(source.path, source.language, definitions, imports, windows, postings, lines)


def imports_of(language: str, text: str) -> tuple[str, ...]:
    """Import specifiers of a text alone: what a file the index has not seen needs, without definitions or windows."""
    if language not in LANGUAGES:
        return ()
    return _imports(language, matches(language, "tags", parse(language, text.encode("utf-8")).root_node))
