"""The pygls language server: thin LSP handlers over documents, the completer, the engine host and the index."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, BinaryIO, NoReturn

from lsprotocol import types
from pygls.exceptions import FeatureRequestError, JsonRpcException, JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import JsonRPCNotification
from pygls.protocol.language_server import lsp_method

from fimtune import __version__
from fimtune.engines.base import EngineError
from fimtune.fim_format import FimFormatError
from fimtune.languages import LANGUAGES
from lsp_server.completer import Answer, Completer, Cursor, fimtune_language
from lsp_server.documents import Document, Documents, PositionError, uri_to_path
from lsp_server.engine_host import EngineHost, context_config
from lsp_server.settings import Settings, parse_settings, settings_section
from lsp_server.transport import BAD, run_stdio
from lsp_server.workspace import WorkspaceIndex

log = logging.getLogger("lsp_server")

ACCEPTED = "fimtune.accepted"
STATUS = "fimtune/status"
STATS = "fimtune/stats"
PROMPT = "fimtune/prompt"
_OUR_LOGGERS = ("lsp_server", "fimtune")
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
_MESSAGE_TYPES = {
    logging.ERROR: types.MessageType.Error,
    logging.WARNING: types.MessageType.Warning,
    logging.INFO: types.MessageType.Info,
}


class FimtuneProtocol(LanguageServerProtocol):
    """pygls' protocol, with four changes: `params` may be left out (as JSON-RPC allows); open documents live in
    `Documents` (exact text, fast edits of large files) instead of pygls' workspace; a request whose params do
    not parse gets an InvalidParams error response instead of no response at all; and a handler's future is
    forgotten once it is done, whatever kind of message it handled."""

    _server: FimtuneServer

    def structure_message(self, data: dict[str, Any]) -> Any:
        if isinstance(data, dict) and "method" in data and "params" not in data:
            data = {**data, "params": None}  # JSON-RPC lets a request without parameters leave `params` out
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                error = JsonRpcInvalidParams(f"invalid params for {data['method']}: {exc.__cause__ or exc}")
                self._send_response(data["id"], error=error.to_response_error())
            return JsonRPCNotification(method="$/fimtune/ignored", jsonrpc="2.0", params=None)

    def _execute_handler(
        self,
        msg_id: Any,
        handler: Any,
        callback: Any,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """pygls keeps every handler's future by message id until a response is sent, so the futures of
        notifications (each didChange, under a fresh id) and of a generator handler's inner steps were never let go:
        about 2 KB per keystroke for the server's lifetime. Each future now leaves the table when it is done."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(lambda done: self._forget(msg_id, done))

    def _forget(self, msg_id: Any, future: Any) -> None:
        if self._request_futures.get(msg_id) is future:
            self._request_futures.pop(msg_id, None)

    def receive(self, value: object) -> None:
        """One message from the transport (its JSON value, or BAD): dispatched, or answered with the JSON-RPC
        error that fits, so that no request goes unanswered whatever a client sends."""
        if value is BAD:
            self._error(None, -32700, "Parse error: the message body is not JSON (or not UTF-8, or nested too deep)")
            return
        if isinstance(value, list):
            self._error(None, -32600, "Invalid Request: batches are not part of LSP; send one message at a time")
            return
        if not isinstance(value, dict):
            self._error(None, -32600, "Invalid Request: a message is a JSON object")
            return
        msg_id = value.get("id")
        id_ok = "id" not in value or (isinstance(msg_id, int | str) and not isinstance(msg_id, bool))
        method = value.get("method")
        if value.get("jsonrpc") != "2.0" or not id_ok or ("method" in value and not isinstance(method, str)):
            if "method" in value or not id_ok:
                self._error(
                    msg_id if id_ok else None,
                    -32600,
                    'Invalid Request: a message needs "jsonrpc": "2.0", a string "method" and an int or string "id"',
                )
            return
        if self._shutdown and "id" in value and "method" in value and method != types.EXIT:
            self._error(msg_id, -32600, f"Invalid Request: the server is shutting down; {method} is not served")
            return
        try:
            self.handle_message(self.structure_message(value))
        except Exception as exc:  # a handler bug: answer the request, keep serving
            log.exception("unable to handle %s", method or "a message")
            if "id" in value and "method" in value:
                self._error(msg_id, -32603, f"Internal error: {exc}")

    def _error(self, msg_id: object, code: int, message: str) -> None:
        log.warning("answered %s with error %d: %s", msg_id, code, message)
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def _user(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._user(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._user(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Generator[Any, Any, None]:
        yield from self._user(types.TEXT_DOCUMENT_DID_CLOSE, params)


class _ClientLog(logging.Handler):
    """Forwards fimtune's log records to the client as `window/logMessage` (from any thread)."""

    def __init__(self, server: FimtuneServer) -> None:
        super().__init__()
        self.server = server
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        loop = self.server.loop
        if loop is None or loop.is_closed():
            return
        params = types.LogMessageParams(
            type=_MESSAGE_TYPES.get(record.levelno, types.MessageType.Log), message=self.format(record)
        )
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            loop.call_soon_threadsafe(self.server.window_log_message, params)


class FimtuneServer(LanguageServer):
    """The server's state; handlers are registered by `create_server`."""

    protocol: FimtuneProtocol

    def __init__(self, defaults: Settings) -> None:
        super().__init__("fimtune", __version__, protocol_cls=FimtuneProtocol, max_workers=2)
        self.defaults = defaults
        self.settings = defaults
        self.documents = Documents()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.host = EngineHost(self._status_changed)
        self.index: WorkspaceIndex | None = None
        self.completer = Completer(self.host, None, defaults)
        self.inline_client = False  # the client renders inline completions (textDocument/completion stays quiet)
        self.roots: list[str] = []  # the workspace folders initialize named, indexed once initialized
        self._client_log = _ClientLog(self)
        self._started = False
        self._closed = False

    # ---- settings and status -----------------------------------------------------------------------------

    def apply_settings(self, data: Any, base: Settings) -> None:
        settings, warnings = parse_settings(data, base)
        for warning in warnings:
            log.warning("%s", warning)
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=warning))
        self.settings = settings
        self.completer.settings = settings
        set_log_level(settings.log_level, self._client_log)
        if self._started:
            self._configure()

    def _configure(self) -> None:
        if self.index is not None:
            self.index.set_config(context_config(self.settings))
        self.host.configure(self.settings)

    def start(self, roots: list[str]) -> None:
        """After `initialized`: load the engine and index the workspace, both in the background."""
        self._started = True
        self.index = WorkspaceIndex(context_config(self.settings))
        self.completer.index = self.index
        self.index.set_roots(roots)
        for doc in self.documents:
            self.index.opened(doc.path, fimtune_language(doc.language_id, doc.path), doc.text)
        self._configure()

    def _status_changed(self, status: dict[str, str]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            loop.call_soon_threadsafe(self._send_status, status)

    def _send_status(self, status: dict[str, str]) -> None:
        if self._closed:
            return
        self.protocol.notify(STATUS, status)
        if status["state"] == "error":
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=f"fimtune: {status['message']}")
            )

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Internal errors go to the log, not to a pop-up in the user's editor. A failed request is answered
        with its error already, so it is only logged at debug."""
        level = logging.DEBUG if source is FeatureRequestError else logging.ERROR
        log.log(level, "server error (%s): %s", getattr(source, "__name__", source), error)

    # ---- requests ----------------------------------------------------------------------------------------

    def document(self, uri: str) -> Document:
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"{uri} is not open: send textDocument/didOpen first")
        return doc

    def cursor(self, uri: str, position: types.Position) -> Cursor | None:
        """The request's cursor; None when completions are off for it; InvalidParams for a bad position."""
        doc = self.document(uri)
        try:
            index = doc.offset(position.line, position.character)
        except PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        if not self.settings.enabled or not self.settings.language_enabled(doc.language_id):
            return None
        return Cursor(uri, doc.path, doc.language_id, doc.text, index, doc.crlf)

    def close_components(self) -> None:
        """Stop requests, the engine and the index (at `shutdown`, or when the connection ends)."""
        if not self._closed:
            self._closed = True
            self.completer.close()
            self.host.close()
            if self.index is not None:
                self.index.close()
            for child in multiprocessing.active_children():  # the index's workers: nothing waits for them now
                child.kill()

    def shutdown(self) -> None:
        self.close_components()
        super().shutdown()


