"""HTTP engines against servers that bend their API: a whole JSON answer to a streamed request, a redirect, an
endpoint that ignores max_tokens. Each server here is a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from fimtune.engines import EngineError, EngineSettings, make_engine
from fimtune.engines.http import MAX_CHARS_PER_TOKEN
from tests.test_engines_http import fim_request

Answer = Callable[[BaseHTTPRequestHandler, dict[str, object]], None]


@pytest.fixture
def server() -> Iterator[Callable[[Answer], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer(self, body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _json(handler: BaseHTTPRequestHandler, payload: dict[str, object], status: int = 200) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def test_openai_reads_a_whole_json_answer_from_a_server_that_ignores_stream(server: Callable[[Answer], str]) -> None:
    def answer(h: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
        assert body["stream"] is True
        choice = {"index": 0, "text": "    return x + 1", "finish_reason": "stop", "logprobs": None}
        _json(
            h, {"object": "text_completion", "choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}
        )

    engine = make_engine(EngineSettings(engine="openai", endpoint=server(answer)))
    c = engine.complete(fim_request(), threading.Event())
    assert (c.text, c.stop_reason, c.prompt_tokens, c.completion_tokens) == ("    return x + 1", "end", 9, 5)


def test_ollama_reads_a_non_streamed_answer(server: Callable[[Answer], str]) -> None:
    def answer(h: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
        _json(
            h,
            {
                "model": "m",
                "response": "    return x + 1",
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 9,
                "eval_count": 5,
            },
        )

    engine = make_engine(EngineSettings(engine="ollama", endpoint=server(answer), model="m"))
    c = engine.complete(fim_request(), threading.Event())
    assert c.text == "    return x + 1" and c.completion_tokens == 5


@pytest.mark.parametrize("backend", ["openai", "llamacpp", "ollama"])
def test_a_redirect_is_named_as_one(server: Callable[[Answer], str], backend: str) -> None:
    def answer(h: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
        h.send_response(302)
        h.send_header("Location", "https://sso.example.org/login")
        h.send_header("Content-Length", "0")
        h.end_headers()

    engine = make_engine(EngineSettings(engine=backend, endpoint=server(answer), model="m"))
    with pytest.raises(EngineError, match=r"answered HTTP 302, a redirect to https://sso.example.org/login"):
        engine.complete(fim_request(), threading.Event())


def test_an_endpoint_ignoring_max_tokens_is_cut_at_the_token_limit(server: Callable[[Answer], str]) -> None:
    sent = {"chunks": 0}

    def answer(h: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        try:
            for _ in range(10_000):  # 10 million characters, whatever max_tokens said
                chunk = {"choices": [{"index": 0, "text": "x" * 1000, "finish_reason": None}]}
                h.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                sent["chunks"] += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the engine hung up once it had enough

    engine = make_engine(EngineSettings(engine="openai", endpoint=server(answer)))
    start = time.perf_counter()
    c = engine.complete(fim_request(max_tokens=16), threading.Event())
    assert len(c.text) == 16 * MAX_CHARS_PER_TOKEN and c.stop_reason == "length"
    assert time.perf_counter() - start < 5.0
    time.sleep(0.2)
    assert sent["chunks"] < 10_000  # the stream was closed, not read to its end


def test_the_status_reports_a_dead_endpoint_and_recovers_when_it_answers(tmp_path: Path) -> None:
    from tests.stdio_client import Client

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    settings = {
        "engine": "openai",
        "endpoint": f"http://127.0.0.1:{port}",
        "template": "qwen2.5-coder",
        "debounceMs": 0,
        "timeoutMs": 3000,
    }
    client = Client(settings, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while (status := client.request("fimtune/status", None))["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["state"] == "error" and "cannot connect" in status["message"], status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                _json(self, {"choices": [{"index": 0, "text": "return a + b", "finish_reason": "stop"}]})

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            uri = (tmp_path / "a.py").as_uri()
            doc = {"uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    \n"}
            client.notify("textDocument/didOpen", {"textDocument": doc})
            params = {
                "textDocument": {"uri": uri},
                "position": {"line": 1, "character": 4},
                "context": {"triggerKind": 1},
            }
            items = client.request("textDocument/inlineCompletion", params)["items"]
            assert [i["insertText"] for i in items] == ["return a + b"]
            assert client.request("fimtune/status", None)["state"] == "ready"
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        client.close()


class _KeepAliveSSE(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: answers one streamed completion per connection, chunked and without
    `Connection: close`, then, like llama-server, does not answer the next request on that connection: it reads
    it and closes (the FIN a client meets when it reuses the connection a moment too early)."""

    protocol_version = "HTTP/1.1"
    requests: ClassVar[list[tuple[int, int]]] = []  # (connection number, request number on it)
    connections = 0
    answer_none = False

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1
        self.number, self.served = type(self).connections, 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.served += 1
        type(self).requests.append((self.number, self.served))
        if self.served > 1 or self.answer_none:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for text, finish in (("return a", None), (" + b", "stop")):
            event = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
            data = b"data: " + json.dumps(event).encode() + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[tuple[str, type[_KeepAliveSSE]]]:
    handler = type("Handler", (_KeepAliveSSE,), {"requests": [], "connections": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_a_reused_connection_the_server_closed_is_retried_on_a_new_one(
    keep_alive_server: tuple[str, type[_KeepAliveSSE]],
) -> None:
    url, handler = keep_alive_server
    engine = make_engine(EngineSettings(engine="openai", endpoint=url))
    for _ in range(3):
        assert engine.complete(fim_request(), threading.Event()).text == "return a + b"
    # Each later completion first met the kept connection closed, then was answered on a new one.
    assert handler.requests == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]


def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry(
    keep_alive_server: tuple[str, type[_KeepAliveSSE]],
) -> None:
    url, handler = keep_alive_server
    handler.answer_none = True
    engine = make_engine(EngineSettings(engine="openai", endpoint=url))
    with pytest.raises(EngineError, match=r"the connection broke before the answer was complete"):
        engine.complete(fim_request(), threading.Event())
    assert handler.requests == [(1, 1)]
