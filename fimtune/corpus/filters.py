"""Content filters: decode a file's bytes and keep it, or drop it for a named reason (binary, minified, ...)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cached_property, lru_cache

import numpy as np

from fimtune.config import ConfigError, FilterConfig

BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 8192
# Share of control bytes (other than tab, newlines, form feed, escape) that makes a file binary.
MAX_CONTROL_FRACTION = 0.1
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b") + b"\x7f"
_ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_SPACE = np.frombuffer(b" \t\n\x0b\x0c\r", dtype=np.uint8)
# What str.splitlines() breaks lines at ("\r\n" is one break): ASCII ones, and three more outside ASCII.
_ASCII_BREAKS = np.frombuffer(b"\n\r\x0b\x0c\x1c\x1d\x1e", dtype=np.uint8)
_OTHER_BREAKS = ("\x85", "\u2028", "\u2029")
_BREAK_CHARS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e" + "".join(_OTHER_BREAKS))
# Lines that open a comment or docstring at column 0: where generated-file markers are looked for.
_COMMENT_STARTS = ("#", "//", "--", ";", "%")
_BLOCK_OPEN = re.compile(r"(/\*|<!--|[rRbBuU]{0,2}(?:\"\"\"|'''))")
_BLOCK_CLOSE = {"/*": "*/", "<!--": "-->", '"""': '"""', "'''": "'''"}


class Doc:
    """One file under test: its bytes (BOM removed) and, once decoded, its text and line statistics.

    The statistics are exact but made without splitting the whole text where they can be: from a histogram
    of the bytes, the lines of the head of the file, the byte length of the longest "\n"-separated line.
    """

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.text = ""

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def counts(self) -> np.ndarray:
        """How many times each byte value occurs in data."""
        return np.bincount(np.frombuffer(self.data, dtype=np.uint8), minlength=256)

    @cached_property
    def line_count(self) -> int:
        """len(self.lines), counted rather than split."""
        breaks = int(self.counts[_ASCII_BREAKS].sum())
        if self.counts[0x0D]:
            breaks -= self.text.count("\r\n")
        if self.counts[0x80:].any():
            breaks += sum(map(self.text.count, _OTHER_BREAKS))
        return breaks + (bool(self.text) and self.text[-1] not in _BREAK_CHARS)

    @cached_property
    def longest_line_bytes(self) -> int:
        """Bytes in the longest "\n"-separated line: no line of self.lines has more characters."""
        ends = np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == 0x0A)
        if not len(ends):
            return len(self.data)
        return int(max(ends[0], np.diff(ends).max(initial=0) - 1, len(self.data) - 1 - ends[-1]))

    def head_lines(self, n: int) -> list[str]:
        """self.lines[:n], splitting only as much of the text as it takes."""
        if "lines" in self.__dict__:
            return self.lines[:n]
        size = 4096
        while True:
            lines = self.text[:size].splitlines()
            if len(lines) > n:  # line n-1 ended before the cut (line n starts there)
                return lines[:n]
            if size >= len(self.text):
                return lines
            size *= 4


# A filter looks at a Doc and returns None (keep) or the reason to drop it.
Filter = Callable[[Doc, FilterConfig], str | None]


def is_binary(doc: Doc, cfg: FilterConfig) -> str | None:
    head = doc.data[:SNIFF_BYTES]
    if b"\x00" in head:
        return "binary"
    controls = len(head) - len(head.translate(None, _CONTROL))
    return "binary" if head and controls / len(head) > MAX_CONTROL_FRACTION else None


def is_empty(doc: Doc, cfg: FilterConfig) -> str | None:
    return "empty" if not doc.text.strip() else None


def has_too_few_lines(doc: Doc, cfg: FilterConfig) -> str | None:
    if sum(1 for line in doc.head_lines(64) if line and not line.isspace()) >= cfg.min_lines:
        return None
    nonblank = 0
    for line in doc.lines:
        if line and not line.isspace():
            nonblank += 1
            if nonblank >= cfg.min_lines:
                return None
    return "too_few_lines"


def is_minified(doc: Doc, cfg: FilterConfig) -> str | None:
    if doc.longest_line_bytes > cfg.max_line_length and max(map(len, doc.lines), default=0) > cfg.max_line_length:
        return "minified"
    crlf = doc.text.count("\r\n") if doc.counts[0x0D] else 0
    breaks = int(doc.counts[0x0A]) + int(doc.counts[0x0D]) - crlf
    mean = (len(doc.text) - breaks) / max(1, doc.line_count)
    return "minified" if mean > cfg.max_mean_line_length else None


def has_low_alnum(doc: Doc, cfg: FilterConfig) -> str | None:
    """Letters and digits over non-whitespace characters (a non-ASCII character counts as a letter)."""
    counts = doc.counts
    non_ascii_bytes = int(counts[0x80:].sum())
    non_ascii_chars = len(doc.text) - (len(doc.data) - non_ascii_bytes)
    ascii_alnum, spaces = int(counts[_ALNUM].sum()), int(counts[_SPACE].sum())
    symbols = len(doc.data) - ascii_alnum - spaces - non_ascii_bytes  # ASCII punctuation and control bytes
    alnum = ascii_alnum + non_ascii_chars
    visible = alnum + symbols
    return "low_alnum" if visible and alnum / visible < cfg.min_alnum_fraction else None


@lru_cache(maxsize=8)
def generated_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The generated-file markers as one pattern; a ConfigError naming the marker when one is not valid."""
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"filters.generated_markers[{i}]: not a valid regular expression: {e}") from None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error as e:  # e.g. a global flag such as (?i) that is not at the start
        raise ConfigError(f"filters.generated_markers: use scoped flags such as (?i:...): {e}") from None