CLIENT_POLL_S = 0.5  # how often the server looks whether the client process named in initialize still runs


def _process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists


def watch_client_process(ls: FimtuneServer, pid: int) -> None:
    """Exit when the client process named in initialize dies: an editor that was killed may leave this
    server's stdin open (another process holds the pipe), and the server must not outlive it. The engine, the
    index and their worker processes go with it."""

    def run() -> None:
        while _process_alive(pid):
            time.sleep(CLIENT_POLL_S)
        log.warning("the client process %d has exited; shutting down", pid)
        ls.close_components()
        leave(1)  # as for `exit` without `shutdown`: nobody is left to wait for a clean stop

    threading.Thread(target=run, name="fimtune-client-watch", daemon=True).start()


def leave(code: int) -> NoReturn:
    """End the server process with `code` once its components are closed. The interpreter's own
    finalisation is skipped: a daemon thread still inside the engine, the index or a log write can abort it
    (SIGABRT, "could not acquire lock ... at interpreter shutdown"), which would turn the exit code LSP
    prescribes into a crash."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def set_log_level(level: str, client_handler: logging.Handler | None = None) -> None:
    value = _LEVELS.get(level, logging.INFO)
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(value)
        if client_handler is not None and client_handler not in logger.handlers:
            logger.addHandler(client_handler)
    if client_handler is not None:
        client_handler.setLevel(value)
    # pygls logs every message body at INFO: only its warnings, unless debugging.
    logging.getLogger("pygls").setLevel(logging.DEBUG if value <= logging.DEBUG else logging.WARNING)


def _plain(value: Any) -> Any:
    """Untyped params arrive as pygls' named tuples: back to JSON-like dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _command(answer: Answer) -> types.Command:
    return types.Command(title="fimtune accepted", command=ACCEPTED, arguments=[{"id": answer.id}])


