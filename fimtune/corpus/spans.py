"""Choosing middles: spans cut at syntax boundaries (queries/<lang>-spans.scm), whole lines, random, empty."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate
from operator import attrgetter
from typing import Any

import numpy as np
import tree_sitter as ts

from fimtune.config import SpanConfig
from fimtune.languages import get_query, parse
from fimtune.records import SourceFile, Span

# Kinds that need no syntax tree: the only ones used when a file does not parse cleanly.
LINE_KINDS: tuple[str, ...] = ("line_rest", "line", "random", "empty")

# How a captured node becomes a middle depends on the kind, never on the language (language knowledge is the
# query files' business): for these kinds the node's own delimiters are left out ("call_args" is what is inside
# the parentheses, "condition" drops the parentheses of `if (...)`); "block" keeps the whole lines between the
# braces; every other capture name is taken as the node's exact range.
INNER_KINDS: frozenset[str] = frozenset({"call_args", "condition"})
BLOCK_KIND = "block"
# Consecutive sibling @statement captures make up "statements"; ends of @statement nodes are "empty" positions.
STATEMENT_KIND = "statement"
STATEMENTS_KIND = "statements"
MIN_RUN, MAX_RUN = 2, 4
MAX_WINDOWS = 8  # query_windows: at most this many windows per file (each costs a descent from the root)

_PAIRS = {"(": ")", "{": "}", "[": "]"}
_WS = b" \t\r\n\f\v"
_NL = 0x0A


@dataclass(frozen=True, slots=True)
class SpanResult:
    """The middles chosen for one file, sorted by (start, end, kind).

    parse_ok is False when the syntax tree has errors; then only line-based kinds (LINE_KINDS) are used, unless
    SpanConfig.syntax_in_files_with_errors allows syntax middles from the top-level items without errors.
    """

    spans: list[Span]
    parse_ok: bool


def examples_for_size(n_bytes: int, cfg: SpanConfig) -> int:
    """How many middles a file of n_bytes yields: examples_per_kb scaled, clamped to [min, max] per file."""
    n = round(n_bytes / 1024 * cfg.examples_per_kb)
    return max(cfg.min_examples_per_file, min(cfg.max_examples_per_file, n))


def choose_spans(
    source: SourceFile,
    cfg: SpanConfig,
    rng: random.Random,
    *,
    data: bytes | None = None,
    tree: ts.Tree | None = None,
) -> SpanResult:
    """Pick middles for one file: kinds drawn from cfg.mix (renormalised over the kinds this file has),
    then a candidate of that kind; no two spans with the same range; deterministic for a given rng state.

    data (the text's UTF-8 bytes) and tree (its syntax tree), when the caller has them, are not made again.
    """
    if data is None:
        data = source.data
    if tree is None:
        tree = parse(source.language, data)
    parse_ok = not tree.root_node.has_error
    text = _Text(data, cfg)
    n = examples_for_size(len(data), cfg)
    windows = query_windows(len(data), n, cfg.query_bytes_per_example, rng)
    query = get_query(source.language, "spans")

    def siblings(first: ts.Node) -> set[int]:
        return _sibling_statements(query, first, first.start_byte + cfg.max_middle_bytes)

    pools = _pools(text, _syntax_nodes(source.language, tree, cfg, windows), siblings, windows)
    kinds = [k for k, w in cfg.mix.items() if w > 0 and k in pools]
    # rng.choices(kinds, weights)[0], inlined: the same cumulative weights and the same one rng.random() call.
    cum_weights = list(accumulate(cfg.mix[k] for k in kinds))
    chosen: dict[tuple[int, int], str] = {}
    # Draws can fail (a candidate over the caps, a duplicate); each failure uses up a candidate, and
    # the bound only matters for the endless pools (random) in files where nearly every draw fails.
    attempts = 0
    while len(chosen) < n and kinds and attempts < 20 * n + 100:
        attempts += 1
        kind = kinds[bisect.bisect(cum_weights, rng.random() * (cum_weights[-1] + 0.0), 0, len(kinds) - 1)]
        pool = pools[kind]
        span = pool.draw(rng)
        if pool.exhausted:
            kinds.remove(kind)
            cum_weights = list(accumulate(cfg.mix[k] for k in kinds))
        if span is not None and span not in chosen:
            chosen[span] = kind
    spans = sorted((Span(a, b, k) for (a, b), k in chosen.items()), key=lambda s: (s.start, s.end, s.kind))
    return SpanResult(spans, parse_ok)


def query_windows(size: int, n: int, per_example: int, rng: random.Random) -> list[tuple[int, int]] | None:
    """Where to look for syntax middles in a file of `size` bytes that yields n: None for the whole file, or
    sorted, disjoint windows [a, b) covering n * per_example bytes, spread evenly over the file.

    The file is cut into at most MAX_WINDOWS equal strata, each holding one window at a uniform offset that
    wraps around the stratum's end (so a window may come in two pieces). Every byte is then in a window with the
    same probability, and the syntax candidates found (a node is found when it starts in a window) are a
    uniform sample of all of them: every kind keeps its share. The query pass over a whole file costs about
    half its parse, and most of its candidates are never drawn. None when per_example or n is 0, or the windows
    would cover the file anyway.
    """
    if per_example <= 0 or n <= 0 or n * per_example >= size:
        return None
    count = min(n, MAX_WINDOWS)
    width = n * per_example // count
    windows: list[tuple[int, int]] = []
    for k in range(count):
        lo, hi = k * size // count, (k + 1) * size // count
        a = lo + rng.randrange(hi - lo)
        if a + width <= hi:
            windows.append((a, a + width))
        else:
            windows += [(lo, lo + a + width - hi), (a, hi)]
    return windows


# --- the file's text: lines, caps, character boundaries ------------------------------------------------------


class _Text:
    """The file's bytes with what every kind needs: line starts, the caps, UTF-8 character boundaries."""

    __slots__ = ("data", "line_starts", "line_starts_array", "max_bytes", "max_lines")

    def __init__(self, data: bytes, cfg: SpanConfig) -> None:
        self.data = data
        self.max_bytes = cfg.max_middle_bytes
        self.max_lines = cfg.max_middle_lines
        # Each line starts one byte after the previous line's end (its newline).
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _NL)
        self.line_starts_array = np.concatenate(([0], newlines + 1))
        self.line_starts: list[int] = self.line_starts_array.tolist()

    def fits(self, a: int, b: int) -> bool:
        """Whether [a, b) is within max_middle_bytes and max_middle_lines (a final newline ends the last line)."""
        if b - a > self.max_bytes:
            return False
        return self.lines(a, b) <= self.max_lines

    def lines(self, a: int, b: int) -> int:
        if b <= a:
            return 0
        return self.data.count(b"\n", a, b) + (self.data[b - 1] != _NL)

    def boundary(self, i: int) -> bool:
        """Whether byte offset i starts a UTF-8 character (or is the end of the text)."""
        return i >= len(self.data) or (self.data[i] & 0xC0) != 0x80

    def back(self, i: int) -> int:
        """The character boundary at or before i."""
        while not self.boundary(i):
            i -= 1
        return i

    def forward(self, i: int) -> int:
        """The character boundary at or after i."""
        while not self.boundary(i):
            i += 1
        return i

    def line_content(self, i: int) -> tuple[int, int]:
        """Line i's content: after its indentation, before its newline and trailing whitespace (a == b if blank)."""
        a = self.line_starts[i]
        b = self.line_starts[i + 1] - 1 if i + 1 < len(self.line_starts) else len(self.data)
        line = self.data[a:b]
        stripped = line.strip(_WS)
        if not stripped:
            return a, a
        a += len(line) - len(line.lstrip(_WS))
        return a, a + len(stripped)

    def strip(self, a: int, b: int) -> tuple[int, int]:
        """[a, b) without leading and trailing whitespace (ASCII whitespace: always on character boundaries)."""
        piece = self.data[a:b]
        lead = len(piece) - len(piece.lstrip(_WS))
        if lead == len(piece):
            return a, a
        return a + lead, b - (len(piece) - len(piece.rstrip(_WS)))


