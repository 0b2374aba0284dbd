"""The corpus build: the only place that knows the order of the stages.

    walk (main) -> read, filter, redact secrets, sign, parse once, cut middles, index entries (workers, one pass
      per file) -> dedup, split (main) -> repo index (main) -> context per example (workers) -> write (threads)

Work is per file, spread over processes; every result is sorted before it is written and every random
choice is seeded from (seed, repo, path), so the output does not depend on the number of workers.
A file's text crosses between processes once (worker -> main): later stages run in forked workers that
read the kept files from memory they share with the main process (workers.forked_map), and the Parquet
shards are written on threads of the main process (pyarrow's writer runs without the GIL).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from fimtune import CORPUS_FORMAT_VERSION
from fimtune.config import CorpusConfig, to_dict
from fimtune.corpus import dedup, filters, secrets, spans, split, walk, write
from fimtune.corpus import workers as workers_
from fimtune.languages import parse
from fimtune.records import Snippet, SourceFile, Span

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class CorpusError(Exception):
    """A build cannot run; the message names the path or setting and says what to do."""


@dataclass(frozen=True, slots=True)
class Repo:
    name: str
    root: Path


@dataclass(slots=True)
class FileResult:
    """What the per-file worker stage learns about one file."""

    repo: str
    path: str
    language: str | None
    size: int
    reason: str | None = None
    data: bytes = b""  # the kept (redacted) text, UTF-8
    sha: str = ""
    signature: np.ndarray | None = None
    secrets: dict[str, int] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    parse_ok: bool = True
    file_index: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled compactly (a worker sends one per file): spans as plain tuples, as a dataclass pickles field
        by field through Python code, slowly."""
        spans = [(s.start, s.end, s.kind) for s in self.spans]
        return _unpickle_result, (
            (self.repo, self.path, self.language, self.size, self.reason),
            (self.data, self.sha, self.signature, self.secrets, spans, self.parse_ok, self.file_index),
        )


def _unpickle_result(
    where: tuple[str, str, str | None, int, str | None],
    found: tuple[bytes, str, np.ndarray | None, dict[str, int], list[tuple[int, int, str]], bool, Any],
) -> FileResult:
    repo, path, language, size, reason = where
    data, sha, signature, secrets_found, spans, parse_ok, file_index = found
    return FileResult(
        repo,
        path,
        language,
        size,
        reason,
        data,
        sha,
        signature,
        secrets_found,
        [Span(*s) for s in spans],
        parse_ok,
        file_index,
    )


# Walk reasons that count a pruned folder, not a file.
FOLDER_REASONS = frozenset({"skipped_dir", "ignored_dir", "symlink_duplicate"})

# Set in the parent before workers fork, read by the workers (fork shares it without pickling).
_STATE: dict[str, Any] = {}


def _process_one(args: tuple[str, str, walk.WalkItem]) -> FileResult:
    """Everything done to one file alone: read, filter, redact, sign, cut middles, index.

    One pass per file, before dedup: the few duplicates cost a wasted cut, every file saves a second
    round trip of its text between processes.
    """
    repo, root, item = args
    cfg: CorpusConfig = _STATE["cfg"]
    res = FileResult(repo=repo, path=item.path, language=item.language, size=item.size)
    data, reason = walk.read_file(Path(root), item)
    if data is None:
        res.reason = reason or "unreadable"
        return res
    res.size = len(data)
    text, reason = filters.decode_and_filter(item.path, data, cfg.filters)
    if text is None:
        res.reason = reason
        return res
    scan = secrets.scan_secrets(text, cfg.secrets)
    if scan.redacted:
        res.secrets = dict(scan.kinds)
        if cfg.secrets.action == "drop":
            res.reason = "secret"
            return res
    res.data = data = scan.text.encode("utf-8")
    res.sha = hashlib.sha256(data).hexdigest()  # records.sha256_hex of the text
    if cfg.dedup.near:
        res.signature = dedup.minhash_signature(data, cfg.dedup)
    source = SourceFile(repo, item.path, item.language or "", scan.text)
    tree = parse(source.language, data)  # one parse, shared by the middles and the context index
    rng = random.Random(f"{cfg.seed}\x00{repo}\x00{item.path}")
    cut = spans.choose_spans(source, cfg.spans, rng, data=data, tree=tree)
    res.spans, res.parse_ok = cut.spans, cut.parse_ok
    if cfg.context.enabled:
        from fimtune import context

        res.file_index = context.index_file(source, cfg.context, tree)
    return res


