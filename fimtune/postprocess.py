"""Stop rules for a raw completion (line mode, block exit, repeats, suffix overlap, syntax), shared by eval and serve.

The engines already stop at the end-of-middle token and the template's stop strings; `postprocess` decides how
much of what came back to insert at the cursor. Rules, in the order they run (each one that changes the text is
named in `Processed.cuts`):

1. **line mode** (`line_mode`): "single" keeps the first line only (cut "single_line").
2. **block exit** (cut "block_exit"): the completion ends where it leaves the block the cursor is in.
   - Brackets (every fimtune language): a closing bracket of the completion that closes a bracket opened before
     the cursor. If the suffix already closes that bracket, the cut is just before the closing bracket (at the
     start of its line when only indentation precedes it, so the suffix's own `}` keeps its line). If the suffix
     does not close it, the completion finishes the block: in bracket languages the cut is at the end of that
     line (`});` stays whole); in Python, where brackets hold expressions, the indentation rule decides (a `def`
     signature closed by `):` may go on with its body). A closing bracket that does not match the innermost open
     one ends the completion, before it.
   - Indentation languages (Python): a line after the first, outside strings and brackets, indented less than the
     block ends it (cut at the start of that line); as in Python, a comment-only line and a line continued by a
     backslash have no indentation of their own. The block is taken from the cursor's line when it holds code,
     else from the last non-blank line above: after a line ending with `:` the block is everything indented deeper
     than that line; otherwise it is that line's indentation (or the cursor's own, if the cursor sits on a blank
     line at a smaller indentation: the user dedented on purpose). Inside brackets opened before the cursor, it
     is the indentation of the line that opened them (deeper once the completion closes them on a line ending
     with `:`).
   Brackets inside strings and comments (and JavaScript regular expression literals) are skipped by a small
   per-language lexer (regular expressions kept as data in SYNTAX); a cursor inside a string or comment turns the
   rule off.
3. **repeats** (cut "repeat"): a model looping. A group of 1 to 4 lines (compared with their indentation, blank
   lines and lines without a letter or digit ignored) that comes again right after itself: the first occurrence
   is kept, the completion stops before the second.
4. **max_lines** (cut "max_lines"): at most this many lines in multi-line mode (0: no cap).
5. **suffix overlap** (cut "suffix_overlap"): the longest tail of the completion (trailing whitespace aside) that
   is exactly the start of the suffix is dropped, unless the tail starts inside a word, or is a one-line tail that
   closes a bracket the completion itself opened (`bar()` before a suffix `)` stays).
6. **trailing whitespace** (cut "trailing_space"): spaces and tabs at the end of each line go; all trailing
   whitespace goes when the rest of the cursor's line is blank. When text follows the cursor on its line the end
   of the completion is left alone (`return a + ` before `x` keeps its space).
7. **syntax** (cut "syntax_reject", text ""): the completion is rejected when inserting it adds tree-sitter ERROR
   or MISSING nodes that prefix + suffix did not have. Counts are compared, not places: a completion that swaps
   the hole's error for another (`x = ` + `1 +`) is kept. Only a window is parsed, so the cost does not grow with
   the file (a cursor in a 5 MB file costs what one in a 300-line file does; measured in
   benchmarks/results/postprocess_latency.md): the last WINDOW_LINES (150) lines of the prefix and the first 150
   of the suffix. The prefix window starts at its first line that begins with a word at the smallest indentation
   such lines have in it (`prefix_window`), so that it does not start inside a docstring or block comment. Both
   sides are parsed with the same window, so errors caused by the cut (a stray `}` of a function whose start is
   outside) count on both sides. The completed window is parsed first: no error, accepted; otherwise the
   baseline is reparsed incrementally and the counts compared, except where the baseline has more than
   MAX_WINDOW_ERRORS (25) errors: accepted without a verdict (the window is not code tree-sitter can read, e.g. the
   middle of a 200-line docstring). A completion that turns a readable window into one with more errors than that
   (a docstring it opens and does not close) is rejected.

**Settled** (`Settled`): whether more text could still change what these rules keep, asked while a completion is
generated so that the engine stops once they have decided (the same answer, sooner). In single-line mode, once
the first line has ended. In multi-line mode, once block exit cuts the text and the line the cut lies on has ended
(a cut at a line start, or at the end of a line, is then fixed: the lexer, the indentation and the bracket depth of
everything before it are read from complete lines). The rules after block exit only read the text it kept, so
they give the same answer too. Repeats and max_lines are not used to stop early: a longer text can move them.

`line_mode` rules ("auto"): the completion is multi-line when the rest of the cursor's line is blank (or holds only
closing brackets and `;`/`,`, as after an editor's auto-closed `{}`), and either the cursor's line is blank before
the cursor too, or the code before the cursor (comment stripped) ends with one of the language's block openers
(`:` `(` `[` `{` in Python; `{` `(` `[` `:` in Go, Java, C and C++, plus `=>` in JavaScript and TypeScript; `{` `(`
`[` `=>` in Rust). Everything else is single-line: text after the cursor on its line, or the cursor inside or at
the end of a line with code that does not open a block.

Languages without an entry in SYNTAX (anything but the fimtune languages) get the language-independent rules only:
line mode (with brackets and `:` as openers), repeats, max_lines, suffix overlap, trailing whitespace.
"""