# --- candidates: one query pass, resolved lazily ---------------------------------------------------------------


def _syntax_nodes(
    language: str, tree: ts.Tree, cfg: SpanConfig, windows: list[tuple[int, int]] | None = None
) -> dict[str, list[ts.Node]]:
    """The captured nodes syntax middles may come from: all of them, some or none when the tree has errors."""
    if not tree.root_node.has_error:
        return _captures(language, tree, windows=windows)
    if cfg.syntax_in_files_with_errors:
        return _captures(language, tree, clean_only=True, windows=windows)
    return {}


def _query_nodes(query: ts.Query, tree: ts.Tree, windows: list[tuple[int, int]] | None) -> dict[str, list[ts.Node]]:
    """The query's captures over the whole tree, or of the nodes that start inside one of the windows."""
    cursor = ts.QueryCursor(query)
    if windows is None:
        return cursor.captures(tree.root_node)
    found: dict[str, list[ts.Node]] = {}
    for a, b in windows:
        cursor.set_byte_range(a, b)  # every node that overlaps [a, b): keep those that start in it
        for kind, nodes in cursor.captures(tree.root_node).items():
            found.setdefault(kind, []).extend(node for node in nodes if a <= node.start_byte < b)
    return found


def _sibling_statements(query: ts.Query | None, first: ts.Node, limit: int) -> set[int]:
    """The ids of the @statement nodes among `first`'s later siblings that start before `limit`.

    Only the parent's own children are matched (start depth 1), over the bytes after `first`, so this costs
    a few microseconds however big the file. Siblings with errors in them are left out, as _captures'
    clean_only leaves them out.
    """
    parent = first.parent
    if query is None or parent is None or limit <= first.end_byte:
        return set()
    cursor = ts.QueryCursor(query)
    cursor.set_max_start_depth(1)
    cursor.set_byte_range(first.end_byte, limit)
    return {node.id for node in cursor.captures(parent).get(STATEMENT_KIND, ()) if not node.has_error}