def header_comments(lines: list[str]) -> list[str]:
    """The lines that are comments or docstrings opened at column 0 (so not code with a trailing comment)."""
    out: list[str] = []
    closer = ""
    for line in lines:
        if closer:
            out.append(line)
            if closer in line:
                closer = ""
            continue
        if line.startswith(_COMMENT_STARTS):
            out.append(line)
            continue
        opened = _BLOCK_OPEN.match(line)
        if opened:
            out.append(line)
            end = _BLOCK_CLOSE[opened.group(1).lstrip("rRbBuU")]
            if end not in line[opened.end() :]:
                closer = end
    return out


def is_generated(doc: Doc, cfg: FilterConfig) -> str | None:
    """A generated-code marker in a comment or docstring among the first lines."""
    if not cfg.generated_markers:
        return None
    head = "\n".join(header_comments(doc.head_lines(cfg.generated_header_lines)))
    return "generated" if head and generated_pattern(tuple(cfg.generated_markers)).search(head) else None


# Run in order: on the raw bytes before decoding, then on the text; the first reason drops the file.
BYTE_FILTERS: tuple[Filter, ...] = (is_binary,)
TEXT_FILTERS: tuple[Filter, ...] = (is_empty, is_minified, has_too_few_lines, has_low_alnum, is_generated)


def decode_and_filter(path: str, data: bytes, cfg: FilterConfig) -> tuple[str | None, str | None]:
    """(text, None) to keep the file, (None, reason) to drop it.

    A UTF-8 byte order mark is removed; everything else (CRLF included) is kept exactly, so that
    prefix + middle + suffix of any example equals the returned text.
    """
    if data.startswith(BOM):
        data = data[len(BOM) :]
    doc = Doc(path, data)
    if not data.strip():
        return None, "empty"
    for byte_filter in BYTE_FILTERS:
        if reason := byte_filter(doc, cfg):
            return None, reason
    try:
        doc.text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    for text_filter in TEXT_FILTERS:
        if reason := text_filter(doc, cfg):
            return None, reason
    return doc.text, None
