"""The workspace index for cross-file context: built in the background, updated from open documents, never blocking.

One `RepoIndex` per workspace folder (its files walked like a corpus repository: .gitignore, vendored folders
and large files skipped), plus one for open files outside every folder. A single thread applies all updates;
the first build of a large folder indexes its files in a separate process, so requests keep the interpreter.
Open documents are indexed from their live text (after a quiet period), closed ones from disk again.
Retrieval takes the folder's lock only for the lookup itself (about a millisecond).
"""

from __future__ import annotations

import gc
import heapq
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fimtune.config import ContextConfig, WalkConfig
from fimtune.context import FileIndex, RepoIndex, index_file
from fimtune.corpus.walk import WalkItem, classify, read_file, walk_repo
from fimtune.languages import LANGUAGES, language_for_path
from fimtune.records import Snippet, SourceFile

log = logging.getLogger("lsp_server.workspace")

MAX_FILES = 20_000  # per folder; beyond it the rest of the folder is not indexed (logged)
POOL_THRESHOLD = 200  # folders with more files are indexed in a worker process
CHANGE_DELAY_S = 0.5  # an open document is re-indexed after this long without edits
# Open documents are indexed from their first this many characters (cut at a line end): re-indexing after each
# pause in typing must stay cheap, and what retrieval needs of the file itself (its imports) is at the top.
LIVE_HEAD_CHARS = 256 * 1024


def _head(text: str, limit: int = LIVE_HEAD_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut + 1] if cut >= 0 else text[:limit]


def _window_key(cfg: ContextConfig) -> tuple[object, ...]:
    """The settings an index's content depends on (the rest only changes retrieval)."""
    return (cfg.window_lines, cfg.window_stride, cfg.definition_max_lines)


def _index_item(root: str, repo: str, item: WalkItem, cfg: ContextConfig, max_bytes: int) -> FileIndex | None:
    """Index one walked file (runs in a worker process); None when it cannot be read as UTF-8."""
    data, _reason = read_file(Path(root), item, max_bytes)
    if data is None or item.language is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return index_file(SourceFile(repo, item.path, item.language, text), cfg)


def _index_items(args: tuple[str, str, list[WalkItem], ContextConfig, int]) -> list[FileIndex]:
    root, repo, items, cfg, max_bytes = args
    out = []
    for item in items:
        fi = _index_item(root, repo, item, cfg, max_bytes)
        if fi is not None:
            out.append(fi)
    return out


@dataclass
class _Folder:
    root: str  # absolute path; "" for open files outside every folder
    name: str
    index: RepoIndex
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    files: int = 0


@dataclass(order=True)
class _Pending:
    due: float
    path: str = field(compare=False)
    language: str = field(compare=False)
    text: str | None = field(compare=False)  # None: re-read from disk (or remove when gone)