def _captures(
    language: str, tree: ts.Tree, clean_only: bool = False, windows: list[tuple[int, int]] | None = None
) -> dict[str, list[ts.Node]]:
    """One pass of the language's spans query over the whole tree, or over the windows: span kind -> nodes.

    The order of the nodes is not stable from run to run (QueryCursor.captures does not order nested captures
    reliably): sort with _NODE_ORDER before any random choice. clean_only keeps only nodes inside top-level items
    (children of the root) that have no error in them, for files with parse errors elsewhere: a clean node
    inside a broken item may still sit among broken code.
    """
    query = get_query(language, "spans")
    if query is None:
        return {}
    found = _query_nodes(query, tree, windows)
    if clean_only:
        clean = [(item.start_byte, item.end_byte) for item in tree.root_node.children if not item.has_error]
        starts = [a for a, _ in clean]

        def inside_clean(node: ts.Node) -> bool:
            i = bisect.bisect_right(starts, node.start_byte) - 1
            return i >= 0 and node.end_byte <= clean[i][1]

        found = {kind: list(filter(inside_clean, nodes)) for kind, nodes in found.items()}
    return {kind: nodes for kind, nodes in sorted(found.items()) if nodes and not kind.startswith("_")}


_NODE_ORDER = attrgetter("start_byte", "end_byte", "kind_id")
_START = attrgetter("start_byte")
_END = attrgetter("end_byte")
_ID = attrgetter("id")


@dataclass(slots=True)
class _Pool:
    """Candidates of one kind, drawn without replacement and checked only when drawn (most are never looked at).

    items None means an endless pool (random spans): draw() makes a fresh candidate each time. prepare, when
    given, puts the items in a deterministic order on the first draw (sorting nodes costs as much as a tenth
    of the whole file's work, so kinds never drawn are never sorted).
    """

    resolve: Callable[[Any, random.Random], tuple[int, int] | None]
    items: list[Any] | None = None
    prepare: Callable[[list[Any]], list[Any]] | None = None
    exhausted: bool = False

    def draw(self, rng: random.Random) -> tuple[int, int] | None:
        if self.items is None:
            return self.resolve(None, rng)
        if self.prepare is not None:
            self.items = self.prepare(self.items)
            self.prepare = None
        i = rng.randrange(len(self.items))
        item = self.items[i]
        self.items[i] = self.items[-1]
        self.items.pop()
        self.exhausted = not self.items
        return self.resolve(item, rng)