def _context_one(i: int) -> list[tuple[Snippet, ...]]:
    """The context of each middle of kept file i (runs in a worker)."""
    r: FileResult = _STATE["kept"][i]
    index = _STATE["indexes"][r.repo]
    out = []
    for span in r.spans:
        prefix = r.data[: span.start].decode("utf-8")
        suffix = r.data[span.end :].decode("utf-8")
        out.append(index.retrieve(r.path, r.language or "", prefix, suffix))
    return out


def _write_shard(job: tuple[str, int, int]) -> str:
    """Write one shard from the kept files (runs in a worker): its examples are refs[k * shard_examples:...]."""
    split_name, k, n_shards = job
    cfg: CorpusConfig = _STATE["cfg"]
    kept: list[FileResult] = _STATE["kept"]
    contexts: dict[int, list[tuple[Snippet, ...]]] = _STATE["contexts"]
    chunk = _STATE["refs"][split_name][k * cfg.shard_examples : (k + 1) * cfg.shard_examples]
    files: list[write.FileExamples] = []
    a = 0
    while a < len(chunk):  # consecutive refs of one file (spans in order) become one FileExamples
        i, first = chunk[a]
        b = a + 1
        while b < len(chunk) and chunk[b][0] == i:
            b += 1
        last = chunk[b - 1][1] + 1
        r = kept[i]
        ctx = contexts.get(i)
        files.append(
            write.FileExamples(
                r.repo, r.path, r.language or "", r.sha, r.data, r.spans[first:last], ctx[first:last] if ctx else ()
            )
        )
        a = b
    name = write.shard_names(split_name, n_shards)[k]
    write.write_shard(_STATE["data_dir"], name, files)
    return name


