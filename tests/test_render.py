"""`fimtune render`: what the model sees, as text or JSON lines, through the shared FIM format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fimtune.config import CorpusConfig
from fimtune.corpus.pipeline import build_corpus
from fimtune.corpus.read import open_corpus
from fimtune.fim_format import get_template, render
from fimtune.tokenizer import byte_tokenizer_for, save_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "repos"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fimtune", "render", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render") / "corpus"
    build_corpus(CorpusConfig(repos=[str(FIXTURES / "pyshop"), str(FIXTURES / "gotool")], out=str(out), workers=1))
    return out


def test_json_lines_match_the_shared_renderer(corpus: Path) -> None:
    proc = run("--corpus", str(corpus), "--template", "starcoder2", "-n", "50", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    examples = {ex.id: ex for ex in open_corpus(corpus).examples("train")}
    assert len(records) == len(examples)
    template = get_template("starcoder2")
    for rec in records:
        ex = examples[rec["example_id"]]
        expected = render(template, ex, ex.middle)
        assert rec["prompt"] == expected.prompt
        assert rec["target"] == ex.middle + "<|endoftext|>"
        assert rec["prompt"].startswith("<repo_name>") or rec["prompt"].startswith("<fim_prefix>")


def test_tokenizer_gives_exact_counts_and_auto_template(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    save_tokenizer(byte_tokenizer_for(get_template("qwen2.5-coder")), folder, get_template("qwen2.5-coder"))
    proc = run("--corpus", str(corpus), "--tokenizer", str(folder), "-n", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    for rec in map(json.loads, proc.stdout.splitlines()):
        assert rec["template"] == "qwen2.5-coder"
        assert rec["exact_counts"] is True
        # A byte tokenizer: every byte is a token, every sentinel is one.
        sentinels = sum(rec["prompt"].count(s) for s in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
        specials = sentinels + rec["prompt"].count("<|file_sep|>") + rec["prompt"].count("<|repo_name|>")
        text = rec["prompt"]
        for s in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "<|repo_name|>"):
            text = text.replace(s, "")
        assert rec["prompt_tokens"] == len(text.encode()) + specials


def test_human_output_marks_the_middle(corpus: Path) -> None:
    proc = run("--corpus", str(corpus), "--template", "fimtune", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("=== ")
    assert "⟦" in proc.stdout and "<|endoftext|>⟧" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--corpus", "/nonexistent/corpus", "--template", "fimtune"], "does not exist"),
        (["--template", "auto"], "needs --tokenizer"),
        (["--template", "gpt5"], "gpt5"),
    ],
)
def test_errors_are_one_line(corpus: Path, args: list[str], needle: str) -> None:
    if "--corpus" not in args:
        args = ["--corpus", str(corpus), *args]
    proc = run(*args)
    assert proc.returncode == 1
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