def _sorted_nodes(nodes: list[Any]) -> list[Any]:
    """Nodes in _NODE_ORDER; by start alone when starts are unique (reading end_byte costs more than sorting)."""
    nodes = sorted(nodes, key=_START)
    starts = list(map(_START, nodes))
    if len(set(starts)) < len(starts):
        nodes.sort(key=_NODE_ORDER)
    return nodes


def _pools(
    text: _Text,
    nodes: dict[str, list[ts.Node]],
    siblings: Callable[[ts.Node], set[int]],
    windows: list[tuple[int, int]] | None = None,
) -> dict[str, _Pool]:
    """A pool per kind that has candidates in this file (syntax kinds only for the captured ones).

    siblings(first) gives the ids of the statements a run from `first` may continue with (looked up, as the
    windows may have missed them). With windows (see query_windows), nodes are those that start in a window,
    and the empty middles at line starts are thinned the same way, so they keep their share against those
    after a statement.
    """
    pools: dict[str, _Pool] = {}
    n_lines = len(text.line_starts)
    if text.data.strip(_WS):
        pools["line"] = _Pool(lambda i, _rng: _line(text, i), list(range(n_lines)))
        pools["line_rest"] = _Pool(lambda i, rng: _line_rest(text, i, rng), list(range(n_lines)))
        pools["random"] = _Pool(lambda _none, rng: _random(text, rng))
    for kind, found in nodes.items():
        pools[kind] = _Pool(_node_resolver(kind, text), list(found), _sorted_nodes)
    # Empty middles: at a line start, or just after a statement (the code before the cursor is complete).
    starts = text.line_starts_array if windows is None else _inside(text.line_starts_array, windows)
    pools["empty"] = _Pool(lambda at, _rng: (at, at), starts.tolist())
    statements = nodes.get(STATEMENT_KIND)
    if statements:
        pools[STATEMENTS_KIND] = _Pool(
            lambda node, rng: _statements(text, node, rng, siblings(node)), list(statements), _sorted_nodes
        )
        if len(starts):
            pools["empty"].prepare = lambda _starts: _merge_sorted(starts, map(_END, statements))
        else:
            pools["empty"].items = sorted(set(map(_END, statements)))
    if not pools["empty"].items:
        del pools["empty"]
    return pools


