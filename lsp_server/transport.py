"""The stdio transport: LSP base-protocol framing that answers or resynchronises on any input, never goes deaf.

pygls' reader takes only `Content-Length: N\\r\\n` exactly as written, so one mis-framed message (a length
counted in characters instead of UTF-8 bytes, a lower-case header name, two spaces after the colon, LF-only line
ends) left it deaf for good, and the next message over its 1 MiB line limit crashed it. This reader accepts any
header spelling, finds the body by its length and checks it is a whole JSON value: a length that falls short or
runs past the body is corrected at the next header, and whatever cannot be read as a message gets a JSON-RPC
error and a line in the log, after which reading goes on with the next header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"(?i)content-length[ \t]*:[ \t]*(\d+)")
_NEXT_HEADER = re.compile(rb"(?i)content-length[ \t]*:")
# Header lines other than Content-Length, before it in the same block (a blank line or two before them allowed).
_OTHER_HEADERS = re.compile(rb"(?:\r?\n)*(?:[!-9;-~]+[ \t]*:[^\r\n]*\r?\n)+")
MAX_HEADER_BYTES = 64 * 1024  # a header block longer than this is junk: skipped up to the next Content-Length
READ_BYTES = 1 << 20
SHORT_WAIT_S = 0.5  # a body still incomplete this long after its last bytes may carry a wrong Content-Length


BAD = object()  # a body that is not a JSON value (invalid JSON or UTF-8, or nested too deep to parse)
MORE = object()  # no whole message yet: more bytes are needed


def parse(data: bytes) -> object:
    """The JSON value of a body, or BAD."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return BAD


class Framer:
    """Cuts a byte stream into messages: `feed` takes bytes, `next_message` gives each body's JSON value (or BAD)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next_message(self, idle: bool = False) -> object:
        """The next message's JSON value (BAD when its body is not JSON), or MORE when more bytes are needed.
        `idle`: no bytes came for a while, so a body shorter than its Content-Length that is a whole JSON value
        is taken as it is."""
        while True:
            start = _NEXT_HEADER.search(self.buf)
            if start is None:
                if len(self.buf) > MAX_HEADER_BYTES:
                    log.warning("skipped %d bytes that hold no Content-Length header", len(self.buf) - 32)
                    del self.buf[:-32]
                return MORE
            if start.start():
                junk = bytes(self.buf[: start.start()])
                if junk.strip() and not _OTHER_HEADERS.fullmatch(junk):  # Content-Type may come first (LSP)
                    log.warning("skipped %d bytes before a header: %r", len(junk.strip()), junk.strip()[:80])
                del self.buf[: start.start()]
            end = _HEADER_END.search(self.buf)
            if end is None:
                if len(self.buf) > MAX_HEADER_BYTES:
                    log.warning("a header block without its blank line; skipped")
                    del self.buf[: len("content-length")]
                    continue
                return MORE
            match = _CONTENT_LENGTH.match(self.buf, 0, end.start())
            if match is None:
                del self.buf[: end.end()]
                continue
            length = int(match.group(1))
            body_start = end.end()
            available = len(self.buf) - body_start
            if available >= length:
                value = parse(bytes(self.buf[body_start : body_start + length]))
                if value is not BAD:
                    del self.buf[: body_start + length]
                    return value
                # Too short (counted in characters) or too long (runs into the next message): the body ends
                # where the next header starts.
                value = self._up_to_next_header(body_start, length)
                if value is not MORE:
                    return value
                if not idle:
                    return MORE  # the rest of a short-counted body may still come
                del self.buf[: body_start + length]
                return BAD  # the caller answers a parse error
            if not idle:
                return MORE  # most often the body is still arriving: look for a wrong length only when idle
            value = parse(bytes(self.buf[body_start:]))
            if value is not BAD and available:
                log.warning("Content-Length %d is longer than the body (%d bytes)", length, available)
                del self.buf[:]
                return value
            return self._up_to_next_header(body_start, length)

    def _up_to_next_header(self, body_start: int, length: int) -> object:
        """The body taken to end where the next header starts, when that is a JSON value (a wrong length)."""
        nxt = _NEXT_HEADER.search(self.buf, body_start)
        if nxt is None:
            return MORE
        value = parse(bytes(self.buf[body_start : nxt.start()]))
        if value is BAD:
            return MORE
        log.warning("Content-Length %d did not match the body (%d bytes)", length, nxt.start() - body_start)
        del self.buf[: nxt.start()]
        return value


async def run_stdio(reader: asyncio.StreamReader, stop: threading.Event, deliver: Callable[[object], None]) -> None:
    """Read framed messages from `reader` until it ends or `stop` is set; each JSON value (or BAD) goes to
    `deliver`."""
    framer = Framer()
    idle = False
    while not stop.is_set():
        value = framer.next_message(idle)
        if value is not MORE:
            deliver(value)
            idle = False
            continue
        try:
            data = await asyncio.wait_for(reader.read(READ_BYTES), SHORT_WAIT_S if framer.buf else None)
        except TimeoutError:
            idle = True
            continue
        if not data:
            return
        framer.feed(data)
        idle = False
