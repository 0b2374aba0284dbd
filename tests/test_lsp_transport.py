"""The stdio transport: mis-framed messages are read or resynchronised (never a deaf server), and every request
gets an answer, an error where nothing else fits. Unit tests of the framer, then the real server over stdio."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from lsp_server.transport import BAD, MORE, Framer

PING = {"jsonrpc": "2.0", "id": 1, "method": "fimtune/status"}


def frame(message: Any, header: str = "Content-Length: {n}\r\n\r\n", length: int | None = None) -> bytes:
    body = json.dumps(message, ensure_ascii=False).encode()
    return header.format(n=len(body) if length is None else length).encode() + body


def messages(data: bytes, idle: bool = True) -> list[object]:
    framer = Framer()
    framer.feed(data)
    out = []
    while (value := framer.next_message(idle)) is not MORE:
        out.append(value)
    return out


UNICODE = {"jsonrpc": "2.0", "id": 2, "method": "x", "params": {"text": "héllo wörld ✓ 😀" * 3}}


@pytest.mark.parametrize(
    "misframed",
    [
        frame(UNICODE, length=len(json.dumps(UNICODE, ensure_ascii=False))),  # counted in characters, not bytes
        frame(UNICODE, header="content-length: {n}\r\n\r\n"),  # lower-case name
        frame(UNICODE, header="Content-Length:  {n}\r\n\r\n"),  # two spaces after the colon
        frame(UNICODE, header="Content-Length: {n}\n\n"),  # LF-only line ends
        frame(UNICODE, header="Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: {n}\r\n\r\n"),
        frame(UNICODE, length=len(json.dumps(UNICODE, ensure_ascii=False).encode()) + 7),  # counted too long
    ],
)
def test_a_misframed_message_is_read_and_the_next_one_too(misframed: bytes) -> None:
    big = {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"text": "x = 1\n" * 300_000}}  # 1.8 MB
    assert messages(misframed + frame(PING) + frame(big) + frame(PING)) == [UNICODE, PING, big, PING]


def test_junk_and_bodies_that_are_not_json_are_skipped_with_bad() -> None:
    data = b"garbage without a header\r\n" + frame(PING) + b"Content-Length: 5\r\n\r\n{oops" + frame(PING)
    assert messages(data) == [PING, BAD, PING]
    assert messages(b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc") == [BAD]  # not UTF-8
    assert messages(b"Content-Length: 20000\r\n\r\n" + b"[" * 10_000 + b"]" * 10_000) == [BAD]  # too deep


def test_other_headers_before_content_length_are_read_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    typed = "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: {n}\r\n\r\n"
    with caplog.at_level("WARNING", logger="lsp_server.transport"):
        assert messages(frame(PING, header=typed) * 3) == [PING, PING, PING]
    assert not caplog.records
    with caplog.at_level("WARNING", logger="lsp_server.transport"):
        assert messages(b"garbage without a header\r\n" + frame(PING)) == [PING]
    assert "skipped" in caplog.text  # junk is still reported


def test_a_body_still_arriving_waits_for_its_bytes() -> None:
    data = frame(PING)
    framer = Framer()
    framer.feed(data[:-5])
    assert framer.next_message(idle=False) is MORE
    framer.feed(data[-5:])
    assert framer.next_message(idle=False) == PING


class Raw:
    """The server over stdio, written to byte by byte as a client would."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsp_server", "--engine", "fixed"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        length = 0
        while (line := self.proc.stdout.readline().strip()) != b"":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        message: dict[str, Any] = json.loads(self.proc.stdout.read(length))
        return message

    def answer(self, data: bytes) -> dict[str, Any]:
        """Send `data` and return the first response (notifications from the server are read past)."""
        self.write(data)
        while "method" in (message := self.read()):
            pass
        return message


@pytest.fixture
def server() -> Any:
    raw = Raw()
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"processId": None, "capabilities": {}}}
    assert raw.answer(frame(init))["id"] == 0
    raw.write(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
    yield raw
    if raw.proc.poll() is None:
        raw.proc.kill()
    raw.proc.wait()


def test_every_request_gets_an_answer(server: Raw) -> None:
    def error(data: bytes) -> tuple[object, int]:
        reply = server.answer(data)
        assert "error" in reply, reply
        return reply["id"], reply["error"]["code"]

    assert error(b"Content-Length: 9\r\n\r\n{not json") == (None, -32700)
    assert error(b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc") == (None, -32700)
    assert error(b"Content-Length: 20000\r\n\r\n" + b"[" * 10_000 + b"]" * 10_000) == (None, -32700)
    assert error(frame({"id": 5, "method": "fimtune/status"})) == (5, -32600)  # no jsonrpc
    assert error(frame([PING, PING])) == (None, -32600)  # a batch
    assert error(frame({"jsonrpc": "2.0", "id": {"a": 1}, "method": "fimtune/status"})) == (None, -32600)
    assert error(frame({"jsonrpc": "2.0", "id": None, "method": "fimtune/status"})) == (None, -32600)
    # Mis-framed, then well framed: both answered.
    status = {"jsonrpc": "2.0", "id": 7, "method": "fimtune/status", "params": {"note": "✓✓✓"}}
    assert server.answer(frame(status, header="content-length:  {n}\n\n"))["id"] == 7
    assert server.answer(frame(PING))["id"] == 1
    # After shutdown a request is refused with an error, and exit still ends the server.
    assert server.answer(frame({"jsonrpc": "2.0", "id": 8, "method": "shutdown"}))["id"] == 8
    assert error(frame({"jsonrpc": "2.0", "id": 9, "method": "fimtune/status"})) == (9, -32600)
    server.write(frame({"jsonrpc": "2.0", "method": "exit"}))
    start = time.monotonic()
    assert server.proc.wait(timeout=5) == 0 and time.monotonic() - start < 2.0
