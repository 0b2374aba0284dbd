"""`fimtune serve` end to end over stdio (pytest-lsp), with Neovim's and VS Code's client capabilities."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcRequestCancelled
from pygls.protocol.json_rpc import JsonRPCRequestMessage
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVER = [sys.executable, "-m", "lsp_server", "--engine", "fixed"]
SUGGESTION = "return a + b\n\ndef sub(a, b):\n    return a - b\n"
# Another workspace file whose windows share rare identifiers with the test documents (context retrieval).
HELPERS = "def frobnicate_total(widget_count, gizmo_factor):\n    return widget_count * gizmo_factor\n" * 3


def settings(**over: Any) -> dict[str, Any]:
    """Complete settings for the fixed engine (each test states all it depends on)."""
    base: dict[str, Any] = {
        "engine": "fixed",
        "debounceMs": 0,
        "timeoutMs": 5000,
        "maxTokens": 64,
        "context": {"enabled": True, "maxChars": 4000},
        "languages": {"*": True},
        "telemetry": {"path": "", "includeText": False},
        "fixed": {"text": SUGGESTION, "delayMs": 0, "error": ""},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    (root / "helpers.py").write_text(HELPERS)
    (root / "other.py").write_text("import os\n\nprint(os.getcwd())\n")
    return root


@pytest_lsp.fixture(
    config=ClientServerConfig(server_command=SERVER),
    params=["neovim", "visual-studio-code"],
    scope="module",
)
async def client(request: pytest.FixtureRequest, lsp_client: LanguageClient, workspace: Path) -> Any:
    lsp_client.statuses = []  # type: ignore[attr-defined]
    lsp_client.kind = request.param  # type: ignore[attr-defined]
    lsp_client.registrations = []  # type: ignore[attr-defined]

    @lsp_client.feature("fimtune/status")
    def on_status(params: Any) -> None:
        lsp_client.statuses.append(plain(params))  # type: ignore[attr-defined]

    @lsp_client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def on_register(params: types.RegistrationParams) -> None:
        lsp_client.registrations.extend(params.registrations)  # type: ignore[attr-defined]

    lsp_client.init_result = await lsp_client.initialize_session(  # type: ignore[attr-defined]
        types.InitializeParams(
            capabilities=client_capabilities(request.param),
            root_uri=workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")],
            initialization_options=settings(),
        )
    )
    await wait_ready(lsp_client)
    yield
    await lsp_client.shutdown_session()


def plain(value: Any) -> Any:
    """pygls' client gives untyped results as named tuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


async def request(client: LanguageClient, method: str, params: Any = None) -> Any:
    return plain(await client.protocol.send_request_async(method, params))


async def wait_ready(client: LanguageClient, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = await request(client, "fimtune/status")
        if status["state"] == "ready":
            return status
        assert status["state"] != "error", status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)


async def stats(client: LanguageClient) -> dict[str, Any]:
    return await request(client, "fimtune/stats")


async def configure(client: LanguageClient, **over: Any) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"fimtune": settings(**over)})
    )
    await wait_ready(client)


def open_doc(client: LanguageClient, workspace: Path, text: str, name: str | None = None, lang: str = "python") -> str:
    uri = (workspace / (name or f"doc_{uuid.uuid4().hex[:8]}.py")).as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri, lang, 1, text))
    )
    return uri


def insert(client: LanguageClient, uri: str, version: int, line: int, character: int, text: str) -> None:
    at = types.Position(line, character)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)],
        )
    )


def inline_params(uri: str, line: int, character: int, invoked: bool = False) -> types.InlineCompletionParams:
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=kind),
    )


def items(result: object) -> list[types.InlineCompletionItem]:
    assert isinstance(result, types.InlineCompletionList), result
    return list(result.items)


async def inline(client: LanguageClient, uri: str, line: int, character: int) -> list[types.InlineCompletionItem]:
    return items(await client.text_document_inline_completion_async(inline_params(uri, line, character)))


