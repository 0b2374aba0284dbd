"""Training data: read a corpus, render each example through fim_format to ids + labels, measure real tokens."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fimtune.corpus.read import CorpusReadError, open_corpus
from fimtune.fim_format import IGNORE_INDEX, Budgets, FimTemplate, encode, render
from fimtune.records import FimExample
from fimtune.tokenizer import as_fim_tokenizer


class DataError(Exception):
    """The corpus cannot be used for training; the message names the folder and says what to do."""


@dataclass
class Corpus:
    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    train: list[FimExample]
    test: list[FimExample]


def load_corpus(folder: str | Path) -> Corpus:
    """Read a corpus written by `fimtune build-corpus`; refuse a missing, empty or other-version corpus."""
    try:
        info = open_corpus(folder)
        train, test = info.examples("train"), info.examples("test")
    except CorpusReadError as e:
        raise DataError(str(e)) from None
    if not train:
        raise DataError(f"corpus {info.folder} has no training examples; build it from repositories with source files")
    return Corpus(info.folder, info.manifest, info.manifest_sha256, train, test)


@dataclass
class RenderStats:
    """What rendering did to a split (reported in train_report.json)."""

    examples: int = 0
    kept: int = 0
    no_target: int = 0  # dropped: nothing left to learn (middle cut to nothing)
    middle_cut: int = 0  # middle longer than max_middle_tokens: cut, no end token learned
    prefix_cut: int = 0
    suffix_cut: int = 0
    context_dropped: int = 0
    tokens: int = 0
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "lengths"}
        d["mean_length"] = round(self.tokens / self.kept, 1) if self.kept else 0.0
        return d


def render_examples(
    examples: Sequence[FimExample], template: FimTemplate, tokenizer: object, budgets: Budgets
) -> tuple[dict[str, list[list[int]]], RenderStats]:
    """Each example as (input_ids, labels) through the shared prompt layer; labels are IGNORE_INDEX everywhere
    but the middle and the end token. Returns the columns and what rendering cut."""
    tok = as_fim_tokenizer(tokenizer)  # adapt once: wrapping copies the tokenizer
    cols: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    st = RenderStats(examples=len(examples))
    for ex in examples:
        rendered = render(template, ex, ex.middle, tok, budgets)
        ids, labels = encode(template, rendered, tok)
        n_target = sum(1 for x in labels if x != IGNORE_INDEX)
        tr = rendered.truncation
        st.middle_cut += tr.middle_chars > 0
        st.prefix_cut += tr.prefix_chars > 0
        st.suffix_cut += tr.suffix_chars > 0
        st.context_dropped += tr.context_dropped
        if n_target == 0:
            st.no_target += 1
            continue
        cols["input_ids"].append(ids)
        cols["labels"].append(labels)
        st.kept += 1
        st.tokens += len(ids)
        st.target_tokens += n_target
        st.lengths.append(len(ids))
    return cols, st


def sample(examples: Sequence[FimExample], n: int, seed: int) -> list[FimExample]:
    """At most n examples, chosen by a seeded shuffle (all of them, in order, when n is 0 or covers them)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in picked]


def split_validation(
    examples: Sequence[FimExample], n: int, seed: int, share: float = 0.1
) -> tuple[list[FimExample], list[FimExample]]:
    """(train, validation): whole files of the training split held out to choose the best checkpoint. Files are
    taken in a seeded shuffle, each only where it fits in min(n, share of the examples, at least one) examples
    (n 0: no cap but the share), until that many are held; at least one file stays for training. The test split is
    what `fimtune eval` reports on, so the checkpoint must not be chosen on it."""
    files: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(examples):
        files.setdefault((ex.repo, ex.path), []).append(i)
    cap = max(1, int(len(examples) * share))  # a small corpus still holds out a one-example file, if it has one
    if n > 0:
        cap = min(cap, n)
    keys = sorted(files)
    random.Random(seed).shuffle(keys)
    held: set[int] = set()
    for key in keys:
        if len(held) >= cap or len(held) + len(files[key]) >= len(examples):
            continue  # full, or it would leave nothing to train on
        if len(held) + len(files[key]) <= cap:
            held.update(files[key])
    return [ex for i, ex in enumerate(examples) if i not in held], [ex for i, ex in enumerate(examples) if i in held]


def to_dataset(cols: Mapping[str, Any]) -> Any:
    """Columns as a datasets.Dataset that SFTTrainer takes as already tokenized (it keeps our labels as they are)."""
    from datasets import Dataset

    return Dataset.from_dict(cols)


class TokenMeter:
    """Counts the batches the optimizer trains on (`count`, called with each micro-batch as the training step gets
    it): tokens processed, real (non-pad) tokens and target tokens. Counted at the step, not at collation: the
    data loader collates a batch ahead of the one trained on, and `--resume` collates the batches it skips."""

    def __init__(self) -> None:
        self.batches = 0
        self.processed = 0
        self.real = 0
        self.target = 0

    def count(self, batch: dict[str, Any]) -> None:
        ids = batch["input_ids"]
        self.batches += 1
        self.processed += int(ids.numel())
        mask = batch.get("attention_mask")
        # Padding-free batches carry no mask: one flat row of real tokens (no pad_to_multiple_of is set).
        self.real += int(mask.sum()) if mask is not None else int(ids.numel())
        self.target += int((batch["labels"] != IGNORE_INDEX).sum())

    @property
    def real_share(self) -> float:
        return self.real / self.processed if self.processed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "tokens_processed": self.processed,
            "real_tokens": self.real,
            "target_tokens": self.target,
            "real_token_share": round(self.real_share, 4),
        }
