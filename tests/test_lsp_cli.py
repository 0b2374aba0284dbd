"""`fimtune serve` as editors start it: raw LSP frames over stdio (stdout holds nothing else) and over TCP."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

SETTINGS = {"engine": "fixed", "debounceMs": 0, "fixed": {"text": "return a + b\n"}}
# A client that renders inline completions itself (VS Code 1.9x, Neovim 0.12) and offers UTF-16 only.
CAPABILITIES = {
    "general": {"positionEncodings": ["utf-16"]},
    "textDocument": {"inlineCompletion": {"dynamicRegistration": False}, "completion": {}},
}


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One message; anything on the stream that is not a well-formed frame fails the test."""
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        assert line.endswith(b"\r\n"), f"not an LSP header line: {line!r}"
        if line == b"\r\n":
            break
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return json.loads(body)


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.reader, self.writer = reader, writer
        self.next_id = 0
        self.notifications: list[dict[str, Any]] = []

    def notify(self, method: str, params: Any) -> None:
        self.writer.write(frame({"jsonrpc": "2.0", "method": method, "params": params}))

    async def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:  # JSON-RPC lets a request without parameters leave `params` out, as Neovim does
            message["params"] = params
        self.writer.write(frame(message))
        while True:
            message = await asyncio.wait_for(read_frame(self.reader), 30)
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message
                return message["result"]
            self.notifications.append(message)

    async def run(self, root: Path) -> None:
        """Initialize, complete once inline and once through textDocument/completion, shut down, exit."""
        init = await self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": CAPABILITIES,
                "initializationOptions": SETTINGS,
            },
        )
        assert init["capabilities"]["inlineCompletionProvider"] == {}
        self.notify("initialized", {})
        while (await self.request("fimtune/status", None))["state"] != "ready":
            await asyncio.sleep(0.02)
        uri = (root / "a.py").as_uri()
        doc = {"uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    \n"}
        self.notify("textDocument/didOpen", {"textDocument": doc})
        where = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}}
        result = await self.request("textDocument/inlineCompletion", {**where, "context": {"triggerKind": 1}})
        assert [i["insertText"] for i in result["items"]] == ["return a + b"]
        assert result["items"][0]["command"]["command"] == "fimtune.accepted"
        assert await self.request("textDocument/completion", where) is None  # the inline item is enough
        assert await self.request("shutdown", None) is None
        self.notify("exit", None)


@pytest.mark.asyncio(loop_scope="function")
async def test_stdio_carries_only_protocol_frames(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fimtune",
        "serve",
        "--stdio",
        "--engine",
        "fixed",
        "--log-level",
        "debug",  # plenty of logging, all of it on stderr
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    session = Session(proc.stdout, proc.stdin)
    await session.run(tmp_path)
    stdout_rest = await asyncio.wait_for(proc.stdout.read(), 30)
    stderr = (await proc.stderr.read()).decode()
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert stdout_rest == b""  # nothing after the last frame
    assert "engine ready: fixed" in stderr  # logs went to stderr
    statuses = [n["params"]["state"] for n in session.notifications if n.get("method") == "fimtune/status"]
    assert statuses[-1] == "ready"
    assert any(n.get("method") == "window/logMessage" for n in session.notifications)


@pytest.mark.asyncio(loop_scope="function")
async def test_tcp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lsp_server", "--tcp", f"127.0.0.1:{port}", "--engine", "fixed", "--log-level", "error"
    )
    try:
        for _ in range(300):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the server did not listen on its --tcp port")
        session = Session(reader, writer)
        await session.run(tmp_path)
        writer.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def test_bad_flag_is_one_line_error() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "fimtune", "serve", "--tcp", "nowhere"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "HOST:PORT" in out.stderr
