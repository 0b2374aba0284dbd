"""Documents outside every workspace folder (Neovim started elsewhere, a loose file in VS Code), through the real
server over stdio: context comes from the document's own repository, indexed in the background, and no prompt
holds an absolute path. Also a client that names no workspace folder at all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.test_lsp_server import SERVER, open_doc, prompt_at, request, settings, stats, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

HELPER = "def frobnicate_total(widget_count, gizmo_factor):\n    return widget_count * gizmo_factor\n" * 3
OTHER_HELPER = "def quuxify_ledger(ledger_rows, quux_rate):\n    return [r * quux_rate for r in ledger_rows]\n" * 3
INSIDE = "def report(widget_count, gizmo_factor):\n    value = frobnicate_total(widget_count, gizmo_factor)\n    "
OUTSIDE = "def audit(ledger_rows, quux_rate):\n    rows = quuxify_ledger(ledger_rows, quux_rate)\n    "


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outside")
    ws = root / "workspace"
    ws.mkdir()
    (ws / "helpers.py").write_text(HELPER)
    other = root / "elsewhere" / "ledger"  # a git work tree the editor was not started in
    (other / ".git").mkdir(parents=True)
    (other / "lib").mkdir()
    (other / "lib" / "quux.py").write_text(OTHER_HELPER)
    (other / "app").mkdir()
    return {"ws": ws, "other": other}


async def _start(client: LanguageClient, ws: Path | None, folders: bool = True) -> None:
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("neovim"),
            root_uri=ws.as_uri() if ws else None,
            workspace_folders=[types.WorkspaceFolder(uri=ws.as_uri(), name="ws")] if ws and folders else None,
            initialization_options=settings(),
        )
    )
    await wait_ready(client)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER), scope="module")
async def client(lsp_client: LanguageClient, folders: dict[str, Path]) -> Any:
    await _start(lsp_client, folders["ws"])
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER), scope="module")
async def bare_client(lsp_client: LanguageClient) -> Any:
    await _start(lsp_client, None)
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER), scope="module")
async def root_only_client(lsp_client: LanguageClient, folders: dict[str, Path]) -> Any:
    await _start(lsp_client, folders["ws"], folders=False)  # rootUri, no workspaceFolders (older clients)
    yield
    await lsp_client.shutdown_session()


async def _context_paths(client: LanguageClient, uri: str, line: int, want: str, timeout: float = 20.0) -> Any:
    """The prompt at a cursor once the context holds `want` (the folder is indexed in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        p = await prompt_at(client, uri, line, 4)
        if want in [c["path"] for c in p["context"]] or time.monotonic() > deadline:
            return p
        await asyncio.sleep(0.1)


async def test_a_document_inside_the_workspace_gets_its_context(
    client: LanguageClient, folders: dict[str, Path]
) -> None:
    uri = open_doc(client, folders["ws"], INSIDE, name="inside.py")
    p = await _context_paths(client, uri, 2, "helpers.py")
    assert "helpers.py" in [c["path"] for c in p["context"]]
    assert str(folders["ws"]) not in p["prompt"]


async def test_a_document_outside_every_workspace_folder_gets_its_repositorys_context(
    client: LanguageClient, folders: dict[str, Path]
) -> None:
    await _check_outside(client, folders, "client")


async def test_with_no_workspace_folder_at_all_a_document_gets_its_repositorys_context(
    bare_client: LanguageClient, folders: dict[str, Path]
) -> None:
    await _check_outside(bare_client, folders, "bare")


async def _check_outside(lsp: LanguageClient, folders: dict[str, Path], which: str) -> None:
    name = f"audit_{which}.py"
    uri = open_doc(lsp, folders["other"] / "app", OUTSIDE, name=name)
    started = time.monotonic()
    p = await _context_paths(lsp, uri, 2, "lib/quux.py")
    assert "lib/quux.py" in [c["path"] for c in p["context"]], p["context"]
    assert time.monotonic() - started < 20
    assert "quuxify_ledger(ledger_rows, quux_rate):" in p["prompt"]
    root = str(folders["other"].parent.parent)
    assert root not in p["prompt"] and all(not c["path"].startswith("/") for c in p["context"])
    # The index took the repository in and the server still answers at once.
    assert (await stats(lsp))["index"]["folders"] >= 1
    result = await lsp.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(2, 4),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    assert isinstance(result, types.InlineCompletionList) and result.items
    status = await request_status(lsp)
    assert status["state"] == "ready"
    # Closing the last document in that repository drops its index (it was kept for the life of the server).
    folders_open = (await stats(lsp))["index"]["folders"]
    lsp.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    deadline = time.monotonic() + 10
    while (await stats(lsp))["index"]["folders"] >= folders_open and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await stats(lsp))["index"]["folders"] == folders_open - 1


async def request_status(client: LanguageClient) -> dict[str, Any]:
    return await request(client, "fimtune/status")


def _folders_changed(client: LanguageClient, added: list[Path], removed: list[Path]) -> None:
    client.workspace_did_change_workspace_folders(
        types.DidChangeWorkspaceFoldersParams(
            types.WorkspaceFoldersChangeEvent(
                added=[types.WorkspaceFolder(p.as_uri(), p.name) for p in added],
                removed=[types.WorkspaceFolder(p.as_uri(), p.name) for p in removed],
            )
        )
    )


async def test_workspace_folders_added_and_removed_keep_the_root_a_client_named(
    root_only_client: LanguageClient, folders: dict[str, Path]
) -> None:
    lsp = root_only_client
    uri = open_doc(lsp, folders["ws"], INSIDE, name="kept.py")
    before = await _context_paths(lsp, uri, 2, "helpers.py")
    assert before["repo"] == "workspace" and "helpers.py" in [c["path"] for c in before["context"]]
    _folders_changed(lsp, [folders["other"]], [])
    other_uri = open_doc(lsp, folders["other"] / "app", OUTSIDE, name="added.py")
    p = await _context_paths(lsp, other_uri, 2, "lib/quux.py")
    assert p["repo"] == "ledger" and "lib/quux.py" in [c["path"] for c in p["context"]]
    after = await prompt_at(lsp, uri, 2, 4)
    assert after["repo"] == "workspace" and "helpers.py" in [c["path"] for c in after["context"]]
    assert (await stats(lsp))["index"]["folders"] == 2  # ws and the added folder
    _folders_changed(lsp, [], [folders["other"]])
    # The document still open there is a loose file now: its repository is indexed for it, as for one opened
    # outside every folder, until it closes.
    p = await _context_paths(lsp, other_uri, 2, "lib/quux.py")
    assert p["repo"] == "ledger" and "lib/quux.py" in [c["path"] for c in p["context"]]
    assert (await stats(lsp))["index"]["folders"] == 2
    lsp.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(other_uri)))
    deadline = time.monotonic() + 10
    while (await stats(lsp))["index"]["folders"] > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await stats(lsp))["index"]["folders"] == 1
    assert (await prompt_at(lsp, uri, 2, 4))["repo"] == "workspace"