from __future__ import annotations

import re
import sys
import threading
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import tree_sitter as ts

from fimtune.languages import LANGUAGES, get_language

WINDOW_LINES = 150  # lines of prefix and of suffix parsed for the syntax check
# ... and at most this many characters of each: a 5 MB minified line is one line, and parsing it whole on every
# completion froze the server (the parse holds the interpreter lock).
WINDOW_CHARS = 16_384
MAX_WINDOW_ERRORS = 25  # a completed window with more errors than this gets no syntax verdict (accepted)
MAX_REPEAT_PERIOD = 4  # longest group of lines the repeat rule looks for
MODES = ("auto", "single", "multi")
CUT_NAMES = ("single_line", "block_exit", "repeat", "max_lines", "suffix_overlap", "trailing_space", "syntax_reject")

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}


@dataclass(frozen=True, slots=True)
class StopRules:
    """Which stop rules apply. The defaults are what eval and serve use; `off()` is the raw completion."""

    mode: str = "auto"  # auto | single | multi   (auto: line_mode() decides from the cursor)
    block: bool = True  # cut when the completion leaves the enclosing block
    repeats: bool = True  # drop repeated lines
    suffix_overlap: bool = True  # drop a tail that repeats the start of the suffix
    syntax: bool = True  # reject a completion whose insertion adds syntax errors (tree-sitter)
    max_lines: int = 0  # 0: no cap (multi-line mode)
    trim: bool = True  # drop trailing whitespace

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"stop rules: mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.max_lines < 0:
            raise ValueError(f"stop rules: max_lines must be 0 (no cap) or more, not {self.max_lines}")

    @classmethod
    def off(cls) -> StopRules:
        """The raw completion: only the end token and stop strings (which the engines apply) end it."""
        return cls(mode="multi", block=False, repeats=False, suffix_overlap=False, syntax=False, trim=False)


@dataclass(frozen=True, slots=True)
class Processed:
    """What to insert, the line mode used, and the rules that changed the text, in the order they ran."""

    text: str  # "" is a valid answer: nothing to insert
    mode: str  # "single" | "multi"
    cuts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Syntax:
    """What the stop rules know about one language: plain data, one entry per language in SYNTAX."""

    blocks: str  # "indent": a dedent ends a block (Python); "brackets": a closing bracket does
    line_openers: tuple[str, ...]  # code ending with one of these opens a block: multi-line completion
    skip: tuple[str, ...]  # regular expressions for comments and string/char literals (brackets inside don't count)
    block_openers: tuple[str, ...] = ()  # indent languages: a line ending with one of these opens an indented block


