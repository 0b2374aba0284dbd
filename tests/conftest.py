"""Shared session fixtures: a private model cache, a small corpus from the fixture repos, a tiny trained adapter."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURE_REPOS = Path(__file__).resolve().parent / "fixtures" / "repos"
# The user's cache as it was before `fimtune_cache` pointed FIMTUNE_CACHE at a temporary folder: llama.cpp's
# sources and the llama-server build (minutes) are kept there between test runs (see `user_cache`).
_USER_CACHE = os.environ.get("FIMTUNE_CACHE")


# Tests that build llama-server from the llama-cpp-python sdist.
needs_llama_build = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None,
    reason="building llama-server needs cmake and a C++ compiler",
)


@contextlib.contextmanager
def user_cache() -> Iterator[None]:
    """FIMTUNE_CACHE as the user has it, for what is built once per machine rather than once per session."""
    old = os.environ.get("FIMTUNE_CACHE")
    if _USER_CACHE is None:
        os.environ.pop("FIMTUNE_CACHE", None)
    else:
        os.environ["FIMTUNE_CACHE"] = _USER_CACHE
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FIMTUNE_CACHE", None)
        else:
            os.environ["FIMTUNE_CACHE"] = old


@pytest.fixture(scope="session")
def fimtune_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FIMTUNE_CACHE for the session: the `tiny` preset is built once, never in the user's home."""
    folder = tmp_path_factory.mktemp("fimtune-cache-session")
    old = os.environ.get("FIMTUNE_CACHE")
    os.environ["FIMTUNE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("FIMTUNE_CACHE", None)
    else:
        os.environ["FIMTUNE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of all four fixture repositories, split by file, so the test split mixes languages."""
    from fimtune.config import CorpusConfig, SpanConfig
    from fimtune.corpus.pipeline import build_corpus

    out = tmp_path_factory.mktemp("tiny-corpus") / "corpus"
    cfg = CorpusConfig(
        repos=[str(FIXTURE_REPOS / name) for name in ("pyshop", "gotool", "rsutil", "webkit")],
        out=str(out),
        workers=1,
        split="file",
        test_fraction=0.3,
        spans=SpanConfig(examples_per_kb=4.0),
    )
    manifest = build_corpus(cfg, progress=False)
    assert manifest["counts"]["examples"]["test"] >= 8, manifest["counts"]
    return out


@pytest.fixture(scope="session")
def tiny_run(fimtune_cache: Path, tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `fimtune train` run folder: 3 steps of LoRA on `tiny` with a large learning rate, so the adapter
    visibly moves the model's outputs."""
    return short_run("tiny", tiny_corpus, tmp_path_factory.mktemp("tiny-run") / "run")


def short_run(base_model: str, corpus: Path, out: Path) -> Path:
    """3 steps of LoRA on `base_model` with a large learning rate, so the adapter visibly moves its outputs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from fimtune.train.config import TrainConfig
    from fimtune.train.sft import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one intra-op thread is much faster than two fighting
    try:
        train(
            TrainConfig(
                corpus=str(corpus),
                base_model=base_model,
                out=str(out),
                seq_len=256,
                batch_tokens=512,
                max_middle_tokens=64,
                max_steps=3,
                lr=5e-2,
                warmup_ratio=0.0,
                lr_scheduler="constant",
                logging_steps=1,
                eval_examples=2,
                eval_steps=3,
                max_train_examples=16,
            )
        )
    finally:
        torch.set_num_threads(threads)
    return out