def _roots(params: types.InitializeParams) -> list[str]:
    if params.workspace_folders:
        return [uri_to_path(f.uri) for f in params.workspace_folders]
    if params.root_uri:
        return [uri_to_path(params.root_uri)]
    if params.root_path:
        return [params.root_path]
    return []


WATCH_REGISTRATION_ID = "fimtune-source-files"


def source_files_glob() -> str:
    """One glob for every file extension fimtune indexes: **/*.{py,pyi,js,...}."""
    extensions = sorted({ext.lstrip(".") for spec in LANGUAGES.values() for ext in spec.extensions})
    return "**/*.{" + ",".join(extensions) + "}"


def watch_source_files(ls: FimtuneServer) -> None:
    """Ask the client to report source files created, changed or deleted outside the editor (a git checkout, a
    code generator), so cross-file context follows the disk. Only clients that allow dynamic registration of
    workspace/didChangeWatchedFiles can be asked; without it, files are re-read when opened, saved or closed."""
    workspace = ls.client_capabilities.workspace
    watched = workspace.did_change_watched_files if workspace is not None else None
    if watched is None or not watched.dynamic_registration:
        log.info("the client cannot watch files for the server: context follows open, saved and closed files only")
        return
    options = types.DidChangeWatchedFilesRegistrationOptions(
        watchers=[
            types.FileSystemWatcher(glob_pattern=source_files_glob()),
            # A deleted folder is one event for the folder itself, which the source glob does not match.
            types.FileSystemWatcher(glob_pattern="**/*", kind=types.WatchKind.Delete),
        ]
    )
    registration = types.Registration(
        id=WATCH_REGISTRATION_ID, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options
    )

    def done(future: Any) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("the client refused to watch source files: %s", future.exception())

    ls.client_register_capability(types.RegistrationParams(registrations=[registration])).add_done_callback(done)


# ---- the handlers: one thin function per LSP method ------------------------------------------------------


def initialize(ls: FimtuneServer, params: types.InitializeParams) -> None:
    ls.loop = asyncio.get_running_loop()
    encoding = ls.workspace.position_encoding or "utf-16"
    ls.documents.encoding = str(getattr(encoding, "value", encoding))
    text_caps = params.capabilities.text_document
    ls.inline_client = text_caps is not None and text_caps.inline_completion is not None
    ls.roots = _roots(params)
    ls.apply_settings(params.initialization_options, ls.defaults)
    if params.process_id:
        watch_client_process(ls, params.process_id)


def initialized(ls: FimtuneServer, params: types.InitializedParams) -> None:
    ls.start(ls.roots)
    watch_source_files(ls)


def shutdown(ls: FimtuneServer, params: None) -> None:
    ls.close_components()


def did_change_configuration(ls: FimtuneServer, params: types.DidChangeConfigurationParams) -> None:
    section = settings_section(params.settings)
    if section is not None:
        ls.apply_settings(section, ls.settings)


