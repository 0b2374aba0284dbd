"""What the HTTP engines share: a cancellable streaming POST, stop strings, timing, and errors a user can act on."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from fimtune.engines.base import Completion, EngineError, EngineRequest, EngineSettings, StopReason

POLL_S = 0.01  # how often a waiting call looks at its cancel event and its deadline
ERROR_BODY_CHARS = 300  # how much of a server's non-JSON error body goes into a message
# What turns a response's lines into payloads (sse_payloads, ndjson): dicts, or DONE at the end.
Payloads = Callable[[Iterator[str]], Iterator[dict[str, Any] | object]]
STALE_RETRIES = 2  # new connections tried after a reused keep-alive one turned out closed (see _Call.stale)
DONE = object()  # SSE `data: [DONE]`: the server's end-of-stream marker
# An answer is cut at max_tokens x this many characters (a token is rarely longer than 16), so a server that
# ignores max_tokens cannot put megabytes into the editor or the server's memory.
MAX_CHARS_PER_TOKEN = 32
MAX_JSON_ANSWER_BYTES = 8 * 2**20  # a whole (not streamed) JSON answer larger than this is refused


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed message, decoded: new text, and on the last one why the server stopped and its token counts."""

    text: str = ""
    finish: StopReason | None = None  # once the server has ended the generation
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ServerError(Exception):
    """The server answered an error object inside the stream (its message is the argument)."""


class BadAnswer(Exception):
    """An answer that is not what the backend's API documents (the argument says what was expected)."""


Decoder = Callable[[dict[str, Any]], Delta]


class StopMatcher:
    """Accumulates streamed text and cuts it at the first stop string, also one split across two chunks."""

    def __init__(
        self, stops: tuple[str, ...], max_chars: int = 0, settled: Callable[[str], bool] | None = None
    ) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.settled = settled  # the request's predicate (EngineRequest.settled): True ends the text where it is
        self._longest = max((len(s) for s in self.stops), default=0)
        self.max_chars = max_chars  # 0: no cap
        self.text = ""
        self.stopped = False
        self.capped = False  # stopped at max_chars rather than at a stop string

    def feed(self, chunk: str) -> bool:
        """Add a chunk; True once a stop string has been seen (the text then ends just before it), the text has
        reached max_chars (it is then cut there), or `settled` says the text so far is enough."""
        if self.stopped or not chunk:
            return self.stopped
        if self.max_chars and len(self.text) + len(chunk) > self.max_chars:
            chunk = chunk[: self.max_chars - len(self.text) + self._longest]  # room to find a stop across the cap
        # A match not yet seen must end inside the new chunk, so it starts at most longest-1 characters earlier.
        start = max(0, len(self.text) - self._longest + 1)
        self.text += chunk
        cuts = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.stopped = True
        if self.max_chars and len(self.text) >= self.max_chars:
            self.text = self.text[: self.max_chars]
            self.stopped = self.capped = True
        if not self.stopped and self.settled is not None and self.settled(self.text):
            self.stopped = True
        return self.stopped


def sse_payloads(lines: Iterator[str]) -> Iterator[dict[str, Any] | object]:
    """Server-sent events: the JSON of each `data:` line, DONE for `data: [DONE]`; comments and other fields skipped.

    An `error:` line (older llama.cpp servers) raises ServerError."""
    for line in lines:
        field, sep, value = line.partition(":")
        if not sep or field not in ("data", "error"):
            continue  # blank separator, `: ping` comment, `event:`/`id:` fields
        value = value.removeprefix(" ")
        if field == "data" and value.strip() == "[DONE]":
            yield DONE
            continue
        payload = _json_object(value)
        if field == "error":
            raise ServerError(error_message(payload) or value)
        yield payload


def ndjson_payloads(lines: Iterator[str]) -> Iterator[dict[str, Any] | object]:
    """Newline-delimited JSON: one object per non-empty line."""
    for line in lines:
        if line.strip():
            yield _json_object(line)