async def prompt_at(client: LanguageClient, uri: str, line: int, character: int) -> dict[str, Any]:
    return await request(
        client, "fimtune/prompt", {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    )


# ---- capabilities and the basic round trip ---------------------------------------------------------------


async def test_capabilities_and_status(client: LanguageClient) -> None:
    status = await request(client, "fimtune/status")
    assert status["state"] == "ready" and status["engine"] == "fixed" and status["model"] == "fixed"
    caps: types.ServerCapabilities = client.init_result.capabilities  # type: ignore[attr-defined]
    assert isinstance(caps.inline_completion_provider, types.InlineCompletionOptions)
    assert caps.completion_provider is not None
    sync = caps.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions)
    assert sync.change == types.TextDocumentSyncKind.Incremental and sync.open_close
    assert caps.execute_command_provider is not None
    assert list(caps.execute_command_provider.commands) == ["fimtune.accepted"]
    # The status notifications so far: loading, then ready (the server announces each change).
    states = [n["state"] for n in client.statuses]  # type: ignore[attr-defined]
    assert states[:2] == ["loading", "ready"]


async def test_inline_completion_with_accept_command_and_telemetry(
    client: LanguageClient, workspace: Path, tmp_path: Path
) -> None:
    log = tmp_path / "telemetry.jsonl"
    await configure(client, telemetry={"path": str(log)})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    items = await inline(client, uri, 1, 4)
    assert len(items) == 1
    item = items[0]
    assert item.insert_text == "return a + b"  # the block exit rule cut the rest of the fixed text
    assert item.range == types.Range(types.Position(1, 4), types.Position(1, 4))
    assert item.command is not None and item.command.command == "fimtune.accepted"
    suggestion_id = item.command.arguments[0]["id"]  # type: ignore[index]
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="fimtune.accepted", arguments=item.command.arguments)
    )
    s = await stats(client)
    assert s["accepted"] >= 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        await asyncio.sleep(0.02)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["shown", "accepted"]
    assert {e["id"] for e in events} == {suggestion_id}
    assert events[0]["chars"] == len("return a + b") and events[0]["language"] == "python"
    assert all("text" not in e for e in events)  # no code text unless asked
    await configure(client, telemetry={"path": str(log), "includeText": True})
    insert(client, uri, 2, 1, 4, "x = ")  # a different cursor state: a new suggestion
    assert len(await inline(client, uri, 1, 8)) == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < 3:
        await asyncio.sleep(0.02)
    assert "text" in json.loads(log.read_text().splitlines()[-1])


async def test_completion_fallback_for_clients_without_inline(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    uri = open_doc(client, workspace, "def add(a, b):\n    total = \n")
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=types.Position(1, 12))
    )
    assert isinstance(result, types.CompletionList) and result.is_incomplete
    [item] = result.items
    assert isinstance(item.text_edit, types.TextEdit)
    assert item.text_edit.new_text == "return a + b"  # single-line mode after `total = `
    assert item.text_edit.range == types.Range(types.Position(1, 12), types.Position(1, 12))
    assert item.command is not None and item.command.command == "fimtune.accepted"


# ---- type-through, cache, debounce, supersede, cancellation ---------------------------------------------


async def test_type_through_makes_no_model_call(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    [first] = await inline(client, uri, 1, 4)
    assert first.insert_text == "return a + b"
    before = await stats(client)
    for i, ch in enumerate("retu"):
        insert(client, uri, 2 + i, 1, 4 + i, ch)
        [item] = await inline(client, uri, 1, 5 + i)
        assert item.insert_text == "return a + b"[i + 1 :]
    after = await stats(client)
    assert after["model_calls"] == before["model_calls"]
    assert after["type_through"] - before["type_through"] == 4
    # Typing something else asks the model again; deleting back to a seen prompt is a cache hit.
    insert(client, uri, 6, 1, 8, "X")
    await inline(client, uri, 1, 9)
    assert (await stats(client))["model_calls"] == before["model_calls"] + 1


async def test_debounce_coalesces_a_burst(client: LanguageClient, workspace: Path) -> None:
    await configure(client, debounceMs=150, fixed={"text": ", baz)\n"})
    uri = open_doc(client, workspace, "x = 1\n")
    before = await stats(client)
    tasks = []
    for i, ch in enumerate("y = foo(bar"):
        insert(client, uri, 2 + i, 1, i, ch)
        tasks.append(asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, 1, i + 1))))
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*tasks)
    after = await stats(client)
    assert after["model_calls"] - before["model_calls"] == 1
    assert all(not items(r) for r in results[:-1])  # superseded while waiting: empty, no model call
    assert [i.insert_text for i in items(results[-1])] == [", baz)"]