def _run(
    fn: Callable[[T], R],
    items: list[T],
    workers: int,
    desc: str,
    sizes: list[int] | None,
    progress: bool,
    threads: bool = False,
) -> Iterator[tuple[int, R]]:
    """Map fn over items on `workers` processes (in this process when 1), with a progress bar.

    Yields (index in items, result) in the order results finish: callers that need an order sort by index.
    With sizes, the largest items are handed out first, so no worker is left with a big one at the end.
    threads runs fn on threads of this process instead, for work that spends its time in code that releases
    the GIL (the Parquet writer): no fork, and memory the process has already mapped is reused.
    """
    bar = tqdm(
        total=len(items), desc=desc, unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False
    )
    start, done_bytes = time.perf_counter(), 0
    order = sorted(range(len(items)), key=lambda i: -sizes[i]) if sizes is not None else list(range(len(items)))

    def indexed(i: int) -> tuple[int, R]:  # workers are forked or threads: nothing here is pickled
        return i, fn(items[i])

    with ExitStack() as stack:
        stack.callback(bar.close)
        if workers <= 1 or len(items) < 2:
            results: Iterable[tuple[int, R]] = map(indexed, order)
        elif threads:
            pool = stack.enter_context(ThreadPoolExecutor(workers))
            stack.callback(pool.shutdown, cancel_futures=True)  # runs first: a failed job cancels the others
            results = (f.result() for f in as_completed([pool.submit(indexed, i) for i in order]))
        else:
            chunk = max(1, min(16, len(items) // (workers * 32)))
            forked = workers_.forked_map(indexed, order, min(workers, len(items)), chunk)
            stack.callback(forked.close)  # kills and reaps the workers when the caller stops early
            results = (r for _, r in forked)
        for n, (i, r) in enumerate(results):
            if sizes is not None:
                done_bytes += sizes[i]
                if n % 50 == 0:
                    bar.set_postfix_str(f"{done_bytes / 1e6 / max(time.perf_counter() - start, 1e-9):.1f} MB/s")
            bar.update()
            yield i, r


class _Timer:
    """Wall seconds per stage, recorded in the manifest so a slow build shows where its time went."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def resolve_repos(paths: list[str]) -> list[Repo]:
    """Each path must be an existing folder; names are folder names, made unique in the given order."""
    if not paths:
        raise CorpusError("no repository given: pass one or more folders, e.g. `fimtune build-corpus ./repo --out DIR`")
    repos: list[Repo] = []
    names: Counter[str] = Counter()
    for p in paths:
        root = Path(p).expanduser()
        if not root.exists():
            raise CorpusError(f"repository path {p} does not exist")
        if not root.is_dir():
            raise CorpusError(f"repository path {p} is not a folder")
        root = root.resolve()
        name = root.name or "repo"
        names[name] += 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"
        repos.append(Repo(name, root))
    return repos


def corpus_identity(cfg: CorpusConfig, repos: list[Repo]) -> dict[str, Any]:
    """What makes two builds the same corpus: inputs and every setting that changes the output."""
    config = to_dict(cfg)
    for volatile in ("workers", "out", "repos"):
        config.pop(volatile, None)
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "repos": [str(r.root) for r in repos],
        "config": config,
    }


def build_corpus(cfg: CorpusConfig, *, overwrite: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Build the corpus described by cfg into cfg.out; return the manifest."""
    cfg.validate()
    started = time.perf_counter()
    repos = resolve_repos(cfg.repos)
    out = Path(cfg.out).expanduser()
    identity = corpus_identity(cfg, repos)
    try:
        staging = write.prepare_output(out, identity, overwrite)
    except write.OutputError as e:
        raise CorpusError(str(e)) from None
    workers = cfg.workers or os.cpu_count() or 1
    show = sys.stderr.isatty() if progress is None else progress
    _STATE.clear()
    _STATE["cfg"] = cfg
    try:
        manifest = _build(cfg, repos, identity, staging, workers, show, started)
        write.finalize(out, staging, manifest, [s for s in ("train", "test") if manifest["counts"]["examples"][s]])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _STATE.clear()
    return manifest


def _build(
    cfg: CorpusConfig,
    repos: list[Repo],
    identity: dict[str, Any],
    staging: Path,
    workers: int,
    progress: bool,
    started: float,
) -> dict[str, Any]:
    dropped: Counter[str] = Counter()
    languages = set(cfg.languages)
    timer = _Timer()

    # 1. Walk (main process: listing is cheap and ordered).
    jobs: list[tuple[str, str, walk.WalkItem]] = []
    files_seen = 0
    empty_repos: list[str] = []
    for repo in repos:
        n_candidates = 0
        for item in walk.walk_repo(repo.root, cfg.walk, languages):
            if item.reason is None:
                jobs.append((repo.name, str(repo.root), item))
                n_candidates += 1
                files_seen += 1
            else:
                dropped[item.reason] += 1
                files_seen += item.reason not in FOLDER_REASONS
        if n_candidates == 0:
            empty_repos.append(repo.name)
            if len(repos) > 1:
                log.warning("repository %s has no supported source files; skipped", repo.root)
    if not jobs:
        where = ", ".join(str(r.root) for r in repos)
        why = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "no files at all"
        raise CorpusError(f"no supported source files found in {where} ({why})")

    timer.lap("walk")

    # 2. Per file: read, filter, redact, sign, cut middles, index.
    read_at: dict[int, FileResult] = {}
    secret_kinds: Counter[str] = Counter()
    files_with_secrets = 0
    bytes_in = 0
    sizes = [j[2].size for j in jobs]
    for i, res in _run(_process_one, jobs, workers, "files", sizes, progress):
        bytes_in += res.size
        if res.secrets:
            files_with_secrets += 1
            secret_kinds.update(res.secrets)
        if res.reason is not None:
            dropped[res.reason] += 1
        else:
            read_at[i] = res
    read = [read_at[i] for i in sorted(read_at)]  # walk order, whatever order the workers finished in

    timer.lap("files")

    # 3. Dedup across every repository, then split.
    result = dedup.deduplicate([dedup.DedupItem((r.repo, r.path), r.sha, r.signature) for r in read], cfg.dedup)
    kept: list[FileResult] = []
    for r in read:
        dup = result.duplicate_of.get((r.repo, r.path))
        if dup is None:
            kept.append(r)
        else:
            dropped[dup[0]] += 1
    mode = split.resolve_mode(cfg.split, len(repos))
    test_repos = split.pick_test_repos([r.name for r in repos], cfg.test_fraction, cfg.seed)
    side: dict[tuple[str, str], str] = {}
    for r in kept:
        if mode == "repo":
            side[(r.repo, r.path)] = "test" if r.repo in test_repos else "train"
        else:
            side[(r.repo, r.path)] = split.file_split(r.repo, r.path, cfg.test_fraction, cfg.seed)
    for member, rep in result.groups.items():  # a kept near-duplicate group stays on one side
        side[member] = side[rep]

    timer.lap("dedup_split")
    parse_failures = sum(not r.parse_ok for r in kept)
    _STATE["kept"] = kept

    # 5. Cross-file context with the same retriever the server uses.
    contexts: dict[int, list[tuple[Snippet, ...]]] = {}
    if cfg.context.enabled:
        from fimtune import context

        indexes = {}
        for repo in repos:
            entries = [r.file_index for r in kept if r.repo == repo.name and r.file_index is not None]
            indexes[repo.name] = context.RepoIndex.build(entries, cfg.context)
        _STATE["indexes"] = indexes
        with_spans = [i for i, r in enumerate(kept) if r.spans]
        sizes = [kept[i].size for i in with_spans]
        for k, ctx in _run(_context_one, with_spans, workers, "context", sizes, progress):
            contexts[with_spans[k]] = ctx

    timer.lap("context")

    # 6. Examples, sorted, written per split; shards are built and written on all workers.
    refs: dict[str, list[tuple[int, int]]] = {"train": [], "test": []}
    span_kinds: Counter[str] = Counter()
    lang_files: Counter[str] = Counter()
    order = sorted(range(len(kept)), key=lambda i: (kept[i].repo, kept[i].path))
    for i in order:
        r = kept[i]
        lang_files[r.language or ""] += 1
        span_kinds.update(span.kind for span in r.spans)
        refs[side[(r.repo, r.path)]].extend((i, j) for j in range(len(r.spans)))  # spans come sorted
    _STATE.update(contexts=contexts, refs=refs, data_dir=staging / "data")
    shard_jobs: list[tuple[str, int, int]] = []
    shards: dict[str, list[str]] = {}
    for name, split_refs in refs.items():
        n_shards = -(-len(split_refs) // cfg.shard_examples)
        shards[name] = write.shard_names(name, n_shards)
        shard_jobs.extend((name, k, n_shards) for k in range(n_shards))
    for _ in _run(_write_shard, shard_jobs, min(workers, len(shard_jobs)), "writing", None, progress, threads=True):
        pass
    timer.lap("write")

    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "identity": identity,
        "config": to_dict(cfg),
        "repos": [r.name for r in repos],
        "split_mode": mode,
        "test_repos": sorted(test_repos) if mode == "repo" else [],
        "counts": {
            "files_seen": files_seen,
            "files_kept": len(kept),
            "examples": {name: len(split_refs) for name, split_refs in refs.items()},
            "parse_failures": parse_failures,
            "empty_repos": empty_repos,
        },
        "dropped": dict(sorted(dropped.items())),
        "secrets": {
            "action": cfg.secrets.action,
            "files": files_with_secrets,
            "redacted": sum(secret_kinds.values()),
            "kinds": dict(sorted(secret_kinds.items())),
        },
        "languages": dict(sorted(lang_files.items())),
        "span_kinds": dict(sorted(span_kinds.items())),
        "shards": shards,
        "bytes_in": bytes_in,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "stage_seconds": timer.laps,
    }
