"""Dedup (exact and MinHash near duplicates) and the train/test split on literal inputs."""

from __future__ import annotations

import pytest

from fimtune.config import DedupConfig
from fimtune.corpus import dedup
from fimtune.corpus.dedup import DedupItem, Deduplicator, minhash_signature
from fimtune.corpus.split import file_split, pick_test_repos, resolve_mode
from fimtune.records import sha256_hex

BASE = "\n".join(f"def function_{i}(value, other):\n    return value * {i} + other - {i * 3}" for i in range(40))


class Marked:
    """Each file's verdict from one streamed pass, as the corpus build makes it (in sorted key order)."""

    def __init__(self, items: list[DedupItem], cfg: DedupConfig) -> None:
        dedupe = Deduplicator(cfg)
        self.duplicate_of: dict[tuple[str, str], tuple[str, tuple[str, str]]] = {}
        for item in sorted(items, key=lambda it: it.key):
            if (found := dedupe.add(item)) is not None:
                self.duplicate_of[item.key] = found
        self.groups = dedupe.groups


def _item(repo: str, path: str, text: str, cfg: DedupConfig) -> DedupItem:
    return DedupItem((repo, path), sha256_hex(text), minhash_signature(text, cfg))


def test_exact_duplicate_keeps_the_smallest_key() -> None:
    cfg = DedupConfig()
    items = [_item("b", "x.py", BASE, cfg), _item("a", "y.py", BASE, cfg), _item("a", "z.py", BASE + "\n# x\n", cfg)]
    result = Marked(items, cfg)
    assert result.duplicate_of[("b", "x.py")] == ("duplicate_exact", ("a", "y.py"))
    assert ("a", "y.py") not in result.duplicate_of


def test_near_duplicate_dropped_and_distinct_file_kept() -> None:
    cfg = DedupConfig(threshold=0.8)
    near = BASE.replace("function_7(", "function_seven(")
    other = "\n".join(f"class Thing{i}:\n    size = {i}\n    name = 'thing{i}'" for i in range(40))
    items = [_item("r", "a.py", BASE, cfg), _item("r", "b.py", near, cfg), _item("r", "c.py", other, cfg)]
    result = Marked(items, cfg)
    assert result.duplicate_of == {("r", "b.py"): ("duplicate_near", ("r", "a.py"))}


def test_near_duplicates_kept_as_a_group_when_asked() -> None:
    cfg = DedupConfig(threshold=0.8, near_action="keep")
    near = BASE.replace("function_7(", "function_seven(")
    result = Marked([_item("r", "b.py", near, cfg), _item("r", "a.py", BASE, cfg)], cfg)
    assert result.duplicate_of == {}
    assert result.groups == {("r", "b.py"): ("r", "a.py")}


def test_signature_is_deterministic() -> None:
    cfg = DedupConfig()
    assert (minhash_signature(BASE, cfg) == minhash_signature(BASE, cfg)).all()


def test_split_modes() -> None:
    assert resolve_mode("auto", 1) == "file"
    assert resolve_mode("auto", 3) == "repo"
    assert resolve_mode("file", 3) == "file"


def test_repo_split_picks_at_least_one_and_never_all() -> None:
    assert len(pick_test_repos(["a", "b"], 0.1, 0)) == 1
    assert pick_test_repos(["a"], 0.5, 0) == set()
    chosen = pick_test_repos([f"r{i}" for i in range(20)], 0.25, 7)
    assert len(chosen) == 5
    assert chosen == pick_test_repos([f"r{i}" for i in reversed(range(20))], 0.25, 7)


def test_file_split_is_stable_and_near_the_fraction() -> None:
    sides = [file_split("repo", f"src/f{i}.py", 0.2, 0) for i in range(2000)]
    assert sides == [file_split("repo", f"src/f{i}.py", 0.2, 0) for i in range(2000)]
    share = sides.count("test") / len(sides)
    assert 0.15 < share < 0.25
    assert sides != [file_split("repo", f"src/f{i}.py", 0.2, 1) for i in range(2000)]


def test_token_hashes_tell_long_tokens_apart_and_ignore_position() -> None:
    from fimtune.corpus.dedup import token_hashes

    a, b = "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING", "MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING"
    ha, hb = token_hashes(f"{a} {b}".encode()), token_hashes(f"x = {b}({a})".encode())
    assert len(ha) == 2 and len(hb) == 3
    assert ha[0] != ha[1]  # same length, same first and last 8 bytes
    assert (ha[0], ha[1]) == (hb[2], hb[1])  # a token hashes the same wherever it sits
    assert len(token_hashes(b"")) == 0 and len(token_hashes(b" ()\n")) == 0


def test_short_files_get_full_signatures_and_still_match() -> None:
    cfg = DedupConfig(threshold=0.8)
    short = "def add(a, b):\n    return a + b\n"  # fewer shingles than bins: most bins are filled by densification
    sig = minhash_signature(short, cfg)
    assert sig.shape == (cfg.num_perm,) and int(sig.max()) < 2**32
    assert (sig == minhash_signature(short.encode(), cfg)).all()
    other = "class Point:\n    x: int\n    y: int\n"
    result = Marked([_item("r", "a.py", short, cfg), _item("r", "b.py", other, cfg)], cfg)
    assert result.duplicate_of == {}
    head = "\n".join(BASE.splitlines()[:10])  # about 40 distinct shingles, fewer than the 128 bins
    near = head.replace("function_3(", "function_three(")
    result = Marked([_item("r", "a.py", head, cfg), _item("r", "b.py", near, cfg)], cfg)
    assert result.duplicate_of == {("r", "b.py"): ("duplicate_near", ("r", "a.py"))}


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_lsh_params_are_the_ones_datasketch_would_choose(num_perm: int) -> None:
    from datasketch.lsh import _optimal_param

    for threshold in (0.3, 0.5, 0.7, 0.85, 0.9, 0.95):
        assert dedup.lsh_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