async def test_newer_request_stops_the_older_generation(client: LanguageClient, workspace: Path) -> None:
    await configure(client, fixed={"delayMs": 1500})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n\nz = \n")
    old = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, 1, 4)))
    deadline = time.monotonic() + 5
    while (await stats(client))["engine_running"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    new = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, 3, 4)))
    old_result = await old
    assert time.monotonic() - t0 < 1.0  # not the 1.5 s the old generation would have taken
    assert items(old_result) == []
    assert (await stats(client))["engine_running"] == 1  # only the new one generates
    new_result = await new
    assert [i.insert_text for i in items(new_result)] == ["return a + b"]


async def test_cancel_request_stops_the_generation(client: LanguageClient, workspace: Path) -> None:
    await configure(client, fixed={"delayMs": 5000})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    before = await stats(client)
    msg_id = f"cancel-{uuid.uuid4().hex}"
    future = client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4), msg_id=msg_id
    )
    deadline = time.monotonic() + 5
    while (await stats(client))["engine_running"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wrap_future(future)
    while (await stats(client))["engine_running"] > 0:
        assert time.monotonic() - t0 < 1.0, "the engine kept generating after the cancel"
        await asyncio.sleep(0.02)
    after = await stats(client)
    assert after["cancelled"] - before["cancelled"] == 1


async def test_slow_engine_times_out_and_the_next_request_works(client: LanguageClient, workspace: Path) -> None:
    await configure(client, timeoutMs=200, fixed={"delayMs": 2000})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    t0 = time.monotonic()
    assert await inline(client, uri, 1, 4) == []
    assert time.monotonic() - t0 < 1.5
    assert (await stats(client))["engine_running"] == 0  # the timed-out call was cancelled too
    await configure(client)
    assert [i.insert_text for i in await inline(client, uri, 1, 4)] == ["return a + b"]


async def test_engine_failure_and_recovery(client: LanguageClient, workspace: Path) -> None:
    await configure(client, fixed={"error": "model server unreachable"})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    assert await inline(client, uri, 1, 4) == []
    await asyncio.sleep(0.1)
    assert any("model server unreachable" in m.message for m in client.log_messages)
    await configure(client)
    assert [i.insert_text for i in await inline(client, uri, 1, 4)] == ["return a + b"]


async def test_engine_that_cannot_start_reports_error_status(client: LanguageClient, workspace: Path) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"fimtune": {"engine": "openai", "template": "auto"}})
    )
    deadline = time.monotonic() + 10
    while (status := await request(client, "fimtune/status"))["state"] != "error":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    assert "template" in status["message"]  # says what to set
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    assert await inline(client, uri, 1, 4) == []  # no engine: empty, no error
    await configure(client)
    assert [i.insert_text for i in await inline(client, uri, 1, 4)] == ["return a + b"]


# ---- bad input --------------------------------------------------------------------------------------------


async def test_bad_settings_fall_back_with_a_message(client: LanguageClient, workspace: Path) -> None:
    shown = len(client.messages)
    await configure(client, maxTokens="lots", debounceMs=-5, colour="red")
    texts = [m.message for m in client.messages[shown:]]
    assert any("'maxTokens'" in t for t in texts) and any("'debounceMs'" in t for t in texts)
    assert any("'colour'" in t for t in texts)
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    assert [i.insert_text for i in await inline(client, uri, 1, 4)] == ["return a + b"]


