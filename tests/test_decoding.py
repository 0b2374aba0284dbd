"""The local engine's decoding loop: prompt lookup drafts, the prompt cache's choice of entry, and a kept cache
giving the same completions as a fresh one while computing only the new part of each prompt."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fimtune.engines.base import EngineSettings  # noqa: E402
from fimtune.engines.decoding import CacheEntry, PromptCache, common_prefix, lookup_draft  # noqa: E402
from fimtune.engines.local import LocalEngine  # noqa: E402
from fimtune.fim_format import FimRequest  # noqa: E402

torch.set_num_threads(1)


def test_lookup_draft_copies_what_followed_the_last_ngram_earlier() -> None:
    seq = np.array([5, 6, 7, 8, 9, 1, 5, 6])
    assert lookup_draft(seq, 3) == [7, 8, 9]  # bigram (5, 6) seen at the start
    assert lookup_draft(seq, 10) == [7, 8, 9, 1, 5, 6]  # never past the sequence's end
    assert lookup_draft(np.array([1, 2, 3, 9, 4, 3]), 2) == [9, 4]  # no bigram match: the unigram 3
    assert lookup_draft(np.array([1, 2, 3, 4]), 5) == []  # nothing repeats
    assert lookup_draft(seq, 0) == [] and lookup_draft(np.array([3]), 4) == []


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([9], [1]) == 0


def test_prompt_cache_takes_the_longest_shared_start_of_the_same_weights_and_keeps_a_few() -> None:
    cache = PromptCache(size=2)
    cache.put(CacheEntry("base", [1, 2, 3, 4], "a"))
    cache.put(CacheEntry("base", [1, 2, 9], "b"))
    cache.put(CacheEntry("adapter", [1, 2, 3, 4, 5], "c"))  # the oldest ("a") leaves
    assert [e.cache for e in cache.entries] == ["c", "b"]
    entry, kept = cache.take("base", [1, 2, 9, 9])
    assert entry is not None and entry.cache == "b" and kept == 3 and [e.cache for e in cache.entries] == ["c"]
    entry, kept = cache.take("adapter", [1, 2, 3, 4, 5])
    assert entry is not None and kept == 4  # never the whole prompt: its last token's pass gives the first token
    assert cache.take("base", [1]) == (None, 0)
    cache.put(CacheEntry("base", [1, 2, 3, 4], "d"))
    # Sharing less than half the prompt: a fresh pass is cheaper than one on top of the cached part.
    assert cache.take("base", [1, 2, 5, 6, 7]) == (None, 0) and len(cache.entries) == 1
    assert cache.stats()["reused_tokens"] == 7 and cache.stats()["prompt_tokens"] == 15
    off = PromptCache(size=0)
    off.put(CacheEntry("base", [1], "x"))
    assert off.entries == []


def keystrokes(line: str) -> list[FimRequest]:
    """A person typing `line` at the end of a function, one character per request."""
    head = "import os\n\n\ndef load(path, mode):\n    with open(path, mode) as f:\n        data = f.read()\n    "
    tail = "\n    return data\n\n\ndef save(path, data):\n    pass\n"
    return [FimRequest("r", "m.py", "python", head + line[:i], tail) for i in range(1, len(line) + 1)]


@pytest.mark.parametrize(("template", "lookup", "reused"), [("fimtune", 0, 0.5), ("fimtune-spm", 6, 0.85)])
def test_a_kept_cache_gives_the_same_completions_and_computes_only_what_changed(
    fimtune_cache: Path, template: str, lookup: int, reused: float
) -> None:
    """Prefix first (PSM), a keystroke changes the prompt where the prefix ends and the suffix after it is
    computed again; suffix first (SPM, nano's layout), only the prompt's last tokens are new."""
    requests = keystrokes("data = data.strip(")
    runs: dict[int, tuple[list[str], int, dict[str, Any]]] = {}
    for size in (0, 4):
        engine = LocalEngine(
            EngineSettings(base_model="tiny", device="cpu", dtype="fp32", prompt_lookup=lookup, prompt_cache=size)
        )
        fed: list[int] = []
        engine.model.model.register_forward_pre_hook(
            lambda _m, args, kwargs, seen=fed: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        )
        spec = engine.prompt_spec(template)
        texts = []
        for i, fim in enumerate(requests):  # calls that end at the token limit, a stop string or the end token
            req = spec.request(fim, max_tokens=3 if i % 3 == 0 else 12)
            if i % 2:
                req = dataclasses.replace(req, stop=(*req.stop, "a"))
            texts.append(engine.complete(req).text)
        runs[size] = (texts, sum(fed), engine.cache_stats())
    (plain, plain_fed, plain_stats), (cached, cached_fed, stats) = runs[0], runs[4]
    assert cached == plain and any(plain)
    assert plain_stats["reused_tokens"] == 0
    assert stats["reused_share"] > reused
    assert cached_fed < plain_fed * (1.05 - reused)


def test_sliding_window_caches_decode_without_drafts_and_are_not_kept() -> None:
    """A layer that keeps only its last keys cannot take rejected drafts back: such a model decodes one token per
    pass (the same text), and its cache is not offered to the next prompt."""
    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    from fimtune.engines.decoding import croppable, decode

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
    )
    model = Qwen2ForCausalLM(config).eval()
    ids = [int(x) for x in torch.randint(0, 64, (40,))] * 2  # repeats: prompt lookup would find drafts
    texts = []
    for lookup in (0, 6):
        cache = DynamicCache(config=config)
        with torch.inference_mode():
            done = decode(model, ids, cache, 0, max_new_tokens=16, end_ids=[], lookup=lookup)
        assert not croppable(cache) and done.forward_passes == 16
        texts.append(done.tokens)
    assert texts[0] == texts[1]
