"""Exact and near-duplicate detection across every repository of a build (MinHash signatures + LSH)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from datasketch import MinHash, MinHashLSH

from fimtune.config import DedupConfig

_TOKEN = re.compile(r"\w+")
# Fixed seed: signatures must be comparable across processes and builds.
_MINHASH_SEED = 1
# The signature is a MinHash over multiply-shift permutations, (a * h + b) >> 32 with 64-bit wrap-around,
# computed for all shingles of a file at once with numpy; datasketch's MinHashLSH then bands it.
_SCHEME = "affine32"
_MAX_HASH = np.uint64((1 << 32) - 1)
_MULTIPLIER = 1_000_003
_CHUNK = 4096  # shingles per block, bounding the (shingles x permutations) matrix


@cache
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded permutations (a, b), made once per process."""
    gen = np.random.default_rng(_MINHASH_SEED)
    a = gen.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = gen.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """32-bit hashes of the file's k-token shingles, unique and sorted (computed with numpy, not per shingle)."""
    tokens = _TOKEN.findall(text)
    if not tokens:
        return np.zeros(1, dtype=np.uint64)
    table = {t: zlib.crc32(t.encode("utf-8")) for t in set(tokens)}
    ids = np.fromiter((table[t] for t in tokens), dtype=np.uint64, count=len(tokens))
    k = max(1, min(k, len(ids)))
    n = len(ids) - k + 1
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # a polynomial hash of the k token hashes; uint64 arithmetic wraps by design
        acc = acc * np.uint64(_MULTIPLIER) + ids[j : j + n]
    return np.unique((acc ^ (acc >> np.uint64(32))) & _MAX_HASH)


def minhash_signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash hash values of the file's token shingles (computed in worker processes)."""
    a, b = _permutations(cfg.num_perm)
    hv = shingle_hashes(text, cfg.shingle_tokens)
    sig = np.full(cfg.num_perm, _MAX_HASH, dtype=np.uint64)
    for i in range(0, len(hv), _CHUNK):
        block = hv[i : i + _CHUNK, None]
        sig = np.minimum(sig, ((block * a + b) >> np.uint64(32)).min(axis=0))
    return sig


@dataclass(frozen=True, slots=True)
class DedupItem:
    """What dedup needs of a file: a key (repo, path), its content hash and its MinHash signature."""

    key: tuple[str, str]
    sha: str
    signature: np.ndarray | None


@dataclass(frozen=True, slots=True)
class DedupResult:
    """For each key: None when it is its own representative, else (reason, representative key)."""

    duplicate_of: dict[tuple[str, str], tuple[str, tuple[str, str]]]
    # Near-duplicate groups that were kept whole (near_action == "keep"): member -> representative.
    groups: dict[tuple[str, str], tuple[str, str]]


def deduplicate(items: Sequence[DedupItem], cfg: DedupConfig) -> DedupResult:
    """Mark exact duplicates ("duplicate_exact") and near duplicates ("duplicate_near").

    Items are visited in sorted key order, so the representative of a group is always its smallest
    (repo, path) and the result does not depend on how the work was split across processes. A near
    match from LSH is confirmed with the estimated Jaccard similarity before it counts.
    """
    duplicate_of: dict[tuple[str, str], tuple[str, tuple[str, str]]] = {}
    groups: dict[tuple[str, str], tuple[str, str]] = {}
    seen_sha: dict[str, tuple[str, str]] = {}
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm) if cfg.near else None
    signatures: dict[str, MinHash] = {}
    names: dict[str, tuple[str, str]] = {}

    for item in sorted(items, key=lambda it: it.key):
        if cfg.exact and item.sha in seen_sha:
            duplicate_of[item.key] = ("duplicate_exact", seen_sha[item.sha])
            continue
        seen_sha.setdefault(item.sha, item.key)
        if lsh is None or item.signature is None:
            continue
        mh = MinHash(num_perm=cfg.num_perm, seed=_MINHASH_SEED, hashvalues=item.signature, scheme=_SCHEME)
        candidates = sorted(names[c] for c in lsh.query(mh) if signatures[c].jaccard(mh) >= cfg.threshold)
        name = f"{len(names)}"
        if candidates:
            rep = candidates[0]
            rep = groups.get(rep, rep)
            if cfg.near_action == "drop":
                duplicate_of[item.key] = ("duplicate_near", rep)
                continue
            groups[item.key] = rep
        lsh.insert(name, mh)
        signatures[name] = mh
        names[name] = item.key
    return DedupResult(duplicate_of=duplicate_of, groups=groups)
