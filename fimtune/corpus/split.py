"""Train/test assignment by a stable hash: by repository when several are given, else by file."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def resolve_mode(mode: str, n_repos: int) -> str:
    """ "auto" means by repository when there are several, else by file."""
    if mode == "auto":
        return "repo" if n_repos > 1 else "file"
    return mode


def pick_test_repos(repos: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The repositories that go to the test split: the round(n * fraction) with the smallest hashes.

    At least one when there are two or more repositories and the fraction is above zero, never all.
    """
    if test_fraction <= 0 or len(repos) < 2:
        return set()
    n = min(len(repos) - 1, max(1, round(len(repos) * test_fraction)))
    return set(sorted(set(repos), key=lambda r: (_unit(seed, r), r))[:n])


def file_split(repo: str, path: str, test_fraction: float, seed: int) -> str:
    """The side of one file when splitting by file."""
    return "test" if _unit(seed, f"{repo}\x00{path}") < test_fraction else "train"
