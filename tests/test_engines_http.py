"""HTTP engines (openai/vLLM, llama.cpp /infill, Ollama) against local servers speaking each backend's wire format."""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fimtune.engines import EngineError, EngineSettings, make_engine
from fimtune.engines.base import Engine, EngineRequest
from fimtune.engines.http import StopMatcher
from fimtune.engines.llamacpp import LlamaCppEngine
from fimtune.engines.ollama import OllamaEngine
from fimtune.engines.openai import OpenAIEngine
from fimtune.fim_format import Budgets, FimRequest, get_template, prompt_ids
from fimtune.postprocess import Settled, postprocess
from fimtune.prompting import PromptSpec
from fimtune.records import Snippet
from fimtune.tokenizer import as_fim_tokenizer, byte_tokenizer_for

BACKENDS = ("openai", "llamacpp", "ollama")
MODELS = {"openai": "myteam", "llamacpp": "", "ollama": "fimtune-qwen"}
SNIPPETS = (
    Snippet("shop/models.py", "class Cart:\n    def total(self): ...\n", "definition"),
    Snippet("shop/util.py", "def money(x):\n    return round(x, 2)\n", "similar"),
)


def fim_request(prefix: str = "def add(x):\n", budgets: Budgets | None = None, max_tokens: int = 32) -> EngineRequest:
    spec = PromptSpec.for_base("qwen2.5-coder", budgets=budgets)
    fim = FimRequest("shop", "shop/cart.py", "python", prefix, "\n\nprint(add(1))\n", SNIPPETS)
    return spec.request(fim, max_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Scripted servers


@dataclass
class Script:
    """What the fake server answers next, backend-neutral; each wire class turns it into its backend's bytes."""

    chunks: list[str] = field(default_factory=lambda: ["    return ", "x + 1", "\n"])
    finish: str = "end"  # end token | stop (the server matched a stop string) | length
    gap_s: float = 0.0  # pause between chunks
    delay_s: float = 0.0  # pause before the response headers
    think_s: float = 0.0  # pause after the headers, watching for the client hanging up (prompt processing)
    status: int = 200
    message: str = ""  # error message when status >= 400
    stream_error: str = ""  # error object sent after the chunks instead of the final message
    raw: bytes = b""  # answer these bytes as text/html instead (not the backend's API)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


PROMPT_TOKENS = 17


class VllmWire:
    """vLLM's OpenAI-compatible server (vllm/entrypoints/openai: CompletionRequest, CompletionStreamResponse,
    ErrorResponse{error: ErrorInfo{message, type, param, code}}, `The model `X` does not exist.` with 404);
    field names checked against the OpenAI completions API and vLLM's protocol via the search tool."""

    path = "/v1/completions"
    content_type = "text/event-stream"
    models = ("qwen-base", "myteam")

    def problems(self, body: dict[str, Any]) -> list[str]:
        out = []
        prompt = body.get("prompt")  # CompletionRequest.prompt: a string or token ids (or batches of either)
        if not (
            isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(type(x) is int for x in prompt))
        ):
            out.append("prompt must be a string or a list of token ids")
        if "suffix" in body:
            out.append("suffix is not currently supported")
        if not isinstance(body.get("max_tokens"), int):
            out.append("max_tokens must be an integer")
        stop = body.get("stop")
        if not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
            out.append("stop: at most 4 strings")
        if body.get("stream") is not True:
            out.append("this test server only streams")
        return out

    def model_error(self, body: dict[str, Any]) -> tuple[int, bytes] | None:
        model = body.get("model", self.models[0])
        if model in self.models:
            return None
        return 404, self.error_body(f"The model `{model}` does not exist.", 404, "NotFoundError")

    def error_body(self, message: str, status: int, kind: str = "BadRequestError") -> bytes:
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()

    def _chunk(self, body: dict[str, Any], text: str, finish: str | None, stop_reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}
        msg = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model", "qwen-base")}
        return sse({**msg, "choices": [choice], "usage": None})

    def piece(self, body: dict[str, Any], text: str, i: int) -> bytes:
        return self._chunk(body, text, None, None)

    def final(self, body: dict[str, Any], finish: str, n: int) -> bytes:
        reason = {"end": "stop", "stop": "stop", "length": "length"}[finish]
        out = self._chunk(body, "", reason, body["stop"][0] if finish == "stop" else None)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + n, "completion_tokens": n}
            out += sse({"id": "cmpl-1", "object": "text_completion", "created": 0, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def stream_error(self, message: str) -> bytes:
        return b"data: " + self.error_body(message, 500, "InternalServerError") + b"\n\n"


class LlamaCppWire:
    """llama.cpp's llama-server /infill (tools/server/README.md: input_prefix, input_suffix, input_extra
    [{filename, text}], the /completion options n_predict, stop, stream, cache_prompt; streamed messages
    {content, tokens, stop: false, ...}, the last with stop: true, stop_type eos|word|limit|none, stopping_word,
    tokens_predicted, tokens_evaluated, timings (server-task.cpp to_json_non_oaicompat); errors
    {error: {code, message, type}} (format_error_response), 501 `Infill is not supported by this model: ...`
    when the GGUF lacks FIM tokens; older servers sent stopped_eos/stopped_word/stopped_limit and `error:` lines)."""

    path = "/infill"
    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.fim_tokens = True
        self.legacy = False  # answer like a server from before `stop_type`

    def problems(self, body: dict[str, Any]) -> list[str]:
        out = []
        for key in ("input_prefix", "input_suffix"):
            if not isinstance(body.get(key), str):
                out.append(f'"{key}" must be a string')
        extra = body.get("input_extra", [])
        if not isinstance(extra, list) or not all(
            isinstance(e, dict) and isinstance(e.get("text"), str) and isinstance(e.get("filename", ""), str)
            for e in extra
        ):
            out.append('"input_extra" must be an array of {"filename": string, "text": string}')
        if not isinstance(body.get("n_predict"), int):
            out.append("n_predict must be an integer")
        if body.get("stream") is not True:
            out.append("this test server only streams")
        return out

    def model_error(self, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if self.fim_tokens:
            return None
        return 501, self.error_body(
            "Infill is not supported by this model: prefix token is missing. ", 501, "not_supported_error"
        )

    def error_body(self, message: str, status: int, kind: str = "invalid_request_error") -> bytes:
        return json.dumps({"error": {"code": status, "message": message, "type": kind}}).encode()

    def piece(self, body: dict[str, Any], text: str, i: int) -> bytes:
        msg = {"index": 0, "content": text, "tokens": [100 + i], "stop": False, "id_slot": 0}
        return sse({**msg, "tokens_predicted": i + 1, "tokens_evaluated": PROMPT_TOKENS})

    def final(self, body: dict[str, Any], finish: str, n: int) -> bytes:
        msg: dict[str, Any] = {
            "index": 0,
            "content": "",
            "tokens": [],
            "id_slot": 0,
            "stop": True,
            "model": "qwen2.5-coder-0.5b",
            "tokens_predicted": n,
            "tokens_evaluated": PROMPT_TOKENS,
            "generation_settings": {"n_predict": body["n_predict"]},
            "prompt": "<|fim_prefix|>...",
            "has_new_line": True,
            "truncated": False,
            "stopping_word": body["stop"][0] if finish == "stop" else "",
            "tokens_cached": PROMPT_TOKENS + n,
            "timings": {"prompt_n": PROMPT_TOKENS, "predicted_n": n},
        }
        if self.legacy:
            msg |= {
                "stopped_eos": finish == "end",
                "stopped_word": finish == "stop",
                "stopped_limit": finish == "length",
            }
        else:
            msg["stop_type"] = {"end": "eos", "stop": "word", "length": "limit"}[finish]
        return sse(msg)

    def stream_error(self, message: str) -> bytes:
        return b"error: " + json.dumps({"code": 500, "message": message, "type": "server_error"}).encode() + b"\n\n"


class OllamaWire:
    """Ollama's POST /api/generate (docs/api.md: model, prompt, raw, stream, options{num_predict, temperature,
    stop}; NDJSON lines {model, created_at, response, done}, the last with done_reason, prompt_eval_count,
    eval_count and durations; docs/api/errors.mdx: {"error": "..."} bodies and mid-stream error lines;
    server/routes.go: 404 `model 'X' not found`; llm/server.go: done_reason "stop" | "length")."""

    path = "/api/generate"
    content_type = "application/x-ndjson"
    models = ("fimtune-qwen",)

    def problems(self, body: dict[str, Any]) -> list[str]:
        out = []
        if body.get("raw") is not True:
            out.append("raw must be true: fimtune's FIM prompt must not go through a chat template")
        if not isinstance(body.get("prompt"), str):
            out.append("prompt must be a string")
        options = body.get("options")
        if not (isinstance(options, dict) and isinstance(options.get("num_predict"), int)):
            out.append("options.num_predict must be an integer")
        if any(k in body for k in ("template", "system", "suffix")):
            out.append("template/system/suffix would change the prompt")
        if body.get("stream") is not True:
            out.append("this test server only streams")
        return out

    def model_error(self, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if body.get("model") in self.models:
            return None
        return 404, self.error_body(f"model '{body.get('model')}' not found", 404)

    def error_body(self, message: str, status: int) -> bytes:
        return json.dumps({"error": message}).encode()

    def _line(self, body: dict[str, Any], **fields: Any) -> bytes:
        return json.dumps({"model": body["model"], "created_at": "2025-01-01T00:00:00Z", **fields}).encode() + b"\n"

    def piece(self, body: dict[str, Any], text: str, i: int) -> bytes:
        return self._line(body, response=text, done=False)

    def final(self, body: dict[str, Any], finish: str, n: int) -> bytes:
        stats = {"total_duration": 9, "load_duration": 1, "prompt_eval_count": PROMPT_TOKENS}
        stats |= {"prompt_eval_duration": 3, "eval_count": n, "eval_duration": 5}
        reason = "length" if finish == "length" else "stop"
        return self._line(body, response="", done=True, done_reason=reason, **stats)

    def stream_error(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"


Wire = VllmWire | LlamaCppWire | OllamaWire


def sse(message: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(message).encode() + b"\n\n"


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is what the tests do
            super().handle_error(request, client_address)


class FakeServer:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) answering `script` in `wire`'s format, chunked like the real
    servers, and recording each request; `closed_early` is set when the client hung up mid-answer."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.script = Script()
        self.requests: list[Seen] = []
        self.sent = 0  # pieces written by the latest answer
        self.sent_some = threading.Event()  # three pieces written
        self.closed_early = threading.Event()
        self.release = threading.Event()  # set at teardown: sleeping handlers return
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # real servers (uvicorn, Go, cpp-httplib) send small writes at once too
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(Seen(self.path, dict(self.headers), body))
                try:
                    fake.answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    fake.closed_early.set()
                    self.close_connection = True

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        wire, script = self.wire, self.script
        if h.path != wire.path:
            return self.send(h, 404, b"404 page not found", "text/plain")
        problems = wire.problems(body)
        if problems:
            return self.send(h, 400, wire.error_body("; ".join(problems), 400))
        refused = wire.model_error(body)
        if refused:
            return self.send(h, *refused)
        if script.status >= 400:
            return self.send(h, script.status, wire.error_body(script.message, script.status))
        if script.raw:
            return self.send(h, 200, script.raw, "text/html")
        if self.release.wait(script.delay_s):
            h.close_connection = True  # teardown: hang up, so a client still waiting stops too
            return None
        h.send_response(200)
        h.send_header("Content-Type", wire.content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        if script.think_s and self.hung_up(h, script.think_s):
            self.closed_early.set()
            h.close_connection = True
            return None
        self.sent = 0
        for i, text in enumerate(script.chunks):
            if i and self.release.wait(script.gap_s):
                h.close_connection = True
                return None
            self.write_chunk(h, wire.piece(body, text, i))
            self.sent += 1
            if self.sent == 3:
                self.sent_some.set()
        if script.stream_error:
            self.write_chunk(h, wire.stream_error(script.stream_error))
        else:
            self.write_chunk(h, wire.final(body, script.finish, len(script.chunks)))
        self.write_chunk(h, b"")
        return None

    @staticmethod
    def hung_up(h: BaseHTTPRequestHandler, within_s: float) -> bool:
        """Whether the client closes the connection within `within_s`, as vLLM's is_disconnected() polls."""
        ready, _, _ = select.select([h.connection], [], [], within_s)
        try:
            return bool(ready) and h.connection.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def send(self, h: BaseHTTPRequestHandler, status: int, data: bytes, kind: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def write_chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


WIRES: dict[str, Callable[[], Wire]] = {"openai": VllmWire, "llamacpp": LlamaCppWire, "ollama": OllamaWire}


@pytest.fixture
def serve() -> Iterator[Callable[[str], FakeServer]]:
    servers: list[FakeServer] = []

    def start(backend: str) -> FakeServer:
        servers.append(FakeServer(WIRES[backend]()))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def engine_for(backend: str, endpoint: str, **settings: Any) -> Engine:
    values: dict[str, Any] = {"engine": backend, "endpoint": endpoint, "model": MODELS[backend], **settings}
    return make_engine(EngineSettings(**values))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------------------------------------------
# Stop strings


def test_stop_matcher_cuts_at_the_earliest_stop_even_across_chunks() -> None:
    m = StopMatcher(("<|file_sep|>", "\n\n\n", ""))
    assert not m.feed("x = 1<|fi")
    assert not m.feed("le")
    assert m.feed("_sep|>tail")
    assert m.text == "x = 1"
    assert m.feed("more") and m.text == "x = 1"  # nothing is added after a stop

    m = StopMatcher(("<|endoftext|>", "\n\n\n"))
    assert m.feed("a\n\n\nb<|endoftext|>")
    assert m.text == "a"  # the earlier of two stops in one chunk

    m = StopMatcher(("<|fim_pad|>",))
    for piece in ["ab<", "|", "fim", "_", "pad", "|", ">c"]:
        m.feed(piece)
    assert m.stopped and m.text == "ab<"[:2]

    m = StopMatcher(())
    assert not m.feed("<|endoftext|>") and m.text == "<|endoftext|>"


# ---------------------------------------------------------------------------------------------------------------
# Every backend


def test_a_normal_completion(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    engine = engine_for(backend, fake.endpoint)
    assert engine.name == backend
    result = engine.complete(fim_request())
    assert result.text == "    return x + 1\n"
    assert result.stop_reason == "end"
    assert (result.prompt_tokens, result.completion_tokens) == (PROMPT_TOKENS, 3)
    assert 0 < result.seconds < 2
    assert [r.path for r in fake.requests] == [fake.wire.path]
    engine.close()


@pytest.mark.parametrize(
    "chunks,text",
    [
        (["x = 1\n<|file_sep|>shop/b.py\n", "junk"], "x = 1\n"),  # inside one chunk
        (["x = 1<|file", "_sep|>junk", "more"], "x = 1"),  # split across two chunks
        (["y<|fi", "m_pa", "d|>z"], "y"),  # three chunks; the 7th stop string, beyond openai's 4 sent
    ],
)
def test_stop_strings_inside_and_across_chunks(
    serve: Callable[[str], FakeServer], backend: str, chunks: list[str], text: str
) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=chunks)
    result = engine_for(backend, fake.endpoint).complete(fim_request())
    assert (result.text, result.stop_reason) == (text, "stop")


def test_a_stop_string_closes_the_stream_so_the_server_stops(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=["a", "b<|endoftext|>", *["c"] * 100], gap_s=0.02)
    start = time.perf_counter()
    result = engine_for(backend, fake.endpoint).complete(fim_request())
    assert (result.text, result.stop_reason) == ("ab", "stop")
    assert time.perf_counter() - start < 1.0  # not the 2 s the whole answer takes
    assert fake.closed_early.wait(2)


def test_settled_ends_the_answer_and_closes_the_stream(serve: Callable[[str], FakeServer], backend: str) -> None:
    """The request's `settled` predicate (the language server's stop rules) is asked as text streams in: once it
    holds, the answer ends there and the connection closes, so the server stops generating."""
    fake = serve(backend)
    fake.script = Script(chunks=["    y = x\n", "    return y\n", "def g", "():\n", *["    pass\n"] * 100], gap_s=0.02)
    prefix = "def f(x):\n"
    settled = Settled(prefix, "\n", "python")
    start = time.perf_counter()
    result = engine_for(backend, fake.endpoint).complete(replace(fim_request(prefix), settled=settled))
    assert (result.text, result.stop_reason) == ("    y = x\n    return y\ndef g():\n", "stop")
    assert time.perf_counter() - start < 1.0  # not the 2 s the whole answer takes
    assert fake.closed_early.wait(2)
    assert postprocess(result.text, prefix, "\n", "python").text == "    y = x\n    return y"


@pytest.mark.parametrize(
    "finish,expected",
    [
        ("end", {"openai": "end", "llamacpp": "end", "ollama": "end"}),
        ("length", {"openai": "length", "llamacpp": "length", "ollama": "length"}),
        # the server matched a stop string: vLLM names it in stop_reason, llama.cpp says stop_type "word";
        # Ollama's done_reason "stop" cannot tell it from the end token
        ("stop", {"openai": "stop", "llamacpp": "stop", "ollama": "end"}),
    ],
)
def test_the_servers_stop_reason_is_mapped(
    serve: Callable[[str], FakeServer], backend: str, finish: str, expected: dict[str, str]
) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=["a", "b"], finish=finish)
    result = engine_for(backend, fake.endpoint).complete(fim_request(max_tokens=2))
    assert (result.text, result.stop_reason) == ("ab", expected[backend])


def test_an_error_status_names_the_endpoint_and_the_servers_message(
    serve: Callable[[str], FakeServer], backend: str
) -> None:
    fake = serve(backend)
    fake.script = Script(status=400, message="the prompt (40000 tokens) exceeds the context (32768)")
    with pytest.raises(EngineError) as err:
        engine_for(backend, fake.endpoint).complete(fim_request())
    message = str(err.value)
    assert "HTTP 400" in message
    assert "the prompt (40000 tokens) exceeds the context (32768)" in message
    assert fake.endpoint + fake.wire.path in message
    assert message.startswith(f"{backend} engine:")


@pytest.mark.parametrize(
    "backend,said,hint",
    [
        ("openai", "The model `nope` does not exist.", "--lora-modules"),
        ("ollama", "model 'nope' not found", "ollama list"),
        ("llamacpp", "Infill is not supported by this model", "no FIM tokens"),
    ],
)
def test_an_unknown_model_says_what_to_do(
    serve: Callable[[str], FakeServer], backend: str, said: str, hint: str
) -> None:
    fake = serve(backend)
    if isinstance(fake.wire, LlamaCppWire):
        fake.wire.fim_tokens = False  # llama.cpp's model failure: a GGUF without FIM tokens
    with pytest.raises(EngineError) as err:
        engine_for(backend, fake.endpoint, model="nope" if backend != "llamacpp" else "").complete(fim_request())
    assert said in str(err.value) and hint in str(err.value)
    assert fake.endpoint in str(err.value)


def test_a_wrong_path_says_to_check_the_endpoint(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    with pytest.raises(EngineError, match=r"404.*Is endpoint .* the server's base URL"):
        engine_for(backend, fake.endpoint + "/api/v2").complete(fim_request())


def test_an_answer_in_another_format_is_an_engine_error(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(raw=b"<html><body>Welcome to nginx!</body></html>\n")
    with pytest.raises(EngineError, match=rf"did not answer as the {backend} API does.*is endpoint .* a {backend}"):
        engine_for(backend, fake.endpoint).complete(fim_request())


def test_an_error_in_the_middle_of_the_stream(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=["a", "b"], stream_error="CUDA out of memory")
    with pytest.raises(EngineError, match="reported an error mid-answer: CUDA out of memory"):
        engine_for(backend, fake.endpoint).complete(fim_request())


def test_connection_refused_asks_whether_the_server_runs(backend: str) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(EngineError) as err:
        engine_for(backend, endpoint).complete(fim_request())
    assert time.perf_counter() - start < 2
    assert f"is the server running at {endpoint}?" in str(err.value)
    assert "refused" in str(err.value).lower()


def test_a_server_slower_than_timeout_s_raises_in_time(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(delay_s=3.0)  # no headers for 3 s
    engine = engine_for(backend, fake.endpoint, timeout_s=0.2)
    start = time.perf_counter()
    with pytest.raises(EngineError, match=r"within 0\.2 s \(timeout_s\)"):
        engine.complete(fim_request())
    assert time.perf_counter() - start < 1.0  # the server would answer after 3 s


def test_timeout_s_bounds_the_whole_answer_not_each_read(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=["x"] * 60, gap_s=0.05)  # a piece every 0.05 s, 3 s in all
    start = time.perf_counter()
    with pytest.raises(EngineError, match="timeout_s"):
        engine_for(backend, fake.endpoint, timeout_s=0.25).complete(fim_request())
    assert time.perf_counter() - start < 1.0
    assert fake.closed_early.wait(2)  # the abandoned answer's connection was closed


def test_cancel_mid_stream_returns_promptly_and_closes_the_connection(
    serve: Callable[[str], FakeServer], backend: str
) -> None:
    fake = serve(backend)
    fake.script = Script(chunks=[f"t{i} " for i in range(100)], gap_s=0.05)  # 5 s to the end
    cancel = threading.Event()

    def cancel_after_some_text() -> None:
        fake.sent_some.wait(5)
        time.sleep(0.05)
        cancel.set()

    threading.Thread(target=cancel_after_some_text, daemon=True).start()
    start = time.perf_counter()
    result = engine_for(backend, fake.endpoint).complete(fim_request(), cancel)
    assert result.stop_reason == "cancelled"
    assert time.perf_counter() - start < 1.5  # the whole answer takes 5 s
    assert result.text.startswith("t0 t1 ") and "".join(fake.script.chunks).startswith(result.text)
    assert fake.closed_early.wait(2)
    assert fake.sent < 40


def test_cancel_while_the_server_is_still_silent(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(delay_s=5.0)  # e.g. Ollama loading the model: no headers yet
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    start = time.perf_counter()
    result = engine_for(backend, fake.endpoint).complete(fim_request(), cancel)
    assert (result.text, result.stop_reason) == ("", "cancelled")
    assert time.perf_counter() - start < 1.0


def test_cancel_while_the_server_thinks_hangs_up_at_once(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    fake.script = Script(think_s=5.0)  # headers sent, then 5 s of prompt processing without a byte
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    result = engine_for(backend, fake.endpoint).complete(fim_request(), cancel)
    assert result.stop_reason == "cancelled"
    # the connection closes now, not at the first token, so the server can stop processing the prompt
    assert fake.closed_early.wait(1.0)


def test_cancel_before_headers_on_a_kept_alive_connection(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("ollama")
    engine = engine_for("ollama", fake.endpoint)
    assert engine.complete(fim_request()).stop_reason == "end"  # leaves a connection in the pool
    fake.script = Script(delay_s=5.0)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    start = time.perf_counter()
    assert engine.complete(fim_request(), cancel).stop_reason == "cancelled"
    assert time.perf_counter() - start < 1.0
    fake.script = Script()
    assert engine.complete(fim_request()).text == "    return x + 1\n"


def test_an_already_cancelled_call_sends_nothing(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    cancel = threading.Event()
    cancel.set()
    result = engine_for(backend, fake.endpoint).complete(fim_request(), cancel)
    assert result.stop_reason == "cancelled" and fake.requests == []


def test_the_engine_is_reusable_after_errors_and_cancels(serve: Callable[[str], FakeServer], backend: str) -> None:
    fake = serve(backend)
    engine = engine_for(backend, fake.endpoint)
    fake.script = Script(status=500, message="slot unavailable")
    with pytest.raises(EngineError, match="slot unavailable"):
        engine.complete(fim_request())
    fake.script = Script(chunks=["a", "b"], stream_error="boom")
    with pytest.raises(EngineError, match="boom"):
        engine.complete(fim_request())
    fake.script = Script(chunks=["t "] * 50, gap_s=0.05)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    assert engine.complete(fim_request(), cancel).stop_reason == "cancelled"
    fake.script = Script()
    for _ in range(2):  # the second one may ride the kept-alive connection
        assert engine.complete(fim_request()).text == "    return x + 1\n"
    engine.close()


# ---------------------------------------------------------------------------------------------------------------
# What each backend is sent


def test_openai_sends_the_rendered_prompt_and_four_stops(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("openai")
    request = fim_request()
    engine = OpenAIEngine(
        EngineSettings(engine="openai", endpoint=fake.endpoint + "/v1/", model="myteam", api_key="sekrit")
    )
    engine.complete(request)
    seen = fake.requests[-1]
    assert seen.path == "/v1/completions"  # a base URL ending in /v1 (as OpenAI clients take it) works too
    assert seen.body["prompt"] == request.rendered.prompt
    assert "<|fim_middle|>" in seen.body["prompt"] and "suffix" not in seen.body
    assert seen.body["model"] == "myteam"
    assert seen.body["stop"] == list(request.stop[:4]) and len(request.stop) > 4
    assert seen.body["max_tokens"] == request.max_tokens == 32
    assert seen.body["temperature"] == 0.0 and seen.body["stream"] is True
    assert seen.headers["Authorization"] == "Bearer sekrit"


def test_a_prompt_spelling_a_template_token_goes_as_the_token_ids_training_saw(
    serve: Callable[[str], FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A file holding `<|fim_middle|>` (a tokenizer's source): a server given the text would read that spelling as
    the token itself, so the openai engine sends the ids, which hold its characters; Ollama, which takes no ids,
    gets the text and the log says so."""
    tok = as_fim_tokenizer(byte_tokenizer_for(get_template("qwen2.5-coder")))
    spec = PromptSpec.for_base("qwen2.5-coder", tokenizer=tok)
    plain = spec.request(FimRequest("shop", "shop/tok.py", "python", "def add(x):\n", "\n", SNIPPETS))
    spelled = spec.request(FimRequest("shop", "shop/tok.py", "python", 'MID = "<|fim_middle|>"\n', "\n", SNIPPETS))
    assert plain.prompt_ids is None and spelled.prompt_ids is not None
    ids = prompt_ids(spec.template, spelled.rendered, tok)
    assert list(spelled.prompt_ids) == ids and ids.count(tok.token_to_id("<|fim_middle|>")) == 1  # the template's
    fake = serve("openai")
    engine = engine_for("openai", fake.endpoint)
    engine.complete(plain)
    assert fake.requests[-1].body["prompt"] == plain.rendered.prompt  # text wherever text reads the same
    engine.complete(spelled)
    assert fake.requests[-1].body["prompt"] == ids
    fake = serve("ollama")
    with caplog.at_level("WARNING", logger="fimtune.engines.ollama"):
        engine_for("ollama", fake.endpoint).complete(spelled)
    assert fake.requests[-1].body["prompt"] == spelled.rendered.prompt and "takes no token ids" in caplog.text


def test_openai_extra_fields_pass_through_and_no_key_no_header(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("openai")
    engine = engine_for("openai", fake.endpoint, extra={"top_p": 0.9, "seed": 7})
    engine.complete(fim_request())
    seen = fake.requests[-1]
    assert (seen.body["top_p"], seen.body["seed"]) == (0.9, 7)
    assert "Authorization" not in seen.headers


def test_llamacpp_sends_prefix_suffix_and_the_snippets_as_input_extra(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("llamacpp")
    request = fim_request()
    LlamaCppEngine(EngineSettings(engine="llamacpp", endpoint=fake.endpoint)).complete(request)
    body = fake.requests[-1].body
    assert body["input_prefix"] == request.fim.prefix and body["input_suffix"] == request.fim.suffix
    # the most relevant snippet last, nearest the cursor, as fimtune's own layout has it
    assert body["input_extra"] == [
        {"filename": "shop/util.py", "text": SNIPPETS[1].text},
        {"filename": "shop/models.py", "text": SNIPPETS[0].text},
    ]
    assert (body["n_predict"], body["cache_prompt"], body["stream"]) == (32, True, True)
    assert body["stop"] == list(request.stop) and "model" not in body


def test_llamacpp_gets_the_prefix_and_context_fimtunes_budgets_kept(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("llamacpp")
    prefix = "".join(f"line_{i} = {i}\n" for i in range(400))
    request = fim_request(prefix, Budgets(max_tokens=256, context_share=0.1, max_middle_tokens=32))
    assert request.rendered.truncation.prefix_chars > 0  # the budget did cut
    LlamaCppEngine(EngineSettings(engine="llamacpp", endpoint=fake.endpoint)).complete(request)
    body = fake.requests[-1].body
    assert prefix.endswith(body["input_prefix"]) and len(body["input_prefix"]) < len(prefix)
    assert body["input_prefix"].startswith("line_")  # cut at a line boundary
    assert len(body["input_extra"]) == request.rendered.context_kept < len(SNIPPETS)


def test_llamacpp_understands_servers_from_before_stop_type(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("llamacpp")
    assert isinstance(fake.wire, LlamaCppWire)
    fake.wire.legacy = True
    engine = engine_for("llamacpp", fake.endpoint)
    for finish, reason in [("end", "end"), ("stop", "stop"), ("length", "length")]:
        fake.script = Script(chunks=["a"], finish=finish)
        assert engine.complete(fim_request()).stop_reason == reason


def test_ollama_sends_the_raw_prompt_with_options(serve: Callable[[str], FakeServer]) -> None:
    fake = serve("ollama")
    request = fim_request()
    settings = EngineSettings(
        engine="ollama",
        endpoint=fake.endpoint,
        model="fimtune-qwen",
        extra={"options": {"num_ctx": 8192}, "keep_alive": "10m"},
    )
    OllamaEngine(settings).complete(request)
    body = fake.requests[-1].body
    assert body["raw"] is True and body["prompt"] == request.rendered.prompt
    assert body["model"] == "fimtune-qwen" and body["keep_alive"] == "10m"
    assert body["options"] == {"num_predict": 32, "temperature": 0.0, "stop": list(request.stop), "num_ctx": 8192}


def test_settings_that_cannot_work_are_refused_up_front() -> None:
    with pytest.raises(EngineError, match="set model to an Ollama model name"):
        make_engine(EngineSettings(engine="ollama"))
    with pytest.raises(EngineError, match="not an http"):
        make_engine(EngineSettings(engine="openai", endpoint="127.0.0.1:8000"))
    with pytest.raises(EngineError, match="must be positive"):
        make_engine(EngineSettings(engine="llamacpp", timeout_s=0))
