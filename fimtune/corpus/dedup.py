"""Exact and near-duplicate detection across every repository of a build (MinHash signatures + LSH)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from fimtune.config import DedupConfig

_TOKEN = re.compile(r"\w+|[^\w\s]")
# Fixed seed: signatures must be comparable across processes and builds.
_MINHASH_SEED = 1
_SCHEME = "affine32"  # datasketch 2 needs the scheme named to rebuild a MinHash from its values


def minhash_signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash hash values of the file's token shingles (computed in worker processes)."""
    tokens = _TOKEN.findall(text)
    k = max(1, cfg.shingle_tokens)
    if len(tokens) <= k:
        shingles = {" ".join(tokens).encode("utf-8")}
    else:
        shingles = {" ".join(tokens[i : i + k]).encode("utf-8") for i in range(len(tokens) - k + 1)}
    m = MinHash(num_perm=cfg.num_perm, seed=_MINHASH_SEED, scheme=_SCHEME)
    m.update_batch(sorted(shingles))
    return np.asarray(m.hashvalues, dtype=np.uint64)


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