async def test_malformed_params_and_positions_get_error_responses(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    uri = open_doc(client, workspace, "a = 1\n")
    msg_id = f"bad-{uuid.uuid4().hex}"
    future: Any = asyncio.get_running_loop().create_future()
    client.protocol._request_futures[msg_id] = future  # a raw request the typed client API would refuse
    client.protocol._send_data(
        JsonRPCRequestMessage(
            id=msg_id,
            method=types.TEXT_DOCUMENT_INLINE_COMPLETION,
            jsonrpc="2.0",
            params={"textDocument": {"uri": uri}, "position": "here"},
        )
    )
    with pytest.raises(JsonRpcInvalidParams):
        await asyncio.wait_for(future, 5)
    with pytest.raises(JsonRpcInvalidParams, match="outside the document"):
        await inline(client, uri, 40, 0)
    with pytest.raises(JsonRpcInvalidParams, match="not open"):
        await inline(client, (workspace / "never_opened.py").as_uri(), 0, 0)
    with pytest.raises(JsonRpcException):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="fimtune.accepted", arguments=["no id"])
        )
    # A character past the end of a line means the end of that line (LSP); the server is still serving.
    assert (await prompt_at(client, uri, 0, 99))["prefixChars"] == len("a = 1")


# ---- positions, line endings, large documents, context ---------------------------------------------------


async def test_a_single_line_cursor_stops_the_engine_at_the_newline(client: LanguageClient, workspace: Path) -> None:
    """Where the stop rules keep the first line only, the engine is told to stop at the newline (the same text,
    sooner); where a block may follow, it is not."""
    await configure(client)
    uri = open_doc(client, workspace, "def f(a):\n    x = a + 1\n    \n")
    single = await prompt_at(client, uri, 1, len("    x = a"))
    multi = await prompt_at(client, uri, 2, 4)
    assert single["stop"][0] == "\n" and single["stop"][1:] == multi["stop"]
    assert "\n" not in multi["stop"]


async def test_the_engine_ends_where_the_stop_rules_have_decided(client: LanguageClient, workspace: Path) -> None:
    """A multi-line cursor: the engine is asked after every piece whether the stop rules have decided, and ends
    there (counted in `settled`); the answer is what the whole text would give."""
    text = "y = a + 1\n    return y\n\ndef g():\n    return 2\n"
    await configure(client, fixed={"text": text})
    uri = open_doc(client, workspace, "def f(a):\n    \n")
    before = await stats(client)
    [item] = await inline(client, uri, 1, 4)
    assert item.insert_text == "y = a + 1\n    return y"
    after = await stats(client)
    assert after["settled"] == before["settled"] + 1 and after["model_calls"] == before["model_calls"] + 1
    await configure(client, fixed={"text": "y = a + 1\n    return y\n"})
    uri = open_doc(client, workspace, "def f(a):\n    \n", name="f2.py")
    [item] = await inline(client, uri, 1, 4)
    assert item.insert_text == "y = a + 1\n    return y"
    assert (await stats(client))["settled"] == after["settled"]  # nothing to decide: the engine ran to its end


