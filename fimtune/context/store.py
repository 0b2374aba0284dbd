"""The BM25 store of a repository's line windows, updated one file at a time.

Why an own inverted index and not `bm25s`: the server changes one file at a time, and an update must touch only
that file's entries. `bm25s` builds a static sparse matrix and would need a full rebuild (seconds on 100k
windows) per change. Here each token keeps its postings (window id, BM25 term weight) in growable `array`s that
numpy reads without copying; adding or removing a file edits only the postings of that file's tokens, and
document frequencies (hence idf) follow exactly. Term weights use a fixed length pivot (window_lines * 4 tokens)
instead of the live mean window length, so a posting's weight never depends on other files. A query
concatenates the postings of its tokens, rarest first, up to `max_postings` (the common tokens that are left out
weigh little in BM25), and sums them with one `bincount` over the windows they name, so a query costs what its
postings cost, not what the repository's size does. Every cut and tie is decided by content (document frequency,
token; equal scores by a hash of path and line, ranked in numpy: a repository of generated look-alike files ties
thousands of windows), never by insertion order, so an incrementally updated store and a full rebuild rank
identically.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from collections.abc import Iterable, Sequence

import numpy as np

from fimtune.context.files import FilePostings, Window, line_starts

_BM25_K1 = 1.2
_BM25_B = 0.75
# BM25 normalises a window's length by a fixed pivot (window_lines * this), not by the live mean length, so
# that each posting's weight is computed once, when its file is indexed, and never changes with other files.
_TOKENS_PER_LINE = 4.0


def tie_key(path_hash: int, line: int) -> int:
    """A window's place among equal scores: its path's hash mixed with its line, as a signed 64-bit value."""
    key = (path_hash ^ (line * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    return key - (1 << 64) if key >= 1 << 63 else key


_NO_LINES: tuple[str, array[int]] = ("", array("q", [0, 1]))

# Up to this many scores one partition is cheaper than bounding them first (each halving pass reads them all).
_PARTITION_DIRECT = 4096


def kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest of positive values (1 <= k <= len(values)).

    np.partition over every value is slow on BM25 scores: thousands of windows share the few scores that one
    common token gives, and introselect degrades on runs of equal values. The k-th largest is also the k-th
    largest of the values at or above any bound that keeps at least k of them, so the bound is halved from the
    maximum until it does, and only those are partitioned."""
    if len(values) <= _PARTITION_DIRECT:
        return float(np.partition(values, len(values) - k)[len(values) - k])
    bound = float(values.max())
    for _ in range(12):
        bound *= 0.5
        above = values[values >= bound]
        if len(above) >= k:
            return float(np.partition(above, len(above) - k)[len(above) - k])
    return float(np.partition(values, len(values) - k)[len(values) - k])


def path_hash(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest())