def _read_capped(response: httpx.Response) -> str:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_JSON_ANSWER_BYTES:
            raise BadAnswer(f"a JSON answer larger than {MAX_JSON_ANSWER_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BadAnswer(f"a line that is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise BadAnswer(f"a JSON {type(value).__name__} where an object was expected: {text[:200]!r}")
    return value


def error_message(body: object) -> str:
    """The human message in the error bodies these servers send: {"error": "..."} (Ollama), {"error": {"message":
    ...}} (vLLM, llama.cpp, OpenAI), {"message": ...} (older vLLM), {"detail": ...} (FastAPI validation)."""
    if not isinstance(body, dict):
        return ""
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            inner = error_message(value)
            if inner:
                return inner
        if isinstance(value, list) and value:  # FastAPI: [{"loc": [...], "msg": "...", ...}]
            return "; ".join(str(v.get("msg", v)) if isinstance(v, dict) else str(v) for v in value)
    return ""


def as_int(value: object) -> int | None:
    """A token count from a JSON answer, or None when absent or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` settings over the request body; a dict value (Ollama's `options`) is merged one level deep."""
    out = dict(body)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


class _Call:
    """One request in flight: what the reading thread has seen so far, and how to abort it from the caller.

    Aborting shuts the socket down, which wakes a blocked read at once and closes the connection, and closing it
    is what makes vLLM, llama.cpp and Ollama stop generating. The socket comes from httpcore's `trace` hook when
    the connection is opened, or, on a reused keep-alive connection, from the response's `network_stream` once
    the headers are in (a cancel before that returns at once all the same; the reader hangs up at the headers)."""

    def __init__(self, stops: tuple[str, ...], max_chars: int, settled: Callable[[str], bool] | None) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.matcher = StopMatcher(stops, max_chars, settled)
        self.finish: StopReason | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.error: EngineError | None = None
        self.aborted: str | None = None  # "cancelled" | "timeout"
        self.finished = False  # the reader is done with the connection: it may go back to the pool
        self.fresh = False  # this attempt opened its own connection (else it reused a keep-alive one)
        self.answered = False  # the response's status line and headers are in
        self._stream: Any = None

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.fresh = True
            self.attach(info.get("return_value"))

    def stale(self) -> bool:
        """Whether the attempt that just broke met a keep-alive connection the server had already closed: it
        reused one, and nothing of an answer came back. llama-server closes the connection after every streamed
        answer without saying `Connection: close`, so the next request can race its FIN; like every HTTP client
        with a pool (urllib3, Go's net/http), send it again on a new connection. Resets for the next attempt."""
        with self.lock:
            stale = not self.fresh and not self.answered and not self.aborted
            self.fresh = False
            return stale

    def attach(self, stream: Any) -> None:
        with self.lock:
            if stream is not None:
                self._stream = stream
            if self.aborted and not self.finished:
                self._shutdown()

    def abort(self, why: str) -> bool:
        """Stop the request unless the reader already finished; False when it had."""
        with self.lock:
            if self.finished:
                return False
            if not self.aborted:
                self.aborted = why
                self._shutdown()
            return True

    def _shutdown(self) -> None:
        sock = self._stream.get_extra_info("socket") if self._stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)


# What every HTTP engine says when the server runs but has no model ready (llama-server answers 503 "Loading
# model" while it loads, and its router mode 400 "model is not loaded" for a known model it has not loaded).
SERVER_STATE_HINTS = {
    "loading model": "The server is still loading the model; completions start when it is ready",
    "model is not loaded": (
        "The server knows the model but has not loaded it: load it (llama-server's router: POST /models/load "
        '{"model": NAME}) or start the server with the model loaded'
    ),
}


