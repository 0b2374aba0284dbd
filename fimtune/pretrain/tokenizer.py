"""The tokenizer of a pretrained model: byte-level BPE trained on the data, fimtune's sentinels as special tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from fimtune.fim_format import FimTemplate


def train_bpe(
    texts: Iterable[str], vocab_size: int, template: FimTemplate, min_frequency: int = 2
) -> tokenizers.Tokenizer:
    """Byte-level BPE (GPT-2 pre-tokenization: every byte sequence is encodable, no unknown token) trained on
    `texts`; the template's tokens come first (ids 0..k-1) as special tokens, so each encodes to one id and no
    merge can produce them from ordinary text. The vocabulary may end smaller than `vocab_size` on little data."""
    specials = list(template.tokens())
    if vocab_size < 256 + len(specials) + 1:
        raise ValueError(f"vocab_size: at least {256 + len(specials) + 1} (bytes and special tokens), not {vocab_size}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def capped(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """The texts, in order, until max_chars characters have been given (0: all)."""
    total = 0
    for t in texts:
        if max_chars and total >= max_chars:
            return
        total += len(t)
        yield t