def did_change_folders(ls: FimtuneServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    # The event's changes applied to the folders the server indexes (a client that named only a rootUri has it
    # there, and pygls's own folder list does not: rebuilding from that list dropped it).
    removed = {os.path.abspath(uri_to_path(f.uri)) for f in params.event.removed}
    roots = [r for r in ls.roots if os.path.abspath(r) not in removed]
    for folder in params.event.added:
        path = uri_to_path(folder.uri)
        if os.path.abspath(path) not in {os.path.abspath(r) for r in roots}:
            roots.append(path)
    ls.roots = roots
    if ls.index is not None:
        ls.index.set_roots(roots)


def did_change_watched_files(ls: FimtuneServer, params: types.DidChangeWatchedFilesParams) -> None:
    if ls.index is not None:
        for change in params.changes:
            ls.index.on_disk(uri_to_path(change.uri), deleted=change.type == types.FileChangeType.Deleted)


def did_open(ls: FimtuneServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    doc = ls.documents.open(item.uri, item.text, item.version, item.language_id)
    if ls.index is not None:
        ls.index.opened(doc.path, fimtune_language(doc.language_id, doc.path), doc.text)


def did_change(ls: FimtuneServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = ls.documents.get(params.text_document.uri)
    if doc is None:
        log.warning("change to %s, which is not open: ignored", params.text_document.uri)
        return
    try:
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                doc.apply(change.text, (r.start.line, r.start.character), (r.end.line, r.end.character))
            else:
                doc.apply(change.text)
    except PositionError as e:
        log.error("%s; the document is out of sync until the editor sends it again (reopen it)", e)
    doc.version = params.text_document.version
    if ls.index is not None:
        ls.index.changed(doc.path, fimtune_language(doc.language_id, doc.path), doc.text)


def did_save(ls: FimtuneServer, params: types.DidSaveTextDocumentParams) -> None:
    doc = ls.documents.get(params.text_document.uri)
    if doc is not None and ls.index is not None:
        ls.index.refresh(doc.path, fimtune_language(doc.language_id, doc.path), doc.text)


def did_close(ls: FimtuneServer, params: types.DidCloseTextDocumentParams) -> None:
    doc = ls.documents.close(params.text_document.uri)
    ls.completer.forget(params.text_document.uri)
    if doc is not None and ls.index is not None:
        ls.index.closed(doc.path, fimtune_language(doc.language_id, doc.path))


async def inline_completion(ls: FimtuneServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    cursor = ls.cursor(params.text_document.uri, params.position)
    if cursor is None:
        return types.InlineCompletionList(items=[])
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    answer = await ls.completer.complete(cursor, debounce=not invoked)
    if answer is None:
        return types.InlineCompletionList(items=[])
    at = params.position
    item = types.InlineCompletionItem(
        insert_text=answer.text, range=types.Range(start=at, end=at), command=_command(answer)
    )
    return types.InlineCompletionList(items=[item])


async def completion(ls: FimtuneServer, params: types.CompletionParams) -> types.CompletionList | None:
    if ls.inline_client:
        return None  # the client shows the inline suggestion; a menu entry would repeat it
    cursor = ls.cursor(params.text_document.uri, params.position)
    if cursor is None:
        return types.CompletionList(is_incomplete=True, items=[])
    invoked = params.context is not None and params.context.trigger_kind == types.CompletionTriggerKind.Invoked
    answer = await ls.completer.complete(cursor, debounce=not invoked)
    if answer is None:
        return types.CompletionList(is_incomplete=True, items=[])
    at = params.position
    first = answer.text.strip().splitlines()[0] if answer.text.strip() else answer.text
    item = types.CompletionItem(
        label=first if len(first) <= 60 else first[:57] + "...",
        kind=types.CompletionItemKind.Snippet,
        detail="fimtune",
        documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=answer.text),
        sort_text="0",
        filter_text="",
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=types.Range(start=at, end=at), new_text=answer.text),
        command=_command(answer),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def accepted(ls: FimtuneServer, *args: Any) -> None:
    arg = _plain(args[0]) if args else None
    suggestion = arg.get("id") if isinstance(arg, dict) else None
    if not isinstance(suggestion, str):
        raise JsonRpcInvalidParams(f'{ACCEPTED} takes one argument {{"id": "<suggestion id>"}}, not {args!r}')
    ls.completer.accepted(suggestion)


async def prompt(ls: FimtuneServer, params: Any) -> dict[str, Any]:
    try:
        where = ls.protocol._converter.structure(_plain(params), types.TextDocumentPositionParams)
    except Exception:
        raise JsonRpcInvalidParams(
            f"{PROMPT} takes {{textDocument: {{uri}}, position: {{line, character}}}}, not {_plain(params)!r}"
        ) from None
    uri, position = where.text_document.uri, where.position
    doc = ls.document(uri)
    try:
        index = doc.offset(position.line, position.character)
    except PositionError as e:
        raise JsonRpcInvalidParams(str(e)) from None
    cursor = Cursor(uri, doc.path, doc.language_id, doc.text, index, doc.crlf)
    try:
        return await ls.completer.prompt(cursor)
    except (EngineError, FimFormatError) as e:
        raise JsonRpcException(str(e)) from None


def status(ls: FimtuneServer, params: Any) -> dict[str, str]:
    return dict(ls.host.status)


def stats(ls: FimtuneServer, params: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(ls.completer.snapshot())
    out["documents"] = len(ls.documents)
    out["handlers_in_flight"] = len(ls.protocol._request_futures)  # this request's own among them
    out["index"] = ls.index.stats() if ls.index is not None else {}
    out["status"] = dict(ls.host.status)
    loaded = ls.host.current()
    cache_stats = getattr(loaded.engine, "cache_stats", None) if loaded is not None else None
    out["prompt_cache"] = cache_stats() if cache_stats is not None else {}
    options = _plain(params)
    out["timings_ms"] = ls.completer.timings(reset=isinstance(options, dict) and bool(options.get("reset")))
    return out


# The LSP methods served, each by the thin function above: (method, handler, registration options).
FEATURES: tuple[tuple[str, Callable[..., Any], Any], ...] = (
    (types.INITIALIZE, initialize, None),
    (types.INITIALIZED, initialized, None),
    (types.SHUTDOWN, shutdown, None),
    (types.WORKSPACE_DID_CHANGE_CONFIGURATION, did_change_configuration, None),
    (types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS, did_change_folders, None),
    (types.WORKSPACE_DID_CHANGE_WATCHED_FILES, did_change_watched_files, None),
    (types.TEXT_DOCUMENT_DID_OPEN, did_open, None),
    (types.TEXT_DOCUMENT_DID_CHANGE, did_change, None),
    (types.TEXT_DOCUMENT_DID_SAVE, did_save, types.SaveOptions(include_text=False)),
    (types.TEXT_DOCUMENT_DID_CLOSE, did_close, None),
    (types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_completion, types.InlineCompletionOptions()),
    (types.TEXT_DOCUMENT_COMPLETION, completion, types.CompletionOptions()),
    (PROMPT, prompt, None),
    (STATUS, status, None),
    (STATS, stats, None),
)
COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = ((ACCEPTED, accepted),)


def create_server(defaults: Settings | None = None) -> FimtuneServer:
    """A server whose settings start from `defaults` (the command line's); clients override them."""
    server = FimtuneServer(defaults or Settings())
    for method, handler, options in FEATURES:
        server.feature(method, options)(handler)
    for name, command in COMMANDS:
        server.command(name)(command)
    return server


def serve(defaults: Settings, tcp: tuple[str, int] | None = None) -> None:
    """Run the server over stdio (or TCP). stdout carries only the protocol: anything else that writes to
    sys.stdout (a library's print) goes to stderr."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    set_log_level(defaults.log_level)
    server = create_server(defaults)
    if tcp is not None:
        server.start_tcp(*tcp)
        return
    stdin: BinaryIO = sys.stdin.buffer
    stdout: BinaryIO = sys.stdout.buffer
    sys.stdout = sys.stderr
    code = 0
    try:
        if _is_pipe(stdin):
            _start_io_pipe(server, stdin, stdout)
        else:
            server.start_io(stdin, stdout)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    leave(code)  # both loops have shut the server down on their way out


def _is_pipe(stream: BinaryIO) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return os.name == "posix" and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))


def _start_io_pipe(server: FimtuneServer, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """pygls' stdio loop, reading stdin on the event loop itself (a pipe transport) instead of through a
    thread per read: three thread hops fewer per message, which shows on a busy machine."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
        server.protocol.set_writer(StdoutWriter(stdout))
        await run_stdio(reader, stop, server.protocol.receive)

    stop = server._stop_event = threading.Event()
    code: int | str | None = 0
    try:
        asyncio.run(run())
    except BrokenPipeError:
        log.error("the connection to the client is lost; shutting down")
    except KeyboardInterrupt:
        pass
    except SystemExit as e:  # `exit`: 0 after `shutdown`, 1 without (the LSP specification's exit codes)
        code = e.code
    finally:
        server.shutdown()
    if code:
        raise SystemExit(code)