def _contains(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def repository_of(path: str) -> str | None:
    """The folder to index for a document outside every workspace folder: its git work tree's root, else its
    own folder; None for a file directly in the filesystem root or the home folder (too much to walk)."""
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while True:
        if os.path.exists(os.path.join(probe, ".git")):
            folder = probe
            break
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if folder in (os.path.abspath(os.sep), os.path.expanduser("~")) or not os.path.isdir(folder):
        return None
    return folder


class WorkspaceIndex:
    """Cross-file context for the server. Every public method returns at once (updates are queued)."""

    def __init__(self, cfg: ContextConfig, walk: WalkConfig | None = None, workers: int = 1) -> None:
        self.cfg = cfg
        self.walk = walk or WalkConfig()
        self.workers = workers
        self._folders: dict[str, _Folder] = {"": _Folder("", "", RepoIndex(cfg), ready=True)}
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}  # the latest job per path
        self._due: list[_Pending] = []  # every job queued, a heap by due time; replaced ones are skipped
        self._builds: list[str] = []  # roots waiting for their first build
        self._roots: list[str] = []  # the client's workspace folders
        self._implicit: set[str] = set()  # repositories of documents opened outside every workspace folder
        self._open: set[str] = set()  # absolute paths of open documents (their live text wins over disk)
        self._stop = False
        self._pool: ProcessPoolExecutor | None = None
        self._thread = threading.Thread(target=self._run, name="fimtune-index", daemon=True)
        self._thread.start()

    # ---- called from the event loop --------------------------------------------------------------------

    def set_roots(self, roots: list[str]) -> None:
        """Index these folders (absolute paths) and the repositories of documents opened outside them; folders
        no longer listed are dropped."""
        self._roots = [os.path.abspath(r) for r in roots if r and os.path.isdir(r)]
        # An open document whose folder was removed is a loose file now: its repository is indexed for it, as
        # for one opened outside every folder.
        for path in self._open:
            if language_for_path(path) is not None and not any(_contains(root, path) for root in self._roots):
                repo = repository_of(path)
                if repo is not None:
                    self._implicit.add(repo)
        self._update_folders()

    def _update_folders(self) -> None:
        inside = [r for r in self._implicit if any(_contains(root, r) for root in self._roots)]
        self._implicit.difference_update(inside)  # a workspace folder now holds it
        wanted = self._roots + sorted(self._implicit)
        with self._cond:
            for root in list(self._folders):
                if root and root not in wanted:
                    del self._folders[root]
            for root in wanted:
                if root not in self._folders:
                    self._folders[root] = _Folder(root, Path(root).name, RepoIndex(self.cfg))
                    self._builds.append(root)
            self._cond.notify()

    def set_config(self, cfg: ContextConfig) -> None:
        """New context settings: retrieval budgets apply at once; other window settings rebuild every folder."""
        if cfg == self.cfg:
            return
        rebuild = _window_key(cfg) != _window_key(self.cfg)
        self.cfg = cfg
        if not rebuild:
            for folder in list(self._folders.values()):
                with folder.lock:
                    folder.index.cfg = cfg
            return
        with self._cond:
            self._folders = {"": _Folder("", "", RepoIndex(cfg), ready=True)}
        self._update_folders()
        for path in list(self._open):
            self.refresh(path, None, None, delay=0.0)

    def opened(self, path: str, language: str | None, text: str) -> None:
        self._open.add(path)
        if language in LANGUAGES:
            if not self._folder_of(path).root:
                repo = repository_of(path)
                if repo is not None and repo not in self._implicit:
                    log.info("%s is outside every workspace folder: indexing %s for its context", path, repo)
                    self._implicit.add(repo)
                    self._update_folders()
            self.refresh(path, language, text, delay=0.0)

    def changed(self, path: str, language: str | None, text: str) -> None:
        if language in LANGUAGES:
            self.refresh(path, language, text, delay=CHANGE_DELAY_S)

    def closed(self, path: str, language: str | None) -> None:
        self._open.discard(path)
        # A repository indexed for documents outside every workspace folder goes with the last of them: a long
        # session that jumps into library files would otherwise keep a whole-folder index of each.
        unused = [r for r in self._implicit if not any(_contains(r, p) for p in self._open)]
        if unused:
            log.info("no open document in %s any more: dropping its index", ", ".join(sorted(unused)))
            self._implicit.difference_update(unused)
            self._update_folders()
        self.refresh(path, language or "", None, delay=0.0)

    def on_disk(self, path: str, deleted: bool = False) -> None:
        """The file at `path` was created, changed or deleted outside the editor (workspace/didChangeWatchedFiles).

        An open document's live text wins over the disk; a file outside every folder is not indexed from disk.
        Files the folder's walk would skip (ignored, vendored, too large) are dropped from the index; so is every
        file under a deleted folder. Events that cannot concern the index (no source extension, a vendored
        folder) are dropped here, so an `npm install` does not queue thousands of jobs ahead of the user's edits.
        """
        path = os.path.normpath(path)
        folder = self._folder_of(path)
        if path in self._open or not folder.root:
            return
        if not deleted:
            rel_parts = PurePosixPath(os.path.relpath(path, folder.root)).parts
            if language_for_path(path) is None or any(part in self.walk.skip_dirs for part in rel_parts[:-1]):
                return
        self.refresh(path, None, None, delay=0.0)

    def refresh(self, path: str, language: str | None, text: str | None, delay: float = 0.0) -> None:
        """Queue a re-index of `path` from `text` (None: from disk) after `delay` seconds; the latest wins."""
        job = _Pending(time.monotonic() + delay, path, language or "", text)
        with self._cond:
            self._pending[path] = job
            heapq.heappush(self._due, job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- called from worker threads --------------------------------------------------------------------

    def locate(self, path: str) -> tuple[str, str]:
        """(repository name, path inside it) of an absolute path: the innermost folder holding it, else
        ("", the path itself)."""
        folder = self._folder_of(path)
        if folder.root:
            return folder.name, PurePosixPath(os.path.relpath(path, folder.root)).as_posix()
        return "", os.path.basename(path)  # never an absolute path: it would reach the prompt

    def _folder_of(self, path: str) -> _Folder:
        best = self._folders[""]
        for root, folder in list(self._folders.items()):
            if root and _contains(root, path) and len(root) > len(best.root):
                best = folder
        return best

    def retrieve(self, path: str, language: str, prefix: str, suffix: str) -> tuple[Snippet, ...]:
        """Context for a cursor in the file at absolute `path` (snippets carry folder-relative paths).

        A document the index has not seen yet (just opened) is indexed here first, once, from the head of its
        text, so that retrieval never parses a whole large file per request."""
        if language not in LANGUAGES:
            return ()
        folder = self._folder_of(path)
        rel = self.locate(path)[1]
        with folder.lock:
            known = rel in folder.index
        if not known:
            fi = index_file(SourceFile(folder.name, rel, language, _head(prefix + suffix)), self.cfg)
            with folder.lock:
                if rel not in folder.index:
                    folder.index.update(fi)
        with folder.lock:
            return folder.index.retrieve(rel, language, prefix, suffix)

    def stats(self) -> dict[str, object]:
        folders = [f for r, f in self._folders.items() if r]
        return {
            "folders": len(folders),
            "files": sum(len(f.index) for f in self._folders.values()),
            "ready": all(f.ready for f in folders),
            "pending": len(self._pending),
        }

    # ---- the index thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        build: Iterator[None] | None = None
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                while self._due and self._pending.get(self._due[0].path) is not self._due[0]:
                    heapq.heappop(self._due)  # replaced by a later job for the same path
                job: _Pending | None = None
                if self._due and self._due[0].due <= now:
                    job = heapq.heappop(self._due)
                    del self._pending[job.path]
                else:
                    if build is None and self._builds:
                        build = self._build(self._builds.pop(0))
                    if build is None:
                        wait = (self._due[0].due if self._due else now + 3600) - now
                        self._cond.wait(timeout=max(0.001, wait))
                        continue
            try:
                if job is not None:
                    self._apply(job)
                elif build is not None and next(build, StopIteration) is StopIteration:
                    build = None
            except Exception:  # a bug in indexing one file must not stop the index
                log.exception("workspace index update failed")
                if job is None:
                    build = None

    def _apply(self, job: _Pending) -> None:
        folder = self._folder_of(job.path)
        rel = self.locate(job.path)[1]
        text = job.text
        language = job.language
        if text is None and not folder.root:  # a closed file outside every folder: forget it
            with folder.lock:
                folder.index.remove(rel)
            return
        if text is None:  # from disk, if the folder's walk would index it
            item = classify(Path(folder.root), rel, self.walk)
            data = read_file(Path(folder.root), item, self.walk.max_file_bytes)[0] if item.reason is None else None
            try:
                text = data.decode("utf-8") if data is not None else None
            except UnicodeDecodeError:
                text = None
            if text is None or item.language is None:
                with folder.lock:
                    folder.index.remove(rel)
                    if item.reason == "missing" and language_for_path(rel) is None:  # a deleted folder
                        for inside in [p for p in folder.index.paths if p.startswith(rel + "/")]:
                            folder.index.remove(inside)
                return
            language = item.language
        if language not in LANGUAGES:
            return
        fi = index_file(SourceFile(folder.name, rel, language, _head(text)), self.cfg)
        with folder.lock:
            folder.index.update(fi)
        log.debug("indexed %s (%d windows)", job.path, len(fi.windows))

    def _build(self, root: str) -> Iterator[None]:
        """Index a folder's files; yields after each file or batch so queued document updates go first."""
        folder = self._folders.get(root)
        if folder is None:
            return
        start = time.perf_counter()
        items: list[WalkItem] = []
        for n, item in enumerate(walk_repo(Path(root), self.walk, ())):
            if item.reason is None and os.path.join(root, item.path) not in self._open:
                items.append(item)
                if len(items) >= MAX_FILES:
                    log.warning("workspace %s: indexing only the first %d files for context", root, MAX_FILES)
                    break
            if n % 256 == 255:
                yield
        cfg = self.cfg
        max_bytes = self.walk.max_file_bytes
        if len(items) <= POOL_THRESHOLD or self.workers < 1:
            for item in items:
                fi = _index_item(root, folder.name, item, cfg, max_bytes)
                if fi is not None:
                    self._add(folder, fi)
                yield
        else:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            batches = [items[i : i + 16] for i in range(0, len(items), 16)]
            pool = self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method))
            try:
                for out in pool.map(_index_items, [(root, folder.name, b, cfg, max_bytes) for b in batches]):
                    for fi in out:
                        self._add(folder, fi)
                        yield
            finally:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
        folder.ready = True
        # The index holds millions of small objects that live as long as the folder: keep them out of the
        # cyclic garbage collector's full passes, which would otherwise pause requests for tens of milliseconds.
        gc.freeze()
        log.info(
            "workspace %s: %d files indexed for context in %.1fs", root, len(folder.index), time.perf_counter() - start
        )

    def _add(self, folder: _Folder, fi: FileIndex) -> None:
        if self._folders.get(folder.root) is not folder:
            return  # dropped or rebuilt meanwhile
        if os.path.join(folder.root, fi.path) in self._open:
            return  # the live text was indexed instead
        with folder.lock:
            folder.index.update(fi)
