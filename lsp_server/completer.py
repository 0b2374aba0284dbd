"""Completion requests: type-through, debounce, supersede and cancel, LRU cache, engine calls off the loop, telemetry.

One request at a time per document: a newer request (or `$/cancelRequest`) sets the older one's cancel event,
which the engine watches while it generates, so superseded work stops, not only its reply. The order of a
request: type-through (the user typed the start of the suggestion on show: answer the rest, no model call),
debounce (a request superseded while waiting costs nothing), then in a worker thread: cross-file context,
render through the prompt spec (the run's fimtune.json), LRU cache by rendered prompt, the engine, the stop
rules. Every failure ends in an empty answer and a logged reason; nothing here raises into the protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fimtune.engines.base import EngineError, EngineRequest
from fimtune.fim_format import FimFormatError, FimRequest
from fimtune.languages import LANGUAGES, language_for_path
from fimtune.postprocess import Settled, StopRules, line_mode, postprocess
from fimtune.records import Snippet
from lsp_server.documents import utf8_offset, without_lone_surrogates
from lsp_server.engine_host import EngineHost, Loaded
from lsp_server.settings import Settings
from lsp_server.workspace import WorkspaceIndex

log = logging.getLogger("lsp_server.completer")

CACHE_SIZE = 256
# Timed stages (milliseconds, see `timings`): waiting for a worker thread, cross-file retrieval, rendering the
# prompt, the engine, the stop rules, and the whole request from handler start to answer.
STAGES = ("queue", "context", "render", "engine", "postprocess", "total")
ENGINE_THREADS = 4
TIMINGS_KEPT = 2048  # per stage: the last requests `fimtune/status` reports percentiles of
RECENT_SUGGESTIONS = 1024  # the suggestions an accept can name (an editor accepts one of the last few)
_ID_PREFIX = "s"
_LF = re.compile(r"(?<!\r)\n")

# LSP languageId -> fimtune language name, where they differ.
_LANGUAGE_IDS = {"typescriptreact": "tsx", "javascriptreact": "javascript", "c++": "cpp", "golang": "go"}


def fimtune_language(language_id: str, path: str) -> str:
    """The fimtune language of a document (from its languageId, else its extension), or the languageId."""
    name = _LANGUAGE_IDS.get(language_id, language_id)
    if name in LANGUAGES:
        return name
    return language_for_path(path) or language_id


@dataclass(frozen=True)
class Cursor:
    """A completion request, in string offsets: the document's text as of the request, and the cursor."""

    uri: str
    path: str  # absolute local path
    language_id: str
    text: str
    index: int  # string offset of the cursor in text
    crlf: bool = False

    @property
    def language(self) -> str:
        return fimtune_language(self.language_id, self.path)


@dataclass
class Answer:
    id: str
    text: str  # to insert at the cursor, with the document's line endings
    mode: str  # single | multi
    source: str  # model | cache | type_through


@dataclass
class _Shown:
    """The suggestion shown in a document, and enough of the text around it to recognise typing through it:
    lengths and hashes, never a copy of the document (a 24 MB file and 100 suggestions held 2.3 GB)."""

    answer: Answer
    prefix_len: int
    prefix_hash: int
    suffix_len: int
    suffix_hash: int
    language: str

    @classmethod
    def at(cls, answer: Answer, text: str, index: int, language: str) -> _Shown:
        return cls(answer, index, hash(text[:index]), len(text) - index, hash(text[index:]), language)

    def typed_through(self, prefix: str, suffix: str) -> str | None:
        """What was typed since the suggestion was shown, when the text around it is otherwise the same."""
        if len(prefix) <= self.prefix_len or len(suffix) != self.suffix_len:
            return None
        if hash(suffix) != self.suffix_hash or hash(prefix[: self.prefix_len]) != self.prefix_hash:
            return None
        return prefix[self.prefix_len :]


