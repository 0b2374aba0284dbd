"""The local engine's decoding loop: greedy (or sampled) generation with prompt lookup drafts, over a key/value
cache that outlives the call, so that the next prompt pays only for the tokens after the part it shares.

transformers' `generate` reuses a filled cache in plain greedy decoding, but its assisted decoding (which prompt
lookup is) sends the whole prompt through the model again on top of it (transformers 5.25: the cache grows to
prompt + cached tokens, and the text changes). Completion needs both, so the loop lives here; it is the textbook
one: draft from the sequence's own n-grams, check the draft in one forward pass, keep the agreeing part, crop
the cache back to what was kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# A prompt computed on top of cached keys and values takes the attention path with an explicit mask, which costs
# more per token than a fresh causal pass (nano in bf16 on a 2-core x86-64 CPU: 1,000 tokens fresh 66 ms; the same
# on top of 5, 200 or 400 cached ones 79, 81, 69 ms): an entry is used only where it holds at least this share of
# the prompt.
MIN_REUSE_SHARE = 0.5

# Drafts come from the longest of the sequence's last 1..MAX_NGRAM tokens found earlier in it (as transformers'
# prompt lookup: its first occurrence).
MAX_NGRAM = 2


def lookup_draft(seq: np.ndarray, n_tokens: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to `n_tokens` tokens that followed an earlier occurrence of the sequence's last n-gram."""
    length = len(seq)
    if n_tokens <= 0:
        return []
    for n in range(min(max_ngram, length - 1), 0, -1):
        tail = seq[length - n :]
        windows = np.lib.stride_tricks.sliding_window_view(seq[: length - 1], n)  # starts before the tail itself
        hits = np.flatnonzero((windows == tail).all(axis=1))
        for start in hits:
            begin = int(start) + n
            end = min(begin + n_tokens, length)
            if begin < end:
                return seq[begin:end].tolist()
    return []


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


@dataclass
class CacheEntry:
    """A key/value cache and the tokens it holds the keys and values of (in order)."""

    key: str  # which weights computed it (the adapter on or off)
    tokens: list[int]
    cache: Any  # transformers.DynamicCache


@dataclass
class PromptCache:
    """The last few sequences' caches, most recent first. A new prompt takes the entry sharing the longest start
    with it (crops it to that and computes only the rest); the entry comes back after the call holding the new
    prompt and what was generated. Not thread-safe: the engine holds its lock around a call."""

    size: int
    entries: list[CacheEntry] = field(default_factory=list)
    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0

    def take(self, key: str, ids: Sequence[int]) -> tuple[CacheEntry | None, int]:
        """The best entry for a prompt (removed from the cache) and how many of its tokens can be kept: never the
        whole prompt, since its last token's forward pass gives the first new token. None where no entry holds
        MIN_REUSE_SHARE of the prompt (the entries stay)."""
        self.calls += 1
        self.prompt_tokens += len(ids)
        best, best_n = None, 0
        for entry in self.entries:
            if entry.key == key:
                n = common_prefix(entry.tokens, ids)
                if best is None or n > best_n:
                    best, best_n = entry, n
        keep = min(best_n, len(ids) - 1)
        if best is None or keep < MIN_REUSE_SHARE * len(ids):
            return None, 0
        self.entries.remove(best)
        self.reused_tokens += keep
        return best, keep

    def put(self, entry: CacheEntry) -> None:
        if self.size <= 0:
            return
        self.entries.insert(0, entry)
        del self.entries[self.size :]

    def clear(self) -> None:
        self.entries.clear()

    def stats(self) -> dict[str, float]:
        return {
            "entries": len(self.entries),
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "reused_share": round(self.reused_tokens / self.prompt_tokens, 4) if self.prompt_tokens else 0.0,
        }


@dataclass
class Decoded:
    tokens: list[int]  # generated, the end token included when one ended it
    ended: bool  # an end token ended it
    forward_passes: int


def _crop(cache: Any, keep: int) -> None:
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)


def cache_argument(model: Any) -> str:
    """The forward pass's keyword for the cache: `cache` from transformers 5.2x on, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def croppable(cache: Any) -> bool:
    """Every layer keeps all its keys and values (no sliding window, no recurrent state): cropping is exact."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", ()))


def decode(
    model: Any,
    ids: Sequence[int],
    cache: Any,
    kept: int,
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    lookup: int = 0,
    temperature: float = 0.0,
    halt: Callable[[list[int]], bool] | None = None,
    device: str | torch.device = "cpu",
    cache_arg: str = "cache",
) -> Decoded:
    """Generate after `ids`. `cache` holds the keys and values of `ids[:kept]` (and maybe more, cropped here);
    on return it holds those of the prompt and of every generated token but the last.

    Greedy with `temperature` 0, where `lookup` > 0 drafts up to that many tokens per pass from the sequence's own
    n-grams (prompt lookup decoding: the same text as without, in fewer passes); sampled otherwise (no drafts).
    `halt(generated)` is asked after every pass. `cache_arg`: the forward pass's name for the cache (see
    `cache_argument`).
    """
    _crop(cache, kept)
    ends = set(end_ids)
    seq = np.asarray(ids, dtype=np.int64)
    out: list[int] = []
    passes = 0
    x = list(ids[kept:])
    draft: list[int] = []
    while True:
        inputs = torch.tensor([x], dtype=torch.long, device=device)
        step = {"input_ids": inputs, cache_arg: cache, "use_cache": True, "logits_to_keep": len(draft) + 1}
        logits = model(**step).logits[0, -(len(draft) + 1) :]  # a model may return more rows than asked
        passes += 1
        if passes == 1 and lookup and not croppable(cache):
            lookup = 0  # rejected drafts could not be taken back out of a sliding-window or recurrent layer
        if temperature > 0:
            probs = torch.softmax(logits[-1].float() / temperature, dim=-1)
            new = [int(torch.multinomial(probs, 1))]
        else:
            best = logits.argmax(dim=-1).tolist()
            agreed = 0
            while agreed < len(draft) and best[agreed] == draft[agreed]:
                agreed += 1
            new = [*draft[:agreed], best[agreed]]
            _crop(cache, len(seq) + len(out) + agreed)  # the rejected drafts' keys and values go
        stop = False
        for i, token in enumerate(new):
            if token in ends or len(out) + i + 1 >= max_new_tokens:
                new, stop = new[: i + 1], True
                break
        out += new
        ended = out[-1] in ends
        if stop or ended:
            _crop(cache, len(seq) + len(out) - 1)  # drafts accepted beyond the end token go too
            return Decoded(out, ended, passes)
        if halt is not None and halt(out):
            return Decoded(out, False, passes)
        room = max_new_tokens - len(out) - 1  # the pass also yields one token beyond the draft
        draft = lookup_draft(np.concatenate([seq, out]), min(lookup, room)) if lookup and temperature <= 0 else []
        x = [out[-1], *draft]