# Literal forms. A single-line string may be unterminated (it then runs to the end of the line) so that a cursor
# inside one is detected; char literals must be closed (Rust lifetimes `'a` are not literals).
_LINE_COMMENT = r"//[^\n]*"
_BLOCK_COMMENT = r"/\*[\s\S]*?(?:\*/|\Z)"
_DQ = r'"(?:\\[\s\S]|[^"\\\n])*"?'
_SQ = r"'(?:\\[\s\S]|[^'\\\n])*'?"
_CHAR = r"'(?:\\[^'\n]*|[^\\'\n])'"
# A JavaScript regular expression literal: a `/` where an expression starts (after an operator, an opening bracket,
# `,` `;` `:` or `return`), never `//` or `/*`; a class `[...]` may hold `/`. After a value a `/` divides.
_JS_REGEX = r"(?:(?<=[=(,:;!&|?{}\[\n])|(?<=return))[ \t]*/(?![/*])(?:\\.|\[(?:\\.|[^\]\\\n])*\]|[^/\\\n\[])+/[A-Za-z]*"
_C_FAMILY = (":", "{", "(", "[")

SYNTAX: dict[str, Syntax] = {
    "python": Syntax(
        "indent",
        (":", "(", "[", "{"),
        (
            r"#[^\n]*",
            r'"""(?:\\[\s\S]|(?!""")[^\\])*(?:"""|\Z)',
            r"'''(?:\\[\s\S]|(?!''')[^\\])*(?:'''|\Z)",
            _DQ,
            _SQ,
        ),
        block_openers=(":",),
    ),
    "javascript": Syntax(
        "brackets",
        (*_C_FAMILY, "=>"),
        # No JavaScript string starts right after a word character (no prefixes): such a `'` is an apostrophe in
        # JSX text (`<p>Don't {x}</p>`), which would otherwise hide the rest of its line.
        (_LINE_COMMENT, _BLOCK_COMMENT, _JS_REGEX, _DQ, r"(?<![\w$])" + _SQ, r"`(?:\\[\s\S]|[^`\\])*`?"),
    ),
    "go": Syntax("brackets", _C_FAMILY, (_LINE_COMMENT, _BLOCK_COMMENT, _DQ, r"`[^`]*`?", _CHAR)),
    "rust": Syntax(
        "brackets",
        ("{", "(", "[", "=>"),
        (
            _LINE_COMMENT,
            _BLOCK_COMMENT,
            r'(?<!\w)b?r(?P<hashes>#*)"[\s\S]*?(?:"(?P=hashes)|\Z)',
            r'"(?:\\[\s\S]|[^"\\])*"?',
            r"b?'(?:\\[^'\n]*|[^\\'\n])'",
        ),
    ),
    "java": Syntax("brackets", _C_FAMILY, (_LINE_COMMENT, _BLOCK_COMMENT, r'"""[\s\S]*?(?:"""|\Z)', _DQ, _CHAR)),
    "c": Syntax("brackets", _C_FAMILY, (_LINE_COMMENT, _BLOCK_COMMENT, _DQ, _CHAR)),
    "cpp": Syntax(
        "brackets",
        _C_FAMILY,
        (
            _LINE_COMMENT,
            _BLOCK_COMMENT,
            r'(?<!\w)(?:u8|[uUL])?R"(?P<delim>[^()\\\s]{0,16})\([\s\S]*?(?:\)(?P=delim)"|\Z)',
            _DQ,
            _CHAR,
        ),
    ),
}
SYNTAX["typescript"] = SYNTAX["tsx"] = SYNTAX["javascript"]
_DEFAULT_LINE_OPENERS = (":", "{", "(", "[")


def _compile(syntax: Syntax) -> re.Pattern[str]:
    skip = "|".join(f"(?:{p})" for p in syntax.skip)
    return re.compile(rf"(?P<skip>{skip})|(?P<open>[(\[{{])|(?P<close>[)\]}}])")


