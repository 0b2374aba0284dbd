"""Open documents: text kept exactly (CRLF too), incremental edits, LSP positions <-> string and UTF-8 offsets.

LSP positions are (line, character) where lines end at `\\n`, `\\r\\n` or `\\r` (not at the other characters
`str.splitlines` knows), and a character counts UTF-16 code units unless the client and server agreed on
UTF-8 or UTF-32. Everything inside fimtune works on UTF-8 byte offsets; this module is the one place that
converts. Line starts are kept in a numpy array and shifted in place on each edit, so an edit to a 5 MB file
does not rescan it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import numpy as np
from pygls.uris import to_fs_path

_NEWLINE = re.compile(r"\r\n|\r|\n")
ENCODINGS = ("utf-16", "utf-8", "utf-32")


class PositionError(ValueError):
    """A position the document does not have (a line past the end, a negative number)."""


def line_starts(text: str, base: int = 0) -> np.ndarray:
    """String offsets (plus `base`) where a line begins after each line break in `text`."""
    return np.fromiter((m.end() + base for m in _NEWLINE.finditer(text)), dtype=np.int64)


def _units(text: str, encoding: str) -> int:
    """Length of `text` in the position encoding's code units."""
    if encoding == "utf-32" or text.isascii():
        return len(text)
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _index_in_line(line: str, units: int, encoding: str) -> int:
    """String index in `line` of the column `units` (clamped to the line's end, as LSP says). A column in
    the middle of a character moves to that character's end."""
    if encoding == "utf-32" or line.isascii():
        return min(units, len(line))
    count = 0
    for i, ch in enumerate(line):
        if count >= units:
            return i
        if encoding == "utf-8":
            count += len(ch.encode("utf-8", "surrogatepass"))
        else:
            count += 2 if ord(ch) > 0xFFFF else 1
    return len(line)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """text with each lone surrogate (a JSON "\\ud800" a client or engine sent; a Python str holds no valid pair)
    replaced by U+FFFD: both take one UTF-16 unit, so positions do not move, and the text can be encoded."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def utf8_offset(text: str, index: int) -> int:
    """The UTF-8 byte offset of string offset `index` in `text` (lone surrogates count as 3 bytes)."""
    head = text[:index]
    return index if head.isascii() else len(head.encode("utf-8", "surrogatepass"))


def uri_to_path(uri: str) -> str:
    """A file URI's local path; other schemes (untitled:, ...) give their path part."""
    return to_fs_path(uri) or unquote(urlparse(uri).path)


@dataclass
class Document:
    uri: str
    text: str
    version: int = 0
    language_id: str = ""
    encoding: str = "utf-16"
    path: str = ""
    _starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = without_lone_surrogates(self.text)
        if self.encoding not in ENCODINGS:
            self.encoding = "utf-16"
        self.path = self.path or uri_to_path(self.uri)
        self._reset()

    def _reset(self) -> None:
        self._starts = np.concatenate([np.zeros(1, dtype=np.int64), line_starts(self.text)])

    @property
    def line_count(self) -> int:
        return len(self._starts)

    @property
    def crlf(self) -> bool:
        """Whether the document's first line break is CRLF (suggestions are given the same line endings)."""
        m = _NEWLINE.search(self.text, 0, 1 << 16)
        return m is not None and m.group() == "\r\n"

    def _line_bounds(self, line: int) -> tuple[int, int]:
        """String offsets of a line's first character and of its end (before its line break)."""
        start = int(self._starts[line])
        if line + 1 < len(self._starts):
            end = int(self._starts[line + 1])
            if self.text.endswith("\r\n", start, end):
                end -= 2
            else:
                end -= 1
        else:
            end = len(self.text)
        return start, end

    def offset(self, line: int, character: int, *, past_end: bool = False) -> int:
        """String offset of an LSP position. A line past the end raises PositionError, unless `past_end` (an
        edit's range: Neovim ends one that deletes a document's last line, which has no line break, at the line
        after it) where it means the end of the document; a character past the line's end means the end of the
        line (LSP)."""
        if line < 0 or character < 0:
            raise PositionError(f"{self.uri}: position {line}:{character} is negative")
        if line >= len(self._starts) and past_end:
            return len(self.text)
        if line >= len(self._starts):
            raise PositionError(
                f"{self.uri}: position {line}:{character} is outside the document ({len(self._starts)} lines)"
            )
        start, end = self._line_bounds(line)
        return start + _index_in_line(self.text[start:end], character, self.encoding)

    def apply(self, text: str, start: tuple[int, int] | None = None, end: tuple[int, int] | None = None) -> None:
        """Replace a range (LSP positions) with `text`, or the whole document when no range is given."""
        text = without_lone_surrogates(text)
        if start is None or end is None:
            self.text = text
            self._reset()
            return
        a = self.offset(*start, past_end=True)
        b = self.offset(*end, past_end=True)
        if b < a:
            a, b = b, a
        # A "\r" before the edit and a "\n" after it (or at the edges of the new text) can join into one
        # line break: recompute the line starts around the edit from a little before it.
        old_len = len(self.text)
        self.text = self.text[:a] + text + self.text[b:]
        delta = len(self.text) - old_len
        lo = max(0, a - 1)
        hi_old = min(old_len, b + 1)
        first = int(np.searchsorted(self._starts, lo, side="right"))  # starts <= lo are kept
        last = int(np.searchsorted(self._starts, hi_old, side="right"))  # starts > hi_old are shifted
        region_end = hi_old + delta
        middle = line_starts(self.text[lo : region_end + 1], lo)
        middle = middle[(middle > lo) & (middle <= region_end)]
        tail = self._starts[last:] + delta
        self._starts = np.concatenate([self._starts[:first], middle, tail])


class Documents:
    """The open documents by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self.encoding = "utf-16"

    def open(self, uri: str, text: str, version: int, language_id: str) -> Document:
        doc = Document(uri, text, version, language_id, self.encoding)
        self._docs[uri] = doc
        return doc

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def close(self, uri: str) -> Document | None:
        return self._docs.pop(uri, None)

    def __iter__(self) -> Iterator[Document]:
        return iter(list(self._docs.values()))

    def __len__(self) -> int:
        return len(self._docs)
