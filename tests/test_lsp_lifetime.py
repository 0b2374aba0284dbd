"""The server's lifetime over real stdio: it exits within 2 s when stdin closes, on `exit` (0 after `shutdown`,
1 without, as LSP says), and when the client process named in `initialize` dies while stdin stays open; the
index's worker processes go with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SERVER = [sys.executable, "-m", "lsp_server", "--engine", "fixed"]
EXIT_WITHIN_S = 2.0


def send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    body = json.dumps({"jsonrpc": "2.0", **message}).encode()
    assert proc.stdin is not None
    proc.stdin.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    proc.stdin.flush()


def start(workspace: Path, process_id: int | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    params = {"processId": process_id, "rootUri": workspace.as_uri(), "capabilities": {}}
    send(proc, {"id": 1, "method": "initialize", "params": params})
    send(proc, {"method": "initialized", "params": {}})
    return proc


def exited_within(proc: subprocess.Popen[bytes], seconds: float) -> float:
    start_t = time.monotonic()
    try:
        proc.wait(timeout=seconds + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the server still ran {seconds + 5:.0f} s later")
    return time.monotonic() - start_t


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for i in range(260):  # more than POOL_THRESHOLD files: the index starts a worker process
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    return tmp_path


def children(pid: int) -> list[int]:
    psutil = pytest.importorskip("psutil")
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_exits_when_stdin_closes(workspace: Path) -> None:
    proc = start(workspace)
    time.sleep(0.5)
    assert proc.poll() is None and proc.stdin is not None
    proc.stdin.close()
    assert exited_within(proc, EXIT_WITHIN_S) <= EXIT_WITHIN_S


@pytest.mark.parametrize(("shutdown_first", "code"), [(True, 0), (False, 1)])
def test_exit_codes_follow_the_specification(workspace: Path, shutdown_first: bool, code: int) -> None:
    proc = start(workspace)
    if shutdown_first:
        send(proc, {"id": 2, "method": "shutdown"})
    send(proc, {"method": "exit"})
    assert exited_within(proc, EXIT_WITHIN_S) <= EXIT_WITHIN_S
    assert proc.returncode == code
    assert proc.stdin is not None
    proc.stdin.close()


def test_exits_when_the_client_process_dies_with_stdin_still_open(workspace: Path) -> None:
    client = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc = start(workspace, process_id=client.pid)
    try:
        deadline = time.monotonic() + 20
        while not children(proc.pid) and time.monotonic() < deadline:  # the index's worker process
            time.sleep(0.05)
        workers = children(proc.pid)
        client.kill()
        client.wait()
        assert exited_within(proc, EXIT_WITHIN_S + 0.5) <= EXIT_WITHIN_S + 0.5  # one poll of the client's pid
        time.sleep(0.3)
        left = [pid for pid in workers if _alive(pid)]
        assert not left, f"processes the server started outlived it: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def test_a_telemetry_file_that_blocks_hangs_neither_completions_nor_shutdown(tmp_path: Path) -> None:
    from tests.stdio_client import Client

    fifo = tmp_path / "telemetry.fifo"
    os.mkfifo(fifo)  # nobody ever reads it: a blocking open would wait forever
    settings = {
        "engine": "fixed",
        "fixed": {"text": "return a + b"},
        "debounceMs": 0,
        "telemetry": {"path": str(fifo), "includeText": False},
    }
    client = Client(settings, tmp_path)
    client.wait_ready()
    uri = (tmp_path / "t.py").as_uri()
    doc = {"uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    \n"}
    client.notify("textDocument/didOpen", {"textDocument": doc})
    params = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}}
    for _ in range(3):
        assert client.request("textDocument/inlineCompletion", params)["items"]
    start_t = time.monotonic()
    client.close()  # shutdown, exit, and the process ends
    assert time.monotonic() - start_t <= EXIT_WITHIN_S and client.proc.returncode == 0