async def test_unicode_positions(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    line = "s = '😀中文' + x"
    uri = open_doc(client, workspace, f"{line}\nt = 1\n")
    status = await request(client, "fimtune/stats")
    assert status["documents"] >= 1
    # The client's position encoding: UTF-16 (VS Code) or UTF-8 (Neovim 0.11 offers it first).
    utf8 = "utf-8" in (client.capabilities.general.position_encodings or [])  # type: ignore[union-attr]
    before_x = line.index("x")
    units = len(line[:before_x].encode("utf-8")) if utf8 else len(line[:before_x].encode("utf-16-le")) // 2
    p = await prompt_at(client, uri, 0, units)
    assert p["prefixChars"] == before_x
    assert "😀中文' +<|fim_suffix|>x" in p["prompt"]  # the blank before the cursor opens the middle (lead_of)
    # An edit after the emoji, in client units, lands where the user typed it.
    insert(client, uri, 2, 0, units, "y + ")
    p = await prompt_at(client, uri, 0, units + 4)
    assert p["prefixChars"] == before_x + 4
    assert "'😀中文' + y +<|fim_suffix|>x" in p["prompt"]


async def test_crlf_document(client: LanguageClient, workspace: Path) -> None:
    await configure(client, fixed={"text": "if a:\n        return 1\n    return 2\n"})
    uri = open_doc(client, workspace, "def f(a):\r\n    \r\n")
    [item] = await inline(client, uri, 1, 4)
    assert item.insert_text == "if a:\r\n        return 1\r\n    return 2"
    insert(client, uri, 2, 1, 4, "pass\r\n    ")
    p = await prompt_at(client, uri, 2, 4)
    assert p["prefixChars"] == len("def f(a):\r\n    pass\r\n    ")


async def test_large_document(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    block = "def function_{i}(value):\n    total = value * {i}\n    return total + 1\n\n\n"
    text = "".join(block.format(i=i) for i in range(70_000))
    assert len(text) > 5_000_000
    lines = text.count("\n")
    uri = open_doc(client, workspace, text + "def add(a, b):\n    \n")
    t0 = time.monotonic()
    [item] = await inline(client, uri, lines + 1, 4)
    assert item.insert_text == "return a + b"
    insert(client, uri, 2, lines + 1, 4, "x = 1\n    ")
    insert(client, uri, 3, 0, 0, "import os\n")
    p = await prompt_at(client, uri, lines + 3, 4)
    assert p["prefixChars"] == len("import os\n") + len(text) + len("def add(a, b):\n    x = 1\n    ")
    assert time.monotonic() - t0 < 20


async def test_context_from_workspace_files(client: LanguageClient, workspace: Path) -> None:
    await configure(client)
    deadline = time.monotonic() + 20
    while not (await stats(client))["index"].get("ready"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    text = "def report(widget_count, gizmo_factor):\n    value = frobnicate_total(widget_count, gizmo_factor)\n    "
    uri = open_doc(client, workspace, text)
    p = await prompt_at(client, uri, 2, 4)
    assert "helpers.py" in [c["path"] for c in p["context"]]
    assert "frobnicate_total(widget_count, gizmo_factor):" in p["prompt"]
    await configure(client, context={"enabled": False})
    p = await prompt_at(client, uri, 2, 4)
    assert p["context"] == []


async def test_context_follows_files_changed_outside_the_editor(client: LanguageClient, workspace: Path) -> None:
    """A file written, then deleted, by something other than the editor (a git checkout), reported through
    workspace/didChangeWatchedFiles: the context picks it up, then lets it go; ignored folders stay out."""
    watch = [r for r in client.registrations if r.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES]  # type: ignore[attr-defined]
    if client.kind == "visual-studio-code":  # type: ignore[attr-defined]  # allows dynamic registration
        assert [r.id for r in watch] == ["fimtune-source-files"]
        pattern = plain(watch[0].register_options)["watchers"][0]["globPattern"]  # untyped on the client side
        assert pattern.startswith("**/*.{") and ",py," in pattern and ",rs," in pattern
    else:  # Neovim's capabilities on Linux do not: nothing is registered, notifications are still handled
        assert watch == []
    await configure(client)
    deadline = time.monotonic() + 20
    while not (await stats(client))["index"].get("ready"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    name = f"gadgets_{uuid.uuid4().hex[:6]}"

    def code(fn: str) -> str:
        return f"def {fn}(sprocket_torque, flange_radius):\n    return sprocket_torque / flange_radius\n" * 3

    # The document uses both names: a file defining either would be good context, if the index held it.
    text = (
        f"def build(sprocket_torque, flange_radius):\n    value = {name}_assemble(sprocket_torque, flange_radius)\n"
        f"    other = {name}_vendored(sprocket_torque, flange_radius)\n    "
    )
    uri = open_doc(client, workspace, text)

    async def context_paths(expect: bool) -> list[str]:
        deadline = time.monotonic() + 10
        while True:
            paths = [c["path"] for c in (await prompt_at(client, uri, 3, 4))["context"]]
            if (f"{name}.py" in paths) == expect or time.monotonic() > deadline:
                return paths
            await asyncio.sleep(0.05)

    def report(kind: types.FileChangeType, *paths: Path) -> None:
        client.workspace_did_change_watched_files(
            types.DidChangeWatchedFilesParams(changes=[types.FileEvent(uri=p.as_uri(), type=kind) for p in paths])
        )

    ignored = workspace / "node_modules" / f"{name}.py"
    ignored.parent.mkdir(exist_ok=True)
    ignored.write_text(code(f"{name}_vendored"))
    created = workspace / f"{name}.py"
    created.write_text(code(f"{name}_assemble"))
    report(types.FileChangeType.Created, ignored, created)  # applied in that order
    paths = await context_paths(True)
    assert f"{name}.py" in paths
    assert f"node_modules/{name}.py" not in paths  # the folder's walk skips node_modules

    created.unlink()
    report(types.FileChangeType.Deleted, created)
    assert f"{name}.py" not in await context_paths(False)


async def test_disabled_language_gets_nothing(client: LanguageClient, workspace: Path) -> None:
    await configure(client, languages={"python": False}, fixed={"text": "x := 1\n"})
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    assert await inline(client, uri, 1, 4) == []
    go = open_doc(client, workspace, "package main\n\nfunc f() {\n\t\n}\n", name="main.go", lang="go")
    assert [i.insert_text for i in await inline(client, go, 3, 1)] == ["x := 1"]


async def test_no_bad_setting_stops_the_engine(client: LanguageClient, workspace: Path) -> None:
    uri = open_doc(client, workspace, "def add(a, b):\n    \n")
    keep = {"engine", "fixed.text", "fixed.delayMs", "fixed.error", "enabled", "languages", "timeoutMs"}
    from tests.test_lsp_settings_grid import bad_values

    grid = [(k, v) for k, v in bad_values() if k not in keep]  # those decide the answer this test checks
    assert len(grid) > 60
    for key, value in grid:
        head, _, leaf = key.partition(".")
        await configure(client, **({head: {leaf: value}} if leaf else {head: value}))  # asserts the state is not error
        got = [i.insert_text for i in await inline(client, uri, 1, 4)]
        assert got == ["return a + b"], (key, value, got)
    await configure(client)


async def test_one_very_long_line_is_bounded_work_and_the_server_stays_responsive(
    client: LanguageClient, workspace: Path
) -> None:
    """A 5 MB minified line: each completion parses a window of characters, not the whole line, and other
    requests are answered while one is worked on."""
    await configure(client)
    line = "var a=" + ",".join(f"f{i}(x{i})" for i in range(600_000)) + ";"
    assert len(line) > 5_000_000
    uri = open_doc(client, workspace, line + "\nfunction add(a, b) {\n  \n}\n", name="minified.js", lang="javascript")
    for character in (len(line) // 2, len(line)):  # inside the long line, then at its end
        t0 = time.monotonic()
        task = asyncio.ensure_future(inline(client, uri, 0, character))
        status = await request(client, "fimtune/status")
        assert status["state"] == "ready" and time.monotonic() - t0 < 1.0
        await task
        assert time.monotonic() - t0 < 3.0, time.monotonic() - t0


async def test_a_lone_surrogate_in_the_document_or_the_engines_answer_fails_nothing(
    client: LanguageClient, workspace: Path
) -> None:
    await configure(client)
    uri = open_doc(client, workspace, "x = '\ud800'\ndef add(a, b):\n    \n")
    assert [i.insert_text for i in await inline(client, uri, 2, 4)] == ["return a + b"]
    insert(client, uri, 2, 0, 5, "\udc00")  # an edit with one too
    assert [i.insert_text for i in await inline(client, uri, 2, 4)] == ["return a + b"]
    await configure(client, fixed={"text": "return '\udfff'"})
    other = open_doc(client, workspace, "def add(a, b):\n    \n")
    assert [i.insert_text for i in await inline(client, other, 1, 4)] == ["return '\ufffd'"]
    await configure(client)
