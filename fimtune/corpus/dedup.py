"""Exact and near-duplicate detection across every repository of a build (MinHash signatures + LSH)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from fimtune.config import DedupConfig

# Fixed seed: signatures must be comparable across processes and builds.
_MINHASH_SEED = 1
# The signature is a one-permutation MinHash (Li, Owen & Zhang 2012) with optimal densification (Shrivastava
# 2017): each shingle is hashed once to 64 bits, its top bits pick one of num_perm bins, and each bin keeps the
# smallest hash that fell in it (low 32 bits stored); an empty bin copies the first non-empty bin along a fixed
# pseudo-random probe sequence of its own. Two files agree on a bin with probability their shingle sets'
# Jaccard similarity, as with num_perm independent permutations, for the cost of one hash per shingle.
# The values are 32-bit, so datasketch's LeanMinHash (a MinHash made from its values, no permutations) holds
# them under its "affine32" label: only compared with each other, never rehashed.
_SCHEME = "affine32"
_LOW32 = np.uint64(0xFFFFFFFF)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_MULTIPLIER = np.uint64(1_000_003)
_LENGTH_FACTOR = np.uint64(0x9E3779B97F4A7C15)
# Token bytes: ASCII letters, digits and "_", and every byte of a non-ASCII character (as \w, roughly).
_WORD = np.zeros(256, dtype=bool)
_WORD[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_", dtype=np.uint8)] = True
_WORD[0x80:] = True
# _KEEP[r]: the low r bytes of a little-endian 64-bit word.
_KEEP = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=np.uint64)
_CHUNK_FACTORS = 32  # a token's 8-byte chunk c is multiplied by factor c mod 32


@cache
def _tables(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded random tables, made once per process: odd factors per token chunk, each bin's probe order."""
    gen = np.random.default_rng(_MINHASH_SEED)
    factors = gen.integers(0, 2**64, size=_CHUNK_FACTORS, dtype=np.uint64, endpoint=False) | np.uint64(1)
    probes = np.argsort(gen.random((num_perm, num_perm)), axis=1)
    return factors, probes


def token_hashes(data: bytes) -> np.ndarray:
    """64-bit hashes of the file's word tokens (runs of letters, digits, "_" and non-ASCII bytes), in order.

    A token's hash is the sum of its 8-byte little-endian chunks times seeded odd factors, plus its length
    times a constant: computed for the whole file at once with numpy, one step per 8 bytes of token.
    """
    factors, _ = _tables(1)
    raw = np.frombuffer(data, dtype=np.uint8)
    is_word = _WORD[raw]
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1  # token starts and ends, alternating
    if len(raw) and is_word[0]:
        edges = np.concatenate(([0], edges))
    if len(raw) and is_word[-1]:
        edges = np.append(edges, len(raw))
    if not len(edges):
        return np.zeros(0, dtype=np.uint64)
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    n_chunks = (lengths + 7) >> 3
    first = np.zeros(len(n_chunks), dtype=np.intp)  # each token's first chunk
    np.cumsum(n_chunks[:-1], out=first[1:])
    chunk = np.arange(int(first[-1] + n_chunks[-1]), dtype=np.intp) - np.repeat(first, n_chunks)
    at = np.repeat(starts, n_chunks) + (chunk << 3)
    size = np.minimum(np.repeat(ends, n_chunks) - at, 8)
    padded = data + bytes(8)  # 8-byte loads at every offset, the last one included
    words = np.ndarray(shape=(len(data),), dtype="<u8", buffer=padded, strides=(1,))
    cells = (words[at] & _KEEP[size]) * factors[chunk & (_CHUNK_FACTORS - 1)]
    return np.add.reduceat(cells, first) + lengths.astype(np.uint64) * _LENGTH_FACTOR  # uint64 wraps by design


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: every output bit depends on every input bit (bins and values independent)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def shingle_hashes(text: str | bytes, k: int) -> np.ndarray:
    """64-bit hashes of the file's k-token shingles, in order (a single 0 when the file has no token)."""
    ids = token_hashes(text.encode("utf-8") if isinstance(text, str) else text)
    if not len(ids):
        return np.zeros(1, dtype=np.uint64)
    k = max(1, min(k, len(ids)))
    n = len(ids) - k + 1
    acc = ids[:n].copy()
    for j in range(1, k):  # a polynomial hash of the k token hashes; uint64 arithmetic wraps by design
        acc *= _MULTIPLIER
        acc += ids[j : j + n]
    return _mix(acc)