@dataclass
class _Ticket:
    """One request in flight for a document."""

    uri: str
    superseded: asyncio.Future[None]
    cancel: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self.cancel.set()
        if not self.superseded.done():
            self.superseded.set_result(None)

    async def wait(self, aw: Awaitable[Any], timeout: float | None = None) -> bool:
        """Await `aw` unless the request is superseded (or `timeout` passes) first: True when `aw` finished."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task, self.superseded}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            if not task.done():
                task.cancel()  # a worker thread's future only detaches; the engine stops through `cancel`
        return task in done


@dataclass
class _Produced:
    text: str
    mode: str
    source: str  # model | cache
    cuts: tuple[str, ...] = ()


class _Cache:
    """Raw engine output by (engine generation, rendered prompt, token limit); thread-safe LRU."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(generation: int, prompt: str, max_tokens: int) -> bytes:
        h = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16)
        h.update(f"\x00{generation}\x00{max_tokens}".encode())
        return h.digest()

    def get(self, key: bytes) -> str | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: bytes, value: str) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class Telemetry:
    """Shown/accepted events appended to a local JSONL file (`telemetry.path`); code text only when asked."""

    def __init__(self) -> None:
        # A daemon thread of its own, not an executor's: interpreter exit joins executor threads, and a write
        # blocked on a hung mount must not keep the server alive after its client has gone.
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fimtune-telemetry", daemon=True)
        self._thread.start()
        self._failed: str | None = None

    def write(self, settings: Settings, record: dict[str, Any]) -> None:
        path = settings.telemetry.path
        if not path:
            return
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
        self._queue.put((path, json.dumps(record, ensure_ascii=False)))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._append(*item)

    def _append(self, path: str, line: str) -> None:
        """Append a line; a FIFO nobody reads or a full pipe is skipped (non-blocking open and write)."""
        try:
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
            finally:
                os.close(fd)
            self._failed = None
        except OSError as e:
            if self._failed != path:
                log.warning("telemetry: cannot append to %s (%s); set telemetry.path to a writable file", path, e)
            self._failed = path

    def close(self, timeout_s: float = 1.0) -> None:
        """Write what is queued, waiting at most timeout_s: never hang the shutdown on a blocked file."""
        self._queue.put(None)
        self._thread.join(timeout_s)


class _Ring:
    """The last `size` floats, in storage allocated up front: a long-running server's memory does not creep up
    as a deque of float objects fills (a stage few requests reach took most of an hour to)."""

    def __init__(self, size: int) -> None:
        self._data = array("d", bytes(8 * size))
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._data[self._next] = value
            self._next = (self._next + 1) % len(self._data)
            self._count = min(self._count + 1, len(self._data))

    def values(self) -> list[float]:
        with self._lock:
            return self._data[: self._count].tolist()

    def clear(self) -> None:
        with self._lock:
            self._next = self._count = 0


class _RecentIds:
    """Suggestion id -> language for the last `size` suggestions, in slots allocated up front (ids are
    `_ID_PREFIX` plus a serial number, so the number picks the slot)."""

    def __init__(self, size: int) -> None:
        self._serial = array("q", [-1]) * size
        self._language: list[str] = [""] * size

    def add(self, suggestion_id: str, language: str) -> None:
        n = int(suggestion_id.removeprefix(_ID_PREFIX))
        self._serial[n % len(self._serial)] = n
        self._language[n % len(self._serial)] = sys.intern(language)

    def get(self, suggestion_id: str) -> str | None:
        digits = suggestion_id.removeprefix(_ID_PREFIX)
        if not (suggestion_id.startswith(_ID_PREFIX) and digits.isascii() and digits.isdigit()):
            return None
        n = int(digits)
        return self._language[n % len(self._serial)] if self._serial[n % len(self._serial)] == n else None