class HttpStream:
    """One engine's HTTP side: an httpx client (keep-alive pool, connect/read timeouts from EngineSettings) and
    `post`, a streaming POST that applies stop strings, honours `cancel` and turns every failure into EngineError.

    The request is read on a short-lived worker thread while the calling thread waits on the result, the cancel
    event and the `timeout_s` deadline, so a cancel returns within about POLL_S even while the server is still
    thinking about its first byte."""

    def __init__(
        self,
        engine: str,
        settings: EngineSettings,
        default_endpoint: str,
        not_found_hint: str,
        hints: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.endpoint = (settings.endpoint or default_endpoint).rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            raise EngineError(
                f"{engine} engine: endpoint {self.endpoint!r} is not an http(s) URL; set endpoint to the server's "
                f"base URL, e.g. {default_endpoint}"
            )
        if settings.timeout_s <= 0 or settings.connect_timeout_s <= 0:
            raise EngineError(
                f"{engine} engine: timeout_s ({settings.timeout_s}) and connect_timeout_s "
                f"({settings.connect_timeout_s}) must be positive"
            )
        self.timeout_s = settings.timeout_s
        self.connect_timeout_s = settings.connect_timeout_s
        self.not_found_hint = not_found_hint  # what to do when the server does not know the model
        # substring of a server error message (lower case) -> what to do; the engine's own first
        self.hints = {**(hints or {}), **SERVER_STATE_HINTS}
        # The reader's own read timeout is a backstop: the caller's deadline (timeout_s for the whole call) fires
        # first and reports the timeout.
        timeout = httpx.Timeout(settings.timeout_s + 1.0, connect=settings.connect_timeout_s)
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def url(self, path: str) -> str:
        return self.endpoint + path

    def check(self) -> None:
        """Whether the server accepts a connection at all (EngineError when not): a status that says `ready`
        for a dead endpoint sends the user looking in the wrong place."""
        url = httpx.URL(self.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.host, port), timeout=self.connect_timeout_s).close()
        except OSError as e:
            raise EngineError(
                f"{self.engine} engine: cannot connect to {self.endpoint} ({e.strerror or e}); is the server "
                "running? Completions start once it answers"
            ) from None

    def post(
        self,
        path: str,
        body: dict[str, Any],
        request: EngineRequest,
        payloads: Payloads,
        decode: Decoder,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """POST `body` (made for `request`) as JSON to endpoint+path and read the streamed answer until the server
        ends it, one of the request's stop strings appears or its `settled` holds (the connection is then closed
        so the server stops), `cancel` is set or timeout_s passes.
        The text is cut at the request's max_tokens x MAX_CHARS_PER_TOKEN characters whatever the server sends. A
        server that ignores `stream` and answers one JSON object is read as that object."""
        start = time.perf_counter()
        if cancel is not None and cancel.is_set():
            return Completion("", "cancelled", 0.0)
        url = self.url(path)
        call = _Call(request.stop, request.max_tokens * MAX_CHARS_PER_TOKEN, request.settled)
        reader = threading.Thread(
            target=self._read, args=(call, url, body, payloads, decode), name=f"fimtune-{self.engine}", daemon=True
        )
        reader.start()
        deadline = start + self.timeout_s
        while not call.done.wait(POLL_S):
            if cancel is not None and cancel.is_set():
                why = "cancelled"
            elif time.perf_counter() >= deadline:
                why = "timeout"
            else:
                continue
            if call.abort(why):
                break
            call.done.wait()  # the reader had just finished: take its answer
            break
        seconds = time.perf_counter() - start
        with call.lock:
            aborted, text = call.aborted, call.matcher.text
        if aborted == "cancelled":
            return Completion(text, "cancelled", seconds)
        if aborted == "timeout":
            raise EngineError(
                f"{self.engine} engine: {url} did not finish answering within {self.timeout_s:g} s (timeout_s); "
                "the server may be overloaded or still loading the model: raise timeout_s or check the server"
            )
        if call.error is not None:
            raise call.error
        reason: StopReason
        if call.matcher.capped:
            reason = "length"
        elif call.matcher.stopped:
            reason = "stop"
        elif call.finish is not None:
            reason = call.finish
        else:
            raise self._bad_answer(url, BadAnswer("the stream ended without a final message"))
        return Completion(text, reason, seconds, call.prompt_tokens, call.completion_tokens)

    def _read(
        self,
        call: _Call,
        url: str,
        body: dict[str, Any],
        payloads: Payloads,
        decode: Decoder,
    ) -> None:
        try:
            for attempt in range(1, STALE_RETRIES + 2):
                try:
                    self._attempt(call, url, body, payloads, decode)
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                    if attempt > STALE_RETRIES or not call.stale():
                        raise
        except httpx.HTTPError as e:
            call.error = self._transport_error(url, e)
        except ServerError as e:
            call.error = EngineError(f"{self.engine} engine: {url} reported an error mid-answer: {e}")
        except BadAnswer as e:
            call.error = self._bad_answer(url, e)
        except Exception as e:  # a bug here must reach the caller, not die with the thread
            call.error = EngineError(f"{self.engine} engine: reading the answer from {url} failed: {e!r}")
        finally:
            call.done.set()

    def _attempt(
        self,
        call: _Call,
        url: str,
        body: dict[str, Any],
        payloads: Payloads,
        decode: Decoder,
    ) -> None:
        with self.client.stream("POST", url, json=body, extensions={"trace": call.trace}) as response:
            with call.lock:
                call.answered = True
            call.attach(response.extensions.get("network_stream"))
            if response.status_code >= 400:
                response.read()
                call.error = self._status_error(url, response)
            elif 300 <= response.status_code < 400:
                where = response.headers.get("location", "elsewhere")
                call.error = EngineError(
                    f"{self.engine} engine: {url} answered HTTP {response.status_code}, a redirect to {where}; "
                    "set endpoint to the server's own base URL (a proxy or login page is in the way)"
                )
            else:
                self._consume(call, response, payloads, decode)
            with call.lock:
                call.finished = not call.aborted

    def _consume(
        self,
        call: _Call,
        response: httpx.Response,
        payloads: Payloads,
        decode: Decoder,
    ) -> None:
        kind = response.headers.get("content-type", "")
        if "application/json" in kind:  # a server that ignores `stream`: one JSON answer
            stream: Iterator[dict[str, Any] | object] = iter([_json_object(_read_capped(response))])
        elif payloads is sse_payloads and "event-stream" not in kind:  # anything else would read as no events
            raise BadAnswer(f"Content-Type {kind!r} where text/event-stream or application/json was expected")
        else:
            stream = payloads(response.iter_lines())
        for payload in stream:
            if call.aborted:
                return
            if payload is DONE:
                return
            assert isinstance(payload, dict)
            delta = decode(payload)
            with call.lock:
                stopped = call.matcher.feed(delta.text)
                if delta.finish is not None:
                    call.finish = delta.finish
                if delta.prompt_tokens is not None:
                    call.prompt_tokens = delta.prompt_tokens
                if delta.completion_tokens is not None:
                    call.completion_tokens = delta.completion_tokens
            if stopped:
                return  # leaving the `with` closes the unread stream: the server stops generating

    def _bad_answer(self, url: str, e: BadAnswer) -> EngineError:
        return EngineError(
            f"{self.engine} engine: {url} did not answer as the {self.engine} API does ({e}); "
            f"is endpoint {self.endpoint!r} a {self.engine} server?"
        )

    def _status_error(self, url: str, response: httpx.Response) -> EngineError:
        try:
            message = error_message(response.json())
        except (json.JSONDecodeError, UnicodeDecodeError):
            message = ""
        if not message:
            message = response.text.strip()[:ERROR_BODY_CHARS] or response.reason_phrase
        status = response.status_code
        head = f"{self.engine} engine: {url} answered HTTP {status}: {message}"
        lowered = message.lower()
        for needle, hint in self.hints.items():
            if needle in lowered:
                return EngineError(f"{head}. {hint}")
        missing = ("not found", "does not exist", "unknown", "no such")
        if "model" in lowered and (status == 404 or any(m in lowered for m in missing)):
            return EngineError(f"{head}. {self.not_found_hint}")
        if status == 404:
            return EngineError(f"{head}. Is endpoint {self.endpoint!r} the server's base URL?")
        if status in (401, 403):
            return EngineError(f"{head}. Set api_key to the token the server expects")
        return EngineError(head)

    def _transport_error(self, url: str, e: httpx.HTTPError) -> EngineError:
        where = f"{self.engine} engine: {url}"
        if isinstance(e, httpx.ConnectTimeout):
            return EngineError(
                f"{where}: no connection within {self.connect_timeout_s:g} s (connect_timeout_s); "
                f"is the host in endpoint {self.endpoint!r} reachable?"
            )
        if isinstance(e, httpx.ConnectError):
            return EngineError(
                f"{where}: cannot connect ({e}); is the server running at {self.endpoint}? "
                "Start it or set endpoint to where it listens"
            )
        if isinstance(e, httpx.TimeoutException):
            return EngineError(f"{where}: no answer within {self.timeout_s:g} s (timeout_s)")
        if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return EngineError(f"{where}: the connection broke before the answer was complete ({e}); did it restart?")
        if isinstance(e, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return EngineError(f"{where}: bad endpoint {self.endpoint!r} ({e})")
        return EngineError(f"{where}: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.client.close()