_LEXERS: dict[str, re.Pattern[str]] = {name: _compile(s) for name, s in SYNTAX.items()}
_BRACKETS_ONLY = _compile(Syntax("brackets", (), (r"(?!)",)))  # other languages: no literal is known


# ---------------------------------------------------------------- lexing


@dataclass(slots=True)
class _Lexed:
    brackets: list[tuple[int, str]]  # (offset, bracket) outside strings and comments
    skips: list[tuple[int, int]]  # (start, end) of strings and comments


def _lex(lexer: re.Pattern[str], text: str) -> _Lexed:
    out = _Lexed([], [])
    for m in lexer.finditer(text):
        if m.lastgroup == "skip":
            out.skips.append(m.span())
        else:
            out.brackets.append((m.start(), m.group()))
    return out


def _open_stack(brackets: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Brackets left open at the end, (offset, bracket), innermost last: a closer pops a matching opener; a stray
    closer is ignored."""
    stack: list[tuple[int, str]] = []
    for pos, b in brackets:
        if b in _OPENERS:
            stack.append((pos, b))
        elif stack and stack[-1][1] == _CLOSERS[b]:
            stack.pop()
    return stack


def _closed_by(suffix_brackets: list[tuple[int, str]], stack: list[tuple[int, str]]) -> int:
    """How many of the innermost prefix brackets (top of `stack`) the suffix closes, in order."""
    own: list[str] = []
    closed = 0
    for _, b in suffix_brackets:
        if b in _OPENERS:
            own.append(b)
        elif own:
            own.pop()
        elif closed < len(stack) and stack[-1 - closed][1] == _CLOSERS[b]:
            closed += 1
        else:
            break
    return closed


def _prefix_state(lexer: re.Pattern[str], prefix_window: str) -> tuple[list[tuple[int, str]], bool]:
    """Brackets open at the cursor, (offset, bracket) innermost last, and whether the cursor is inside a string or
    comment."""
    lexed = _lex(lexer, prefix_window + "\x01")  # a probe character: a literal that reaches it is still open
    inside = bool(lexed.skips) and lexed.skips[-1][1] > len(prefix_window)
    return _open_stack(lexed.brackets), inside


# ---------------------------------------------------------------- windows and lines


def _last_lines(text: str, n: int) -> str:
    """The text after the (n+1)-th newline from the end: the current partial line and n lines before it; at most
    WINDOW_CHARS characters of it."""
    floor = max(0, len(text) - WINDOW_CHARS)
    pos = len(text)
    for _ in range(n + 1):
        pos = text.rfind("\n", floor, pos)
        if pos < 0:
            return text[floor:]
    return text[pos + 1 :]


_WORD_START = re.compile(r"[ \t]*[A-Za-z_@]")
_WINDOW_TRIES = 8  # window starts tried before the cursor is taken to be inside a literal


def prefix_window(prefix: str, language: str = "") -> str:
    """The part of the prefix the rules read: the cursor's line and up to WINDOW_LINES lines before it, starting at
    a line likely to be outside strings and comments.

    A window that starts inside a multi-line string or comment inverts code and text for tree-sitter and the lexer
    (hundreds of errors, and a parse ten times slower), so the window starts at the first line that begins with a
    word character (or `@`) at the smallest indentation such lines have in it (the cursor's line aside): a
    top-level or member declaration, or the statement that opened the brackets the cursor is in. Text lines of a
    string can look the same (an SQL query at column 0 inside a function): where the language's lexer, read from
    that line, puts the cursor inside a literal, the next such line (by indentation, then order) is tried, up to
    _WINDOW_TRIES of them; when every one does, the cursor is taken to be in a literal and the first is kept.
    """
    window = _last_lines(prefix, WINDOW_LINES)
    if len(window) == len(prefix):
        return window  # the whole prefix: it starts at the top of the file
    lines = window.split("\n")[:-1]
    starts = sorted((_indent(line), i) for i, line in enumerate(lines) if _WORD_START.match(line))
    if not starts:
        return window
    offsets = list(accumulate((len(line) + 1 for line in lines), initial=0))
    first = window[offsets[starts[0][1]] :]
    lexer = _LEXERS.get(language)
    if lexer is None:
        return first
    for _, i in starts[:_WINDOW_TRIES]:
        candidate = window[offsets[i] :]
        if not _prefix_state(lexer, candidate)[1]:
            return candidate
    return first


def suffix_window(suffix: str) -> str:
    """The rest of the cursor's line and up to WINDOW_LINES lines after it."""
    return _first_lines(suffix, WINDOW_LINES)


def _first_lines(text: str, n: int) -> str:
    """The rest of the current line and n lines after it (with their newlines); at most WINDOW_CHARS characters."""
    ceiling = min(len(text), WINDOW_CHARS)
    pos = -1
    for _ in range(n + 1):
        pos = text.find("\n", pos + 1, ceiling)
        if pos < 0:
            return text[:ceiling]
    return text[: pos + 1]


def _rest_of_line(suffix: str) -> str:
    nl = suffix.find("\n", 0, WINDOW_CHARS)
    return suffix[:WINDOW_CHARS] if nl < 0 else suffix[:nl]


def _indent(line: str) -> int:
    n = len(line) - len(line.lstrip(" \t"))
    return len(line[:n].expandtabs(8))


def _strip_comment(lexer: re.Pattern[str] | None, line: str) -> str:
    """The line without a trailing comment (only comments that run to the end of the line)."""
    if lexer is None:
        return line
    for m in lexer.finditer(line):
        if m.lastgroup == "skip" and m.end() == len(line) and m.group().startswith(("#", "//", "/*")):
            return line[: m.start()]
    return line


def line_mode(prefix: str, suffix: str, language: str) -> str:
    """Whether a completion at the cursor between prefix and suffix is "single" or "multi"-line (module docstring)."""
    after = _rest_of_line(suffix).strip()
    if after.strip(")]};,"):
        return "single"
    # The cursor's line up to the cursor, at most WINDOW_CHARS of it: a 5 MB minified line is one line, and
    # lexing all of it for a trailing comment took a second per keystroke.
    before = prefix[max(prefix.rfind("\n") + 1, len(prefix) - WINDOW_CHARS) :]
    if not before.strip():
        return "multi"
    syntax, lexer = SYNTAX.get(language), _LEXERS.get(language)
    openers = syntax.line_openers if syntax else _DEFAULT_LINE_OPENERS
    if lexer is not None and _in_string(lexer, before):
        return "single"  # `f("a:` goes on with the string, not with a block
    code = _strip_comment(lexer, before).rstrip()
    return "multi" if code.endswith(openers) else "single"


def _in_string(lexer: re.Pattern[str], line: str) -> bool:
    """The end of `line` is inside a string literal that opened on it (comments do not count)."""
    skips = _lex(lexer, line + "\x01").skips  # a probe character: a literal that reaches it is still open
    if not skips or skips[-1][1] <= len(line):
        return False
    return not line[skips[-1][0] :].startswith(("#", "//", "/*"))


# ---------------------------------------------------------------- rules


def _block_exit(text: str, prefix_window: str, suffix_window: str, language: str) -> str:
    syntax, lexer = SYNTAX.get(language), _LEXERS.get(language)
    if syntax is None or lexer is None:
        return text
    stack, inside = _prefix_state(lexer, prefix_window)
    if inside:
        return text
    opened_before = stack[0][0] if stack else None  # the outermost bracket open at the cursor
    lexed = _lex(lexer, text)
    end = len(text)
    own = 0  # brackets the completion opened and has not closed
    depth_at: list[tuple[int, int]] = [(0, len(stack))]  # (offset, brackets open from there on, the prefix's too)
    all_closed_at: int | None = None  # where the completion closed the last bracket open at the cursor
    for pos, b in lexed.brackets:
        if b in _OPENERS:
            own += 1
        elif own:
            own -= 1
        else:  # closes something opened before the cursor
            if not stack or stack[-1][1] != _CLOSERS[b] or _closed_by(_lex(lexer, suffix_window).brackets, stack):
                line_start = text.rfind("\n", 0, pos) + 1
                end = line_start if line_start > 0 and not text[line_start:pos].strip() else pos
                break
            if syntax.blocks != "indent":  # the completion finishes the block: its line ends the completion
                nl = text.find("\n", pos)
                end = len(text) if nl < 0 else nl
                break
            stack = stack[:-1]  # an expression closed (Python `):`): the indentation rule decides
            if not stack:
                all_closed_at = pos
        depth_at.append((pos + 1, len(stack) + own))
    if syntax.blocks == "indent":
        limit = _block_limit(prefix_window, text, opened_before, all_closed_at)
        if limit is not None:
            end = min(end, _dedent_cut(text[:end], limit, lexed, depth_at))
    return text[:end]


def _dedent_cut(text: str, limit: int, lexed: _Lexed, depth_at: list[tuple[int, int]]) -> int:
    """Offset of the first line after the first that is indented less than limit, outside strings and brackets
    (len(text): none). As in Python, a line holding only a comment and a line continued by a backslash at the end
    of the one before have no indentation of their own."""
    skip_starts = [s for s, _ in lexed.skips]
    offsets = [o for o, _ in depth_at]
    start = text.find("\n") + 1
    while start > 0:
        nl = text.find("\n", start)
        line = text[start:] if nl < 0 else text[start:nl]
        i = bisect_right(skip_starts, start) - 1
        in_literal = i >= 0 and lexed.skips[i][0] < start < lexed.skips[i][1]
        in_brackets = depth_at[bisect_right(offsets, start) - 1][1] > 0
        continued = text[: start - 1].rstrip("\r").endswith("\\")
        code = line.strip() and not line.lstrip().startswith("#") and not continued
        if code and not in_literal and not in_brackets and _indent(line) < limit:
            return start
        start = nl + 1
    return len(text)


def _opens_block(line: str) -> bool:
    return _strip_comment(_LEXERS["python"], line).rstrip().endswith(SYNTAX["python"].block_openers)


def _block_limit(prefix_window: str, text: str, opened_before: int | None, all_closed_at: int | None) -> int | None:
    """Smallest indentation a completion line may have to stay in the cursor's block (indent languages); None when
    there is nothing above the cursor to tell.

    Inside brackets opened before the cursor, the block is the statement's that opened them (its first line's
    indentation; deeper when the completion closes the brackets on a line ending with `:`, as `):` ends a `def`)."""
    current = prefix_window[prefix_window.rfind("\n") + 1 :]
    if opened_before is not None:
        statement = prefix_window[prefix_window.rfind("\n", 0, opened_before) + 1 :]
        if all_closed_at is None:
            return _indent(statement)  # every line is inside the brackets: nothing to cut
        line_start = text.rfind("\n", 0, all_closed_at) + 1
        nl = text.find("\n", all_closed_at)
        closing = (current if line_start == 0 else "") + text[line_start : len(text) if nl < 0 else nl]
        return _indent(statement) + (1 if _opens_block(closing) else 0)
    lines = prefix_window.split("\n")
    ref = current if current.strip() else next((ln for ln in reversed(lines[:-1]) if ln.strip()), None)
    if ref is None:
        return None
    if _opens_block(ref):
        return _indent(ref) + 1
    if current.strip():
        return _indent(ref)
    first = text.split("\n", 1)[0]
    return min(_indent(ref), _indent(current + first) if first.strip() else _indent(current))


def _repeat_cut(text: str, before: str) -> int | None:
    """Offset where a repeated group of lines starts (None: no repeat). `before` is the cursor's line up to the
    cursor: the completion's first line is compared as the whole line it completes."""
    seen: list[tuple[int, str]] = []  # (line start offset, whole line without trailing whitespace)
    start = 0
    for i, line in enumerate(text.split("\n")):
        body = (before + line if i == 0 else line).rstrip()
        if any(c.isalnum() for c in body):
            seen.append((start, body))
            n = len(seen)
            for p in range(1, min(MAX_REPEAT_PERIOD, n // 2) + 1):
                if all(seen[n - 1 - k][1] == seen[n - 1 - p - k][1] for k in range(p)):
                    return seen[n - p][0]
        start += len(line) + 1
    return None


def _wordy(c: str) -> bool:
    return c.isalnum() or c == "_"


def _suffix_overlap(text: str, suffix: str, language: str) -> str:
    body = text.rstrip()
    head = suffix[: len(body)]
    lexer = _LEXERS.get(language, _BRACKETS_ONLY)
    for k in range(len(head), 0, -1):
        if head[k - 1] != body[-1] or not body.endswith(head[:k]):
            continue
        cut = len(body) - k
        if cut > 0 and _wordy(body[cut - 1]) and _wordy(head[0]):
            continue  # the tail starts inside a word
        if "\n" not in head[:k] and _closes_own(lexer, body, cut):
            continue  # a short tail such as `)` that closes the completion's own `(`
        return body[:cut]
    return text


def _closes_own(lexer: re.Pattern[str], body: str, cut: int) -> bool:
    """True when body[cut:] closes a bracket opened in body[:cut]."""
    if not _open_stack(_lex(lexer, body[:cut]).brackets):
        return False
    depth = 0
    for _, b in _lex(lexer, body[cut:]).brackets:
        if b in _OPENERS:
            depth += 1
        elif depth:
            depth -= 1
        else:
            return True
    return False


_TRAILING = re.compile(r"[ \t]+(?=\r?\n)")


def _trim(text: str, suffix: str) -> str:
    text = _TRAILING.sub("", text)
    return text.rstrip() if not _rest_of_line(suffix).strip() else text


# ---------------------------------------------------------------- syntax check


def _count_errors(node: ts.Node, limit: int) -> int:
    """ERROR and MISSING nodes under node, up to limit + 1 (only subtrees that have an error are visited)."""
    count = 0
    todo = [node]
    while todo and count <= limit:
        n = todo.pop()
        if n.is_error or n.is_missing:
            count += 1
        todo.extend(c for c in n.children if c.has_error)
    return count


_LOCAL = threading.local()


def _parser(language: str) -> ts.Parser:
    """One parser per language and thread (a parser must not be used by two threads at once)."""
    parsers: dict[str, ts.Parser] | None = getattr(_LOCAL, "parsers", None)
    if parsers is None:
        parsers = _LOCAL.parsers = {}
    if language not in parsers:
        parsers[language] = ts.Parser(get_language(language))
    return parsers[language]


def _point_after(text: bytes) -> tuple[int, int]:
    """(row, column in bytes) of the end of text, from its start."""
    return text.count(b"\n"), len(text) - text.rfind(b"\n") - 1


def syntax_errors(prefix: str, middle: str, suffix: str, language: str) -> int | None:
    """ERROR + MISSING nodes in window(prefix) + middle + window(suffix); None for a language without a grammar."""
    if language not in LANGUAGES:
        return None
    data = (prefix_window(prefix, language) + middle + suffix_window(suffix)).encode("utf-8")
    return _count_errors(_parser(language).parse(data).root_node, sys.maxsize)


def adds_syntax_errors(prefix: str, completion: str, suffix: str, language: str) -> bool:
    """True when inserting completion adds ERROR/MISSING nodes to the window around the cursor (never for a
    language without a grammar). See the module docstring for the window and the MAX_WINDOW_ERRORS cap."""
    return _adds_errors(prefix_window(prefix, language), completion, suffix_window(suffix), language)


def _adds_errors(prefix_win: str, completion: str, suffix_win: str, language: str) -> bool:
    if language not in LANGUAGES or not completion:
        return False
    pw, mid, sw = prefix_win.encode("utf-8"), completion.encode("utf-8"), suffix_win.encode("utf-8")
    parser = _parser(language)
    tree = parser.parse(pw + mid + sw)
    if not tree.root_node.has_error:
        return False
    added = _count_errors(tree.root_node, MAX_WINDOW_ERRORS)
    row, col = _point_after(pw)
    mrow, mcol = _point_after(mid)
    end_point = (row + mrow, mcol if mrow else col + mcol)
    tree.edit(
        start_byte=len(pw),
        old_end_byte=len(pw) + len(mid),
        new_end_byte=len(pw),
        start_point=(row, col),
        old_end_point=end_point,
        new_end_point=(row, col),
    )
    before = _count_errors(parser.parse(pw + sw, tree).root_node, min(added, MAX_WINDOW_ERRORS))
    if before > MAX_WINDOW_ERRORS:
        return False  # the window is not code tree-sitter can read (inside a long string, a broken file): no verdict
    return added > before


# ---------------------------------------------------------------- entry point


def _common_start(a: str, b: str) -> int:
    """How many characters a and b share at their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Settled:
    """A predicate on the text generated so far for one cursor: True once the stop rules have decided, so that
    `postprocess` gives the same answer for it as for any longer text that starts with it (module docstring).
    Cheap when called after every token: it looks again only when a line has ended since the last call."""

    def __init__(
        self, prefix: str, suffix: str, language: str, rules: StopRules = StopRules(), *, lead: str = ""
    ) -> None:
        self.mode = line_mode(prefix, suffix, language) if rules.mode == "auto" else rules.mode
        self.block = rules.block
        self.language = language
        self.lead = lead
        self._windows = (prefix_window(prefix, language), suffix_window(suffix))
        self._lines = 0  # newlines seen at the last look
        self.held = False  # it has answered True

    def __call__(self, completion: str) -> bool:
        text = completion[_common_start(self.lead, completion) :] if self.lead else completion
        lines = text.count("\n")
        if lines == self._lines:
            return self.held
        self._lines = lines
        if self.mode == "single":
            self.held = True
        elif self.block:
            self.held = text.find("\n", len(_block_exit(text, *self._windows, self.language))) >= 0
        return self.held


def postprocess(
    completion: str, prefix: str, suffix: str, language: str, rules: StopRules = StopRules(), *, lead: str = ""
) -> Processed:
    """Apply the stop rules to a raw completion for the cursor between prefix and suffix (see module docstring).

    lead: the blanks that ended the prefix and that rendering moved into the middle (`Rendered.lead`); the
    editor holds them already, so the completion's own copy (as much of it as it wrote) is dropped first.
    """
    mode = line_mode(prefix, suffix, language) if rules.mode == "auto" else rules.mode
    cuts: list[str] = []
    text = completion[_common_start(lead, completion) :] if lead else completion

    def step(name: str, new: str) -> None:
        nonlocal text
        if new != text:
            text = new
            cuts.append(name)

    if mode == "single":
        step("single_line", text.split("\n", 1)[0])
    pw, sw = prefix_window(prefix, language), suffix_window(suffix)
    if rules.block and text:
        step("block_exit", _block_exit(text, pw, sw, language))
    if rules.repeats and text:
        at = _repeat_cut(text, prefix[prefix.rfind("\n") + 1 :])
        if at is not None:
            step("repeat", text[:at])
    if rules.max_lines and mode == "multi":
        step("max_lines", "\n".join(text.split("\n")[: rules.max_lines]))
    if rules.suffix_overlap and text and suffix:
        step("suffix_overlap", _suffix_overlap(text, suffix, language))
    if rules.trim:
        step("trailing_space", _trim(text, suffix))
    if rules.syntax and text.strip() and _adds_errors(pw, text, sw, language):
        text = ""
        cuts.append("syntax_reject")
    return Processed(text, mode, tuple(cuts))
