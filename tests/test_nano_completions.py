"""The built-in `nano` model in the editor: `fimtune serve` over stdio with no model named loads nano (the best
built-in model shipped), renders prompts with nano's own tokenizer inside its 1024-token budget, and answers
every inline completion request promptly.

Every case is answered promptly; the ones the shipped nano completes as a person would (4 of 7) are pinned to
that text, through the server's whole path (context, the suffix-first prompt with the prefix's blanks moved into
the middle, the engine, the stop rules). Measured in benchmarks/results/nano.md."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from fimtune.models import packaged_model_dir

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not (packaged_model_dir("nano") / "config.json").exists(), reason="the built-in nano model is not shipped"
    ),
]

# (text with the cursor at |, what a person would accept, whether the shipped nano gives exactly that: pinned)
CASES: dict[str, tuple[str, str, bool]] = {
    "attribute from the parameter": (
        "class User:\n    def __init__(self, name):\n        self.name = |\n",
        "name",
        True,
    ),
    "second attribute": (
        "class User:\n    def __init__(self, name, age):\n        self.name = name\n        self.age = |\n",
        "age",
        True,
    ),
    "closing bracket": (
        "def main():\n    values = [1, 2, 3|\n    print(values)\n",
        "]",
        False,
    ),
    "closing parenthesis": (
        'def main():\n    print("hello world"|\n',
        ")",
        False,
    ),
    "return the accumulator": (
        "def total(items):\n    result = 0\n    for item in items:\n        result += item\n    return |\n",
        "result",
        True,
    ),
    "the other operand": (
        "def add(a, b):\n    return a + |\n",
        "b",
        True,
    ),
    "main guard": (
        'def main():\n    pass\n\n\nif __name__ == "__main__":\n    |\n',
        "main()",
        False,
    ),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nano-ws")


@pytest_lsp.fixture(
    config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server"]),  # no model named: the default
    scope="module",
)
async def client(lsp_client: LanguageClient, workspace: Path) -> Any:
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("neovim"),
            root_uri=workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")],
            initialization_options={"engine": "local", "debounceMs": 0, "timeoutMs": 30000, "device": "cpu"},
        )
    )
    deadline = time.monotonic() + 120
    while True:
        status = await lsp_client.protocol.send_request_async("fimtune/status", None)
        if status.state == "ready":
            break
        assert status.state != "error" and time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    yield
    await lsp_client.shutdown_session()


@pytest.mark.parametrize("case", list(CASES))
async def test_nano_answers_every_case_promptly(client: LanguageClient, workspace: Path, case: str) -> None:
    marked, expected, pinned = CASES[case]
    cursor = marked.index("|")
    text = marked.replace("|", "")
    line = marked[:cursor].count("\n")
    character = cursor - (marked.rfind("\n", 0, cursor) + 1)
    uri = (workspace / f"{case.replace(' ', '_')}.py").as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri, "python", 1, text))
    )
    status = await client.protocol.send_request_async("fimtune/status", None)
    assert status.state == "ready" and status.model == "nano", status
    prompt = await client.protocol.send_request_async(
        "fimtune/prompt", {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    )
    assert prompt.template == "fimtune-spm" and prompt.exactCounts and prompt.promptTokens <= 1024, prompt
    started = time.monotonic()
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    assert isinstance(result, types.InlineCompletionList), result
    assert time.monotonic() - started < 10.0
    if pinned:
        assert [item.insert_text for item in result.items] == [expected], result.items


async def test_keystrokes_at_one_place_compute_only_the_end_of_the_prompt(
    client: LanguageClient, workspace: Path
) -> None:
    """Typing on one line changes only the end of nano's suffix-first prompt: the engine's prompt cache supplies the
    keys and values of the rest (`fimtune/stats`, prompt_cache)."""
    head = "def scale(values, factor):\n    out = []\n    for v in values:\n        out.append(v * factor)\n    return "
    text = head + "\n\n\ndef main():\n    print(scale([1, 2], 3))\n"
    uri = (workspace / "typing.py").as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri, "python", 1, text))
    )
    line, character = head.count("\n"), len(head) - head.rfind("\n") - 1

    async def ask() -> None:
        result = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(line, character),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            )
        )
        assert result is None or isinstance(result, types.InlineCompletionList), result

    await ask()
    before = (await client.protocol.send_request_async("fimtune/stats", None)).prompt_cache
    for version, ch in enumerate("zq_7w", start=2):  # text unlike a suggestion: the server asks the model again
        at = types.Position(line, character)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(at, at), text=ch)],
            )
        )
        character += 1
        await ask()
    after = (await client.protocol.send_request_async("fimtune/stats", None)).prompt_cache
    assert after.calls - before.calls >= 3
    reused = (after.reused_tokens - before.reused_tokens) / (after.prompt_tokens - before.prompt_tokens)
    assert reused > 0.8, (before, after)
