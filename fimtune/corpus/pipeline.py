"""The corpus build: the only place that knows the order of the stages.

    walk (main) -> read, filter, redact secrets, sign, parse once, cut middles, index entries (workers, one pass
      per file) -> in (repo, path) order as the files come in: dedup, split, write (main; shards on threads)
    with cross-file context, each kept file goes into its repository's index as it comes in (main), and the
      write waits for: context per middle (workers, in the same order, each file written once it has its
      contexts)

Work is per file, spread over processes; files are taken in (repo, path) order, their results put back in
that order before dedup, and every random choice is seeded from (seed, repo, path), so the output does not
depend on the number of workers. A file's text crosses between processes once (worker -> main). Without
context, a file's rows are written as soon as every file before it has come in, so the Parquet writer
(threads of the main process: pyarrow's writer runs without the GIL) works alongside the workers and a kept
file's text is let go once written. With context, every kept file is held until the repository index is
complete; context workers read them from memory they share with the main process (workers.forked_map), and the
write runs alongside them.
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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm import tqdm

from fimtune import CORPUS_FORMAT_VERSION
from fimtune.config import CorpusConfig, to_dict
from fimtune.corpus import dedup, filters, secrets, spans, split, walk, write
from fimtune.corpus import workers as workers_
from fimtune.languages import parse
from fimtune.records import Snippet, SourceFile, Span

if TYPE_CHECKING:
    from fimtune.context import RepoIndex

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
    index: RepoIndex = _STATE["indexes"][r.repo]
    text = r.data.decode("utf-8")
    if len(text) == len(r.data):  # ASCII: byte offsets are character offsets
        cursors = [(span.start, span.end) for span in r.spans]
    else:
        cursors = [
            (len(r.data[: span.start].decode("utf-8")), len(r.data[: span.end].decode("utf-8"))) for span in r.spans
        ]
    return index.retrieve_many(r.path, r.language or "", text, cursors)


def _examples(r: FileResult, contexts: Sequence[tuple[Snippet, ...]] = ()) -> write.FileExamples:
    """A kept file's rows for the writer: one per middle, each with its context (none when context is off)."""
    return write.FileExamples(r.repo, r.path, r.language or "", r.sha, r.data, r.spans, contexts)


def _contexts(
    kept: list[FileResult], indexes: dict[str, RepoIndex], workers: int, progress: bool
) -> Iterator[tuple[int, list[tuple[Snippet, ...]]]]:
    """(index in kept, the context of each of its middles) for every kept file with middles, in kept order, each
    as soon as the files before it are done: made with the retriever the server uses, on the workers, from the
    repository indexes the main process filled while the files came in."""
    _STATE["kept"] = kept
    _STATE["indexes"] = indexes
    with_spans = [i for i, r in enumerate(kept) if r.spans]
    sizes = [kept[i].size for i in with_spans]
    with closing(_run(_context_one, with_spans, workers, "context", sizes, progress)) as done:
        for k, ctx in enumerate(done):
            yield with_spans[k], ctx


def _repo_indexes(cfg: CorpusConfig, repos: list[Repo]) -> dict[str, RepoIndex]:
    """An empty repository index per repository when context is on (none otherwise)."""
    if not cfg.context.enabled:
        return {}
    from fimtune.context import RepoIndex

    return {repo.name: RepoIndex(cfg.context) for repo in repos}