def minhash_signature(text: str | bytes, cfg: DedupConfig) -> np.ndarray:
    """One-permutation MinHash of the file's token shingles, densified: num_perm 32-bit values (as uint64)."""
    k = cfg.num_perm
    _, probes = _tables(k)
    hv = shingle_hashes(text, cfg.shingle_tokens)
    bins = (((hv >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.intp)  # top bits -> [0, k)
    sig = np.full(k, _ALL_ONES, dtype=np.uint64)
    np.minimum.at(sig, bins, hv)
    filled = sig != _ALL_ONES
    if not filled.all():  # each empty bin takes the first filled bin of its probe sequence
        source = probes[np.arange(k), np.argmax(filled[probes], axis=1)]
        sig = np.where(filled, sig, sig[source])
    return sig & _LOW32


@cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """The LSH bands and rows per band that datasketch's MinHashLSH(threshold, num_perm) would choose: those
    minimising the area of false positives below the threshold plus that of false negatives above it.

    datasketch integrates each of the ~num_perm * ln(num_perm) candidates with scipy's adaptive quadrature, a
    third of the dedup stage; here all at once with Gauss-Legendre quadrature, exact for these integrands (a
    polynomial of degree bands * rows <= num_perm needs num_perm // 2 + 1 nodes).
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float)
    bands, rows = pairs[:, :1], pairs[:, 1:]

    def integral(lo: float, hi: float, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.asarray(f((hi - lo) / 2 * nodes + (hi + lo) / 2) @ weights * (hi - lo) / 2)

    false_positives = integral(0.0, threshold, lambda s: 1 - (1 - s**rows) ** bands)
    false_negatives = integral(threshold, 1.0, lambda s: (1 - s**rows) ** bands)
    best = int(np.argmin(false_positives + false_negatives))  # the first of equals, as datasketch's loop
    return int(pairs[best, 0]), int(pairs[best, 1])


@dataclass(frozen=True, slots=True)
class DedupItem:
    """What dedup needs of a file: a key (repo, path), its content hash and its MinHash signature."""

    key: tuple[str, str]
    sha: str
    signature: np.ndarray | None


class Deduplicator:
    """Dedup one item at a time, given in sorted key order (a build streams its files through it).

    The representative of a group is its first item, so with items in sorted key order it is the group's
    smallest (repo, path) whatever the order the files were read in. A near match from LSH is confirmed
    with the estimated Jaccard similarity before it counts.
    """

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        # Near-duplicate groups kept whole (near_action == "keep"): member -> representative.
        self.groups: dict[tuple[str, str], tuple[str, str]] = {}
        self._seen_sha: dict[str, tuple[str, str]] = {}
        self._lsh = (
            MinHashLSH(num_perm=cfg.num_perm, params=lsh_params(cfg.threshold, cfg.num_perm)) if cfg.near else None
        )
        self._signatures: dict[str, np.ndarray] = {}
        self._names: dict[str, tuple[str, str]] = {}
        self._last: tuple[str, str] | None = None

    def add(self, item: DedupItem) -> tuple[str, tuple[str, str]] | None:
        """None when the item is kept (its own representative, or a member of a group kept whole), else
        (reason, representative key)."""
        if self._last is not None and item.key <= self._last:
            raise ValueError(f"dedup items must come in increasing key order: {item.key} after {self._last}")
        self._last = item.key
        cfg = self.cfg
        if cfg.exact and item.sha in self._seen_sha:
            return "duplicate_exact", self._seen_sha[item.sha]
        self._seen_sha.setdefault(item.sha, item.key)
        if self._lsh is None or item.signature is None:
            return None
        sig = item.signature
        mh = LeanMinHash(seed=_MINHASH_SEED, hashvalues=sig, scheme=_SCHEME)
        candidates = sorted(
            self._names[c] for c in self._lsh.query(mh) if _jaccard(self._signatures[c], sig) >= cfg.threshold
        )
        name = f"{len(self._names)}"
        if candidates:
            rep = candidates[0]
            rep = self.groups.get(rep, rep)
            if cfg.near_action == "drop":
                return "duplicate_near", rep
            self.groups[item.key] = rep
        self._lsh.insert(name, mh, check_duplication=False)
        self._signatures[name] = sig
        self._names[name] = item.key
        return None


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity two signatures estimate: the share of bins where they agree."""
    return float(np.count_nonzero(a == b)) / len(a)
