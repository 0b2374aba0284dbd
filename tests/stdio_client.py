"""A minimal LSP client over a server's stdio, for tests that need the real process and its exact bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Client:
    """A minimal LSP client over the server's stdio: requests wait for their response, notifications are read
    past."""

    def __init__(self, settings: dict[str, Any], root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsp_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.next_id = 0
        self.request(
            "initialize",
            {"processId": None, "rootUri": root.as_uri(), "capabilities": {}, "initializationOptions": settings},
        )
        self.notify("initialized", {})

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            length = 0
            while (line := self.proc.stdout.readline().strip()) != b"":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            message = json.loads(self.proc.stdout.read(length))
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message
                return message.get("result")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the engine (built on a thread) is ready."""
        deadline = time.monotonic() + timeout
        while (status := self.request("fimtune/status", None))["state"] != "ready":
            assert status["state"] != "error" and time.monotonic() < deadline, status
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:  # a server that hangs must not outlive its test
                self.proc.kill()
                self.proc.wait()