def _run(
    fn: Callable[[T], R],
    items: list[T],
    workers: int,
    desc: str,
    sizes: list[int] | None,
    progress: bool,
) -> Generator[R, None, None]:
    """Map fn over items on `workers` processes (in this process when 1), with a progress bar (MB/s from sizes).

    Items are handed out in their order, in chunks; each result is yielded, in item order, as soon as every one
    before it has come in, so the caller can write while the workers go on.
    """
    bar = tqdm(
        total=len(items), desc=desc, unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False
    )
    start, done_bytes = time.perf_counter(), 0
    order = range(len(items))

    def indexed(i: int) -> tuple[int, R]:  # workers are forked or threads: nothing here is pickled
        return i, fn(items[i])

    with ExitStack() as stack:
        stack.callback(bar.close)
        if workers <= 1 or len(items) < 2:
            results: Iterable[tuple[int, R]] = map(indexed, order)
        else:
            chunk = max(1, min(16, len(items) // (workers * 32)))
            forked = workers_.forked_map(indexed, order, min(workers, len(items)), chunk)
            stack.callback(forked.close)  # kills and reaps the workers when the caller stops early
            results = (r for _, r in forked)
        waiting: dict[int, R] = {}  # results that came in before one of an earlier item
        upcoming = 0
        for n, (i, r) in enumerate(results):
            if sizes is not None:
                done_bytes += sizes[i]
                if n % 50 == 0:
                    bar.set_postfix_str(f"{done_bytes / 1e6 / max(time.perf_counter() - start, 1e-9):.1f} MB/s")
            bar.update()
            waiting[i] = r
            while upcoming in waiting:
                yield waiting.pop(upcoming)
                upcoming += 1


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
        staging = write.prepare_output(out, identity, overwrite, [r.root for r in repos])
    except write.OutputError as e:
        raise CorpusError(str(e)) from None
    workers = cfg.workers or os.cpu_count() or 1
    show = sys.stderr.isatty() if progress is None else progress
    _STATE.clear()
    _STATE["cfg"] = cfg
    try:
        manifest = _build(cfg, repos, identity, staging, workers, show, started)
        write.finalize(out, staging, manifest, [s for s in ("train", "test") if manifest["counts"]["examples"][s]])
    except OSError as e:  # reading a repository's files is per file (a named reason); this is the output side
        shutil.rmtree(staging, ignore_errors=True)
        detail = e.strerror or str(e).splitlines()[0]
        raise CorpusError(
            f"cannot write the corpus to {out}: {detail}; free space there or choose another --out"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _STATE.clear()
    return manifest


def _walk(
    cfg: CorpusConfig, repos: list[Repo], dropped: Counter[str]
) -> tuple[list[tuple[str, str, walk.WalkItem]], int, list[str]]:
    """The candidate files of every repository as (repo name, root, item); the files seen (folders pruned are not
    files); the repositories without a candidate. What the walk skips is counted in `dropped`."""
    jobs: list[tuple[str, str, walk.WalkItem]] = []
    files_seen = 0
    empty_repos: list[str] = []
    languages = set(cfg.languages)
    for repo in repos:
        n_candidates = 0
        for item in walk.walk_repo(repo.root, cfg.walk, languages):
            if item.reason is None:
                jobs.append((repo.name, str(repo.root), item))
                n_candidates += 1
                files_seen += 1
            else:
                dropped[item.reason] += 1
                files_seen += item.reason not in walk.FOLDER_REASONS
        if n_candidates == 0:
            empty_repos.append(repo.name)
            if len(repos) > 1:
                log.warning("repository %s has no supported source files; skipped", repo.root)
    if not jobs:
        where = ", ".join(str(r.root) for r in repos)
        why = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "no files at all"
        raise CorpusError(f"no supported source files found in {where} ({why})")
    return jobs, files_seen, empty_repos


def _side(
    res: FileResult,
    cfg: CorpusConfig,
    dedupe: dedup.Deduplicator,
    sides: dict[tuple[str, str], str],
    test_repos: set[str] | None,
) -> str:
    """train or test for a kept file: its near-duplicate group's side, else by repository (test_repos given) or
    by a stable hash of the file."""
    if (first := dedupe.groups.get((res.repo, res.path))) is not None:  # a near-duplicate group stays together
        return sides[first]
    if test_repos is not None:
        return "test" if res.repo in test_repos else "train"
    return split.file_split(res.repo, res.path, cfg.test_fraction, cfg.seed)


@dataclass
class _Tally:
    """The manifest's counts over the files as they come in from the workers."""

    bytes_in: int = 0
    files_with_secrets: int = 0
    secret_kinds: Counter[str] = field(default_factory=Counter)
    parse_failures: int = 0
    lang_files: Counter[str] = field(default_factory=Counter)
    span_kinds: Counter[str] = field(default_factory=Counter)

    def seen(self, res: FileResult) -> None:
        self.bytes_in += res.size
        if res.secrets:
            self.files_with_secrets += 1
            self.secret_kinds.update(res.secrets)

    def kept(self, res: FileResult) -> None:
        self.lang_files[res.language or ""] += 1
        self.span_kinds.update(span.kind for span in res.spans)
        self.parse_failures += not res.parse_ok


def _manifest(
    cfg: CorpusConfig,
    identity: dict[str, Any],
    repos: list[Repo],
    split_info: dict[str, Any],
    counts: dict[str, Any],
    dropped: Counter[str],
    tally: _Tally,
    shards: dict[str, Any],
) -> dict[str, Any]:
    """manifest.json: what was built from what, and what was left out and why."""
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "identity": identity,
        "config": to_dict(cfg),
        "repos": [r.name for r in repos],
        **split_info,
        "counts": counts,
        "dropped": dict(sorted(dropped.items())),
        "secrets": {
            "action": cfg.secrets.action,
            "files": tally.files_with_secrets,
            "redacted": sum(tally.secret_kinds.values()),
            "kinds": dict(sorted(tally.secret_kinds.items())),
        },
        "languages": dict(sorted(tally.lang_files.items())),
        "span_kinds": dict(sorted(tally.span_kinds.items())),
        "shards": shards,
        "bytes_in": tally.bytes_in,
    }


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
    timer = _Timer()

    # 1. Walk (main process: listing is cheap and ordered).
    jobs, files_seen, empty_repos = _walk(cfg, repos, dropped)
    timer.lap("walk")

    # 2. Per file: read, filter, redact, sign, cut middles, index (workers). 3. In (repo, path) order as
    # they come in: dedup across every repository, split, and without context, write.
    jobs.sort(key=lambda job: (job[0], job[2].path))
    tally = _Tally()
    dedupe = dedup.Deduplicator(cfg.dedup)
    mode = split.resolve_mode(cfg.split, len(repos))
    test_repos = split.pick_test_repos([r.name for r in repos], cfg.test_fraction, cfg.seed)
    sides: dict[tuple[str, str], str] = {}
    kept: list[FileResult] = []  # with context only: the kept files wait for the repository index
    indexes = _repo_indexes(cfg, repos)
    sizes = [j[2].size for j in jobs]
    with ExitStack() as stack:
        writers = {
            name: stack.enter_context(write.SplitWriter(staging / "data", name, cfg.shard_examples))
            for name in ("train", "test")
        }
        # Closed on the way out, so an error or Ctrl-C stops the workers now, not when its traceback is let go.
        files = stack.enter_context(closing(_run(_process_one, jobs, workers, "files", sizes, progress)))
        for res in files:
            tally.seen(res)
            if res.reason is not None:
                dropped[res.reason] += 1
                continue
            duplicate = dedupe.add(dedup.DedupItem((res.repo, res.path), res.sha, res.signature))
            if duplicate is not None:
                dropped[duplicate[0]] += 1
                continue
            side = sides[res.repo, res.path] = _side(res, cfg, dedupe, sides, test_repos if mode == "repo" else None)
            tally.kept(res)
            if cfg.context.enabled:
                # Indexed as it comes in (in kept order, as a build from the whole list would), while the
                # workers go on with the next files; the store holds what retrieval needs from it.
                if res.file_index is not None:
                    indexes[res.repo].update(res.file_index)
                    res.file_index = None
                kept.append(res)
            else:
                writers[side].add(_examples(res))
        timer.lap("files")

        # 4. Cross-file context with the same retriever the server uses, each file written once it has its own.
        if cfg.context.enabled:
            for i, contexts in _contexts(kept, indexes, workers, progress):
                writers[sides[kept[i].repo, kept[i].path]].add(_examples(kept[i], contexts))
            timer.lap("context")
        shards = {name: writer.close() for name, writer in writers.items()}
    timer.lap("write")
    counts = {
        "files_seen": files_seen,
        "files_kept": sum(tally.lang_files.values()),
        "examples": {name: writer.rows for name, writer in writers.items()},
        "parse_failures": tally.parse_failures,
        "empty_repos": empty_repos,
    }
    split_info = {"split_mode": mode, "test_repos": sorted(test_repos) if mode == "repo" else []}
    return _manifest(cfg, identity, repos, split_info, counts, dropped, tally, shards) | {
        "elapsed_s": round(time.perf_counter() - started, 3),
        "stage_seconds": timer.laps,
    }