def _inside(positions: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    """The sorted positions that fall in one of the sorted, disjoint windows [a, b)."""
    bounds = np.array(windows, dtype=positions.dtype).ravel()
    # A position is inside a window when an odd number of window bounds are at or before it.
    return positions[np.searchsorted(bounds, positions, side="right") % 2 == 1]


def _merge_sorted(starts: np.ndarray, more: Iterable[int]) -> list[int]:
    """sorted(set(starts) | set(more)) for sorted, distinct starts."""
    merged = np.concatenate((starts, np.fromiter(more, dtype=starts.dtype)))
    merged.sort(kind="stable")
    keep = np.empty(len(merged), dtype=bool)
    keep[0] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    out: list[int] = merged[keep].tolist()
    return out


def _node_resolver(kind: str, text: _Text) -> Callable[[ts.Node, random.Random], tuple[int, int] | None]:
    resolve = _resolver(kind, text)
    return lambda node, _rng: resolve(node)


def _resolver(kind: str, text: _Text) -> Callable[[ts.Node], tuple[int, int] | None]:
    """How a captured node of this kind becomes a middle (see INNER_KINDS), checked against the caps."""
    if kind in INNER_KINDS:
        shape = _inner
    elif kind == BLOCK_KIND:
        shape = _block
    else:
        shape = _whole

    def resolve(node: ts.Node) -> tuple[int, int] | None:
        r = shape(text, node)
        if r is None or r[0] >= r[1] or not text.fits(*r):
            return None
        return r

    return resolve


def _whole(text: _Text, node: ts.Node) -> tuple[int, int] | None:
    return node.start_byte, node.end_byte


def _delimiters(node: ts.Node) -> tuple[ts.Node, ts.Node] | None:
    """The node's opening and closing bracket tokens, when it starts and ends with a matching pair."""
    n = node.child_count
    if n < 2:
        return None
    first, last = node.child(0), node.child(n - 1)
    if first is None or last is None or _PAIRS.get(first.type) != last.type:
        return None
    return first, last


def _inner(text: _Text, node: ts.Node) -> tuple[int, int] | None:
    """Inside the node's brackets (if it has them), without surrounding whitespace."""
    pair = _delimiters(node)
    a, b = (pair[0].end_byte, pair[1].start_byte) if pair else (node.start_byte, node.end_byte)
    return text.strip(a, b)


def _block(text: _Text, node: ts.Node) -> tuple[int, int] | None:
    """A block's body. Between braces: from the start of the first line after `{` to the end of the line
    before `}` (newline included), so the cursor sits at the start of a line; none when code follows `{` on
    its line (a one-line `{ ... }` included). Without braces (Python): the block node itself.
    """
    pair = _delimiters(node)
    if pair is None:
        return node.start_byte, node.end_byte
    a, b = pair[0].end_byte, pair[1].start_byte
    data = text.data
    first_nl = data.find(b"\n", a, b)
    if first_nl < 0:
        return None
    start = first_nl + 1
    first = node.named_child(0) if node.named_child_count else None
    while first is not None and first.is_extra:
        first = first.next_named_sibling
    if first is not None and first.start_byte < start:  # code right after `{`: no whole lines to cut
        return None
    last_nl = data.rfind(b"\n", start - 1, b)
    end = last_nl + 1
    if data[end:b].strip(_WS):  # code before the closing brace on its line: keep it, without trailing spaces
        end = text.strip(end, b)[1]
    if not data[start:end].strip(_WS):
        return None
    return start, end


def _run(first: ts.Node, k: int, keys: set[int]) -> list[ts.Node]:
    """Up to k consecutive sibling statements from `first` (comments between them are skipped over)."""
    run = [first]
    node = first
    while len(run) < k:
        nxt = node.next_named_sibling
        while nxt is not None and nxt.is_extra:
            nxt = nxt.next_named_sibling
        if nxt is None or nxt.id not in keys:
            break
        run.append(nxt)
        node = nxt
    return run


def _statements(text: _Text, first: ts.Node, rng: random.Random, keys: set[int]) -> tuple[int, int] | None:
    """2-4 consecutive sibling statements starting at `first`: the longest of the drawn length within the caps."""
    run = _run(first, rng.randint(MIN_RUN, MAX_RUN), keys)
    while len(run) >= MIN_RUN:
        a, b = run[0].start_byte, run[-1].end_byte
        if text.fits(a, b):
            return a, b
        run.pop()
    return None


# --- line-based kinds -----------------------------------------------------------------------------------------


def _line(text: _Text, i: int) -> tuple[int, int] | None:
    """A whole line's content (after indentation, without the newline and trailing whitespace)."""
    a, b = text.line_content(i)
    if a == b or not text.fits(a, b):
        return None
    return a, b


def _line_rest(text: _Text, i: int, rng: random.Random) -> tuple[int, int] | None:
    """From a point inside the line, after at least one character of its content, to the end of the content."""
    a, b = text.line_content(i)
    if b - a < 2:
        return None
    cut = text.back(rng.randrange(a + 1, b))
    if cut <= a:
        cut = text.forward(a + 1)
    if cut >= b or not text.fits(cut, b):
        return None
    return cut, b


def _random(text: _Text, rng: random.Random) -> tuple[int, int] | None:
    """A character-level random span: uniform start, uniform length up to max_middle_bytes, cut to max lines."""
    size = len(text.data)
    a = text.back(rng.randrange(size))
    b = text.back(rng.randint(a + 1, min(size, a + text.max_bytes)))
    if b <= a:
        return None
    if text.lines(a, b) > text.max_lines:
        # End just after the newline of the last allowed line.
        k = bisect.bisect_right(text.line_starts, a) - 1 + text.max_lines
        b = text.line_starts[k]
    return a, b