class Completer:
    """Answers completion requests for the server; owns the engine worker threads."""

    def __init__(self, host: EngineHost, index: WorkspaceIndex | None, settings: Settings | None = None) -> None:
        self.host = host
        self.index = index
        self.settings = settings or Settings()
        self.rules = StopRules()
        self.telemetry = Telemetry()
        self._pool = ThreadPoolExecutor(ENGINE_THREADS, thread_name_prefix="fimtune-engine")
        self._cache = _Cache(CACHE_SIZE)
        self._tickets: dict[str, _Ticket] = {}
        self._shown: dict[str, _Shown] = {}
        self._recent = _RecentIds(RECENT_SUGGESTIONS)  # suggestion id -> language, for acceptance records
        self._ids = itertools.count(1)
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "answered",
                "empty",
                "model_calls",
                "settled",  # model calls the stop rules ended early (they had decided: the same answer, sooner)
                "cache_hits",
                "type_through",
                "superseded",
                "cancelled",
                "timeouts",
                "errors",
                "not_ready",
                "engine_running",
                "accepted",
            ),
            0,
        )
        self._last_reason = ("", 0.0)
        self._timings = {name: _Ring(TIMINGS_KEPT) for name in STAGES}

    def _time(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self._timings[stage].add((now - since) * 1000.0)
        return now

    def timings(self, reset: bool = False) -> dict[str, dict[str, float]]:
        """p50 / p95 / max milliseconds of each stage over the last requests that reached it (since the last
        reset)."""
        out: dict[str, dict[str, float]] = {}
        for stage, ring in self._timings.items():
            ordered = sorted(ring.values())
            if ordered:
                n = len(ordered)
                out[stage] = {
                    "n": n,
                    "p50": ordered[round(0.5 * (n - 1))],
                    "p95": ordered[round(0.95 * (n - 1))],
                    "max": ordered[-1],
                }
            if reset:
                ring.clear()
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _note(self, reason: str) -> None:
        """Log why a request got no completion: at warning the first time (or after a minute), else debug."""
        last, when = self._last_reason
        now = time.monotonic()
        if reason != last or now - when > 60:
            log.warning("no completion: %s", reason)
            self._last_reason = (reason, now)
        else:
            log.debug("no completion: %s", reason)

    # ---- documents ---------------------------------------------------------------------------------------

    def forget(self, uri: str) -> None:
        """The document closed: stop its request and drop its shown suggestion."""
        ticket = self._tickets.pop(uri, None)
        if ticket is not None:
            ticket.stop()
        self._shown.pop(uri, None)

    # ---- requests ----------------------------------------------------------------------------------------

    async def prompt(self, cursor: Cursor) -> dict[str, Any]:
        """The rendered prompt for a cursor, computed off the loop; EngineError when no engine is ready."""
        loaded = self.host.current()
        if loaded is None:
            raise EngineError(f"engine not ready ({self.host.reason})")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.render, loaded, cursor, self.settings)

    async def complete(self, cursor: Cursor, debounce: bool = True) -> Answer | None:
        """A suggestion for the cursor, or None. Raises CancelledError only when the client cancelled.
        `debounce` False: the user asked explicitly, answer without waiting for more keystrokes."""
        settings = self.settings
        self._count("requests")
        start = time.perf_counter()
        previous = self._tickets.get(cursor.uri)
        if previous is not None:
            previous.stop()
            self._count("superseded")
        ticket = _Ticket(cursor.uri, asyncio.get_running_loop().create_future())
        self._tickets[cursor.uri] = ticket
        try:
            answer = await self._complete(cursor, settings, ticket, debounce)
        except asyncio.CancelledError:
            ticket.stop()
            self._count("cancelled")
            raise
        finally:
            if self._tickets.get(cursor.uri) is ticket:
                del self._tickets[cursor.uri]
        self._time("total", start)
        self._count("answered" if answer else "empty")
        if answer is not None:
            self._remember(cursor, answer)
            self.telemetry.write(settings, self._event("shown", answer, cursor.language, start, settings))
        return answer

    async def _complete(self, cursor: Cursor, settings: Settings, ticket: _Ticket, debounce: bool) -> Answer | None:
        prefix, suffix = cursor.text[: cursor.index], cursor.text[cursor.index :]
        typed = self._type_through(cursor.uri, prefix, suffix)
        if typed is not None:
            self._count("type_through")
            return typed
        if (
            debounce
            and settings.debounce_ms > 0
            and not await ticket.wait(asyncio.sleep(settings.debounce_ms / 1000.0))
        ):
            return None  # superseded while waiting
        if ticket.cancel.is_set():
            return None
        loaded = self.host.current()
        if loaded is None:
            self._count("not_ready")
            self._note(f"engine not ready ({self.host.reason})")
            return None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._pool, self._produce, loaded, cursor, settings, ticket.cancel, time.perf_counter()
        )
        if not await ticket.wait(future, timeout=settings.timeout_ms / 1000.0):
            ticket.cancel.set()
            if not ticket.superseded.done():
                self._count("timeouts")
                self._note(f"the {settings.engine} engine took longer than timeoutMs ({settings.timeout_ms} ms)")
            return None
        try:
            produced = future.result()
        except (EngineError, FimFormatError) as e:
            self._count("errors")
            self._note(str(e))
            return None
        except Exception as e:  # a bug in an engine or a stage: log it, keep serving
            self._count("errors")
            log.exception("completion failed for %s", cursor.uri)
            self._note(f"{type(e).__name__}: {e}")
            return None
        if produced is None or not produced.text:
            return None
        text = _LF.sub("\r\n", produced.text) if cursor.crlf else produced.text
        return Answer(f"{_ID_PREFIX}{next(self._ids)}", text, produced.mode, produced.source)

    def _prepare(
        self, loaded: Loaded, cursor: Cursor, settings: Settings, timed: bool = False
    ) -> tuple[FimRequest, EngineRequest]:
        """The request for a cursor: its byte offset, cross-file context, the prompt rendered as in training."""
        t = time.perf_counter()
        text = cursor.text
        head = text[: cursor.index]
        byte_offset = utf8_offset(text, cursor.index)
        repo, rel = self.index.locate(cursor.path) if self.index is not None else ("", cursor.path)
        snippets: tuple[Snippet, ...] = ()
        if settings.context.enabled and self.index is not None and loaded.spec.context.max_chars > 0:
            snippets = self.index.retrieve(cursor.path, cursor.language, head, text[cursor.index :])
        if timed:
            t = self._time("context", t)
        fim = FimRequest.at_cursor(repo, rel, cursor.language, text, byte_offset, snippets)
        request = loaded.spec.request(fim, settings.max_tokens)
        mode = self.rules.mode if self.rules.mode != "auto" else line_mode(fim.prefix, fim.suffix, cursor.language)
        if mode == "single":
            # The stop rules keep the first line only: the engine stops at the newline instead of writing lines
            # that would be cut (the same text, sooner).
            # First: an OpenAI-style server takes only four stop strings (the client cuts at all of them).
            request = replace(request, stop=("\n", *request.stop))
        else:
            # The engine stops once the stop rules have decided (block exit): the same answer, sooner.
            rules = replace(self.rules, mode=mode)
            settled = Settled(fim.prefix, fim.suffix, cursor.language, rules, lead=request.rendered.lead)
            request = replace(request, settled=settled)
        if timed:
            self._time("render", t)
        return fim, request

    def render(self, loaded: Loaded, cursor: Cursor, settings: Settings) -> dict[str, Any]:
        """What the model is shown for a cursor (the `fimtune/prompt` request)."""
        fim, request = self._prepare(loaded, cursor, settings)
        r = request.rendered
        return {
            "template": r.template,
            "prompt": r.prompt,
            "promptTokens": r.prompt_tokens,
            "exactCounts": r.exact,
            "maxTokens": request.max_tokens,
            "stop": list(request.stop),
            "repo": fim.repo,
            "path": fim.path,
            "language": fim.language,
            "prefixChars": len(fim.prefix),
            "suffixChars": len(fim.suffix),
            "context": [{"path": s.path, "kind": s.kind, "chars": len(s.text), "text": s.text} for s in fim.context],
            "contextKept": r.context_kept,
        }

    def _produce(
        self, loaded: Loaded, cursor: Cursor, settings: Settings, cancel: threading.Event, submitted: float
    ) -> _Produced | None:
        """Context, prompt, cache, engine, stop rules (a worker thread). None when cancelled."""
        self._time("queue", submitted)
        language = cursor.language
        fim, request = self._prepare(loaded, cursor, settings, timed=True)
        key = _Cache.key(loaded.generation, request.rendered.prompt, request.max_tokens)
        raw = self._cache.get(key)
        source = "cache"
        if raw is None:
            if cancel.is_set():
                return None
            source = "model"
            self._count("model_calls")
            self._count("engine_running")
            t = time.perf_counter()
            try:
                completion = loaded.engine.complete(request, cancel)
            except EngineError as e:
                self.host.answered(loaded.generation, str(e))
                raise
            finally:
                self._count("engine_running", -1)
                self._time("engine", t)
            self.host.answered(loaded.generation, None)
            if completion.stop_reason == "cancelled" or cancel.is_set():
                return None
            if isinstance(request.settled, Settled) and request.settled.held:
                self._count("settled")
            raw = without_lone_surrogates(completion.text)  # an engine's "\ud800" must not fail the answer
            self._cache.put(key, raw)
        else:
            self._count("cache_hits")
        t = time.perf_counter()
        processed = postprocess(raw, fim.prefix, fim.suffix, language, self.rules, lead=request.rendered.lead)
        self._time("postprocess", t)
        return _Produced(processed.text, processed.mode, source, processed.cuts)

    # ---- type-through and acceptance ---------------------------------------------------------------------

    def _type_through(self, uri: str, prefix: str, suffix: str) -> Answer | None:
        shown = self._shown.get(uri)
        typed = shown.typed_through(prefix, suffix) if shown is not None else None
        if shown is None or typed is None:
            return None
        rest = shown.answer.text
        if not rest.startswith(typed) or len(typed) >= len(rest):
            return None
        return Answer(shown.answer.id, rest[len(typed) :], shown.answer.mode, "type_through")

    def _remember(self, cursor: Cursor, answer: Answer) -> None:
        self._shown[cursor.uri] = _Shown.at(answer, cursor.text, cursor.index, cursor.language)
        self._recent.add(answer.id, cursor.language)

    def accepted(self, suggestion_id: str) -> bool:
        """The client accepted a suggestion: count it and record it; False for an unknown id."""
        language = self._recent.get(suggestion_id)
        self._count("accepted")
        for uri, current in list(self._shown.items()):
            if current.answer.id == suggestion_id:
                del self._shown[uri]  # typed in full: nothing left to type through
        if language is None:
            log.debug("accepted an unknown suggestion %r", suggestion_id)
            return False
        record: dict[str, Any] = {
            "event": "accepted",
            "id": suggestion_id,
            "language": language,
            "engine": self.settings.engine,
            "model": self.settings.model_label(),
        }
        self.telemetry.write(self.settings, record)
        return True

    def _event(self, kind: str, answer: Answer, language: str, start: float, settings: Settings) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": kind,
            "id": answer.id,
            "language": language,
            "engine": settings.engine,
            "model": settings.model_label(),
            "source": answer.source,
            "mode": answer.mode,
            "chars": len(answer.text),
            "lines": answer.text.count("\n") + 1,
            "latency_ms": round((time.perf_counter() - start) * 1000.0, 2),
        }
        if settings.telemetry.include_text:
            record["text"] = answer.text
        return record

    # ---- lifetime ----------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.stats)

    def close(self) -> None:
        for ticket in list(self._tickets.values()):
            ticket.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.telemetry.close()