class WindowStore:
    """Windows by id (ids of removed windows are reused) and, per token, the postings of the windows holding it."""

    def __init__(self, window_lines: int, max_postings: int) -> None:
        self.max_postings = max_postings
        self._win_path: list[str] = []
        self._win_line: list[int] = []
        self._win_end: list[int] = []
        self._win_lines: list[tuple[str, array[int]]] = []  # its file's lines and their starts (shared per file)
        self._win_key = array("q")  # tie order among equal scores: a hash of (path, line)
        self._free: list[int] = []
        self._n_windows = 0
        # Inverted index: token id -> (window ids, BM25 term weights).
        self._vocab: dict[str, int] = {}
        self._token_of: list[str] = []  # token id -> token ("" for a free id)
        self._free_tids: list[int] = []  # ids of tokens no window holds any more (a server sees every typo once)
        self._post_w: list[array[int]] = []
        self._post_v: list[array[float]] = []
        self._pivot = window_lines * _TOKENS_PER_LINE

    def __len__(self) -> int:
        return self._n_windows

    def window(self, wid: int) -> tuple[str, int, str]:
        """(path, first line, text) of a window."""
        lines, starts = self._win_lines[wid]
        return (
            self._win_path[wid],
            self._win_line[wid],
            lines[starts[self._win_line[wid]] : starts[self._win_end[wid]] - 1],
        )

    # ---- updates -------------------------------------------------------------------------------------------

    def add(
        self, path: str, windows: Sequence[Window], postings: FilePostings, lines: str
    ) -> tuple[list[int], array[int]]:
        """Store a file's windows (`postings`: the file's windows inverted, `lines`: the text they are lines of,
        as index_file makes them); their ids and the ids of the tokens they hold (what `drop` needs)."""
        key = path_hash(path)
        wids = [self._alloc() for _ in windows]
        shared = (lines, line_starts(lines)) if windows else _NO_LINES
        for wid, window in zip(wids, windows, strict=True):
            self._win_path[wid] = path
            self._win_line[wid] = window.start_line
            self._win_end[wid] = window.end_line
            self._win_lines[wid] = shared
            self._win_key[wid] = tie_key(key, window.start_line)
        self._n_windows += len(wids)
        tids = array("i")
        if not wids:
            return wids, tids
        local = np.frombuffer(postings.windows, dtype=np.int32)
        tf = np.frombuffer(postings.counts, dtype=np.int32).astype(np.float64)
        length = np.asarray([w.length for w in windows], dtype=np.float64)
        # Okapi BM25's term weight, the operations in the order (and precision) of the formula written out.
        norm = _BM25_K1 * (1.0 - _BM25_B + _BM25_B * length / self._pivot)
        weight, window_id = array("f"), array("i")
        weight.frombytes((tf * (_BM25_K1 + 1.0) / (tf + norm[local])).astype(np.float32).tobytes())
        window_id.frombytes(np.asarray(wids, dtype=np.int32)[local].tobytes())
        starts, vocab, post_w, post_v = postings.starts, self._vocab, self._post_w, self._post_v
        for k, token in enumerate(postings.terms):
            begin, end = starts[k], starts[k + 1]
            if begin == end:
                continue
            tid = vocab.get(token)
            if tid is None:
                tid = vocab[token] = self._alloc_token(token)
            post_w[tid] += window_id[begin:end]
            post_v[tid] += weight[begin:end]
            tids.append(tid)
        return wids, tids

    def drop(self, wids: Iterable[int], tids: Iterable[int]) -> None:
        """Remove a file's windows (`wids`, with `tids` the ids of the tokens they hold, as `add` gave them) from
        those tokens' postings; nothing else is touched."""
        gone = np.asarray(sorted(wids), dtype=np.int32)
        for wid in gone.tolist():
            self._n_windows -= 1
            self._win_path[wid] = ""
            self._win_lines[wid] = _NO_LINES
            heapq.heappush(self._free, wid)
        for tid in tids:
            w = np.frombuffer(self._post_w[tid], dtype=np.int32)
            keep = ~np.isin(w, gone, assume_unique=True)
            v = np.frombuffer(self._post_v[tid], dtype=np.float32)
            new_w, new_v = array("i"), array("f")
            new_w.frombytes(w[keep].tobytes())
            new_v.frombytes(v[keep].tobytes())
            del w, v
            self._post_w[tid], self._post_v[tid] = new_w, new_v
            if not new_w:  # no window holds the token any more: forget it
                del self._vocab[self._token_of[tid]]
                self._token_of[tid] = ""
                self._free_tids.append(tid)

    def _alloc(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        wid = len(self._win_path)
        self._win_path.append("")
        self._win_line.append(0)
        self._win_end.append(0)
        self._win_lines.append(_NO_LINES)
        self._win_key.append(0)
        return wid

    def _alloc_token(self, token: str) -> int:
        if self._free_tids:
            tid = self._free_tids.pop()
            self._token_of[tid] = token
            return tid
        self._token_of.append(token)
        self._post_w.append(array("i"))
        self._post_v.append(array("f"))
        return len(self._post_w) - 1

    # ---- queries -------------------------------------------------------------------------------------------

    def _postings(self, tokens: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(window ids, BM25 term weights times idf) of every posting of the query's chosen tokens, rarest token
        first, up to max_postings; None when no token is indexed."""
        n = self._n_windows
        if n == 0:
            return None
        vocab, post_w = self._vocab, self._post_w
        # A token in the vocabulary has postings (drop forgets the ones that have none left).
        terms = sorted([(len(post_w[tid]), token, tid) for token in tokens if (tid := vocab.get(token)) is not None])
        if not terms:
            return None
        chosen: list[int] = []
        dfs: list[int] = []
        total = 0
        for df, _, tid in terms:
            if chosen and total + df > self.max_postings:
                break
            chosen.append(tid)
            dfs.append(df)
            total += df
        # All postings of the chosen tokens at once (one copy, not an array per token); bincount adds each
        # window's terms in token order.
        w = np.frombuffer(b"".join([post_w[t] for t in chosen]), dtype=np.int32)
        v = np.frombuffer(b"".join([self._post_v[t] for t in chosen]), dtype=np.float32)
        df_arr = np.asarray(dfs, dtype=np.float32)
        return w, v * np.repeat(np.log1p((n - df_arr + 0.5) / (df_arr + 0.5)), dfs)

    def _sparse(self, w: np.ndarray) -> bool:
        """Few postings: sum over the windows they name, not over every window id."""
        return 8 * len(w) < len(self._win_path)

    def scores(self, tokens: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(window ids, their BM25 scores) of the windows holding any of the query's tokens, ids ascending;
        None when no token is indexed."""
        got = self._postings(tokens)
        if got is None:
            return None
        w, v = got
        if self._sparse(w):
            # The distinct windows: a stable sort (each token's postings are runs already in order, which it
            # merges) and its changes; each posting's place among them by bisection. About half np.unique's time.
            ordered = np.sort(w, kind="stable")
            first = np.empty(len(ordered), dtype=bool)
            first[0] = True
            np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
            ids = ordered[first]
            return ids, np.bincount(np.searchsorted(ids, w), weights=v, minlength=len(ids))
        dense = np.bincount(w, weights=v, minlength=len(self._win_path))
        hit = np.flatnonzero(dense > 0.0)  # every score of a posting is positive (idf > 0)
        return hit, dense[hit]

    def ranked(self, ids: np.ndarray, scores: np.ndarray, exclude: list[int], limit: int) -> list[int]:
        """The `limit` best window ids (ids ascending in), best first; equal scores in the order of their
        (path, line) hash. Work is linear in the windows scored: of the windows tied at the limit-th score (a
        repository of look-alike files ties thousands) only the ones needed are chosen, by a partition on their
        hashes, and only the chosen are sorted."""
        if exclude:  # not the own file: ids are ascending, so each excluded id is found by bisection
            gone = np.asarray(exclude, dtype=ids.dtype)
            at = np.minimum(np.searchsorted(ids, gone), len(ids) - 1)
            scores = scores.copy()
            scores[at[ids[at] == gone]] = 0.0
        keep = scores > 0.0
        ids, scores = ids[keep], scores[keep]
        all_keys = np.frombuffer(self._win_key, dtype=np.int64)
        if len(ids) > limit:  # the limit-th best score; above it every window, at it the smallest hashes
            kth = kth_largest(scores, limit)
            above = scores > kth
            tied = ids[scores == kth]
            need = limit - int(above.sum())
            if len(tied) > need:
                tied = tied[np.argpartition(all_keys[tied], need - 1)[:need]]
            ids = np.concatenate([ids[above], tied])
            scores = np.concatenate([scores[above], np.full(len(tied), kth)])
        order = np.lexsort((all_keys[ids], -scores))[:limit]
        return [int(i) for i in ids[order]]

    def best(self, tokens: set[str], exclude: list[int], limit: int) -> list[int]:
        """The `limit` windows most similar to the query's tokens, best first, none of `exclude`."""
        scored = self.scores(tokens)
        return [] if scored is None else self.ranked(*scored, exclude, limit)
