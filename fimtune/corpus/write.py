"""Writes a corpus folder in the Hugging Face dataset layout: data/<split>-NNNNN-of-NNNNN.parquet, README, manifest.

Everything is written into a staging folder first and moved into place at the end, with manifest.json
last: a build that is interrupted never leaves a shard or a manifest that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fimtune.outputs import OutputRefused, check_output_folder
from fimtune.records import Snippet, Span, example_id

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("span_kind", pa.string()),
        ("prefix", pa.string()),
        ("middle", pa.string()),
        ("suffix", pa.string()),
        (
            "context",
            pa.list_(pa.struct([("path", pa.string()), ("text", pa.string()), ("kind", pa.string())])),
        ),
        ("file_sha", pa.string()),
    ]
)

# Columns that hold whole file texts (every example repeats its file): no dictionary (no value repeats) and no
# min/max statistics (comparing long shared prefixes costs as much as compressing them); zstd does the rest.
TEXT_COLUMNS = ("prefix", "middle", "suffix", "context")
ROW_GROUP_ROWS = 1000
# A row group's rows repeat at most this many bytes of file text (its text columns hold about that much). Larger
# groups made the writer map fresh memory for every group: page faults were a third of the write's CPU time.
# (Also far under the 2 GiB an Arrow string column can hold.)
ROW_GROUP_TEXT_BYTES = 4 << 20
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": [n for n in SCHEMA.names if n not in TEXT_COLUMNS],
    "write_statistics": [n for n in SCHEMA.names if n not in TEXT_COLUMNS],
}

MANIFEST = "manifest.json"
BUILDING_MARKER = ".fimtune-building"
STAGING_PREFIX = ".staging-"


class OutputError(Exception):
    """The output folder cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class FileExamples:
    """The examples one file gives a shard: the file's UTF-8 text once, the spans cut from it (sorted), and
    each span's context (empty when context is off). Rows are made from these without a string per row."""

    repo: str
    path: str
    language: str
    file_sha: str
    data: bytes
    spans: Sequence[Span]
    contexts: Sequence[tuple[Snippet, ...]] = ()


def shard_names(split: str, n_shards: int) -> list[str]:
    return [f"{split}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


class SplitWriter:
    """One split's shards, written while its examples come in.

    Rows are written in the order they are added: shard k holds rows [k * shard_examples, (k + 1) *
    shard_examples), each shard cut into row groups of ROW_GROUP_ROWS rows, earlier when the group's text
    columns would pass ROW_GROUP_TEXT_BYTES. So the bytes depend on the rows alone, never on when they came.
    Each shard is encoded and compressed on a thread of its own (pyarrow's writer runs without the GIL) while
    the caller goes on; at most max_pending row groups wait, so memory stays bounded when the caller is faster.
    A shard is written as <name>.partial and named <split>-k-of-N by close(), when N is known.

    Use as a context manager: leaving it on an exception stops the threads before the caller removes the files.
    """

    def __init__(self, folder: Path, split: str, shard_examples: int, max_pending: int = 4) -> None:
        self.folder, self.split, self.shard_examples, self.max_pending = folder, split, shard_examples, max_pending
        self.rows = 0
        self._group: list[tuple[FileExamples, int]] = []
        self._group_text = 0
        self._shards: list[_ShardThread] = []
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abort()

    def add(self, f: FileExamples) -> None:
        """Queue one row per span of f, in order."""
        size = len(f.data)
        for j in range(len(f.spans)):
            if self.rows % self.shard_examples == 0:  # the first row of a shard
                self._flush()
                if self._shards:
                    self._pending.append(self._shards[-1].finish())
                self._shards.append(_ShardThread(self.folder / f"{self.split}-{len(self._shards):05d}.parquet.partial"))
            elif len(self._group) == ROW_GROUP_ROWS or self._group_text + size > ROW_GROUP_TEXT_BYTES:
                self._flush()
            self._group.append((f, j))
            self._group_text += size
            self.rows += 1

    def close(self) -> list[str]:
        """Write what is left, wait for every shard and name them; the shard names, in order."""
        self._flush()
        if self._shards:
            self._pending.append(self._shards[-1].finish())
        while self._pending:
            self._pending.popleft().result()
        for shard in self._shards:
            shard.join()
        names = shard_names(self.split, len(self._shards))
        for shard, name in zip(self._shards, names, strict=True):
            os.replace(shard.path, self.folder / name)
        return names

    def abort(self) -> None:
        """Drop what waits and stop every shard's thread (the files are left as they are)."""
        for future in self._pending:
            future.cancel()
        for shard in self._shards:
            shard.join(abandon=True)

    def _flush(self) -> None:
        if not self._group:
            return
        self._pending.append(self._shards[-1].write(self._group))
        self._group, self._group_text = [], 0
        while self._pending and (self._pending[0].done() or len(self._pending) > self.max_pending):
            self._pending.popleft().result()  # raises what the thread raised


class _ShardThread:
    """One shard's Parquet file, written group by group on its own thread, in the order submitted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fimtune-write")
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: list[tuple[FileExamples, int]]) -> Future[None]:
        return self._pool.submit(self._write, rows)

    def finish(self) -> Future[None]:
        """No more rows: the file is closed after the last group (its footer written; join waits for it)."""
        closed = self._pool.submit(self._close)
        self._pool.shutdown(wait=False)
        return closed

    def join(self, abandon: bool = False) -> None:
        """Wait for the thread; with abandon, drop the groups still waiting and close the file as it is."""
        self._pool.shutdown(wait=True, cancel_futures=abandon)
        if abandon:
            with contextlib.suppress(Exception):  # the error that led here is the one to report
                self._close()

    def _write(self, rows: list[tuple[FileExamples, int]]) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, **WRITE_OPTIONS)
        self._writer.write_table(_table(rows), row_group_size=ROW_GROUP_ROWS)

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


def _strings(pieces: Sequence[bytes | memoryview]) -> pa.Array:
    """A string column from UTF-8 pieces (file text cut at character boundaries), copied once.

    Built from buffers, not from Python objects: pyarrow's conversion of Python values imports pandas (half a
    second in every worker) and makes a string object per row.
    """
    offsets = np.fromiter(accumulate(map(len, pieces), initial=0), dtype=np.int32, count=len(pieces) + 1)
    return pa.StringArray.from_buffers(len(pieces), pa.py_buffer(offsets), pa.py_buffer(b"".join(pieces)))


_CONTEXT_TYPE = SCHEMA.field("context").type


def _contexts(per_row: Sequence[tuple[Snippet, ...]]) -> pa.Array:
    """The context column: a list of {path, text, kind} per row."""
    offsets = np.fromiter(accumulate(map(len, per_row), initial=0), dtype=np.int32, count=len(per_row) + 1)
    snippets = [s for row in per_row for s in row]
    fields = [_strings([getattr(s, f.name).encode("utf-8") for s in snippets]) for f in _CONTEXT_TYPE.value_type.fields]
    items = pa.StructArray.from_arrays(fields, fields=list(_CONTEXT_TYPE.value_type.fields))
    return pa.ListArray.from_arrays(
        pa.Array.from_buffers(pa.int32(), len(offsets), [None, pa.py_buffer(offsets)]), items, type=_CONTEXT_TYPE
    )


def _table(rows: list[tuple[FileExamples, int]]) -> pa.Table:
    files = list({id(f): f for f, _ in rows}.values())
    views = {id(f): memoryview(f.data) for f in files}
    meta = {id(f): [x.encode("utf-8") for x in (f.repo, f.path, f.language, f.file_sha)] for f in files}
    spans = [(f, views[id(f)], f.spans[j]) for f, j in rows]
    no_context: tuple[Snippet, ...] = ()
    columns = {
        "id": _strings([example_id(f.repo, f.path, s).encode("ascii") for f, _, s in spans]),
        "repo": _strings([meta[id(f)][0] for f, _ in rows]),
        "path": _strings([meta[id(f)][1] for f, _ in rows]),
        "language": _strings([meta[id(f)][2] for f, _ in rows]),
        "span_kind": _strings([s.kind.encode("utf-8") for _, _, s in spans]),
        "prefix": _strings([v[: s.start] for _, v, s in spans]),
        "middle": _strings([v[s.start : s.end] for _, v, s in spans]),
        "suffix": _strings([v[s.end :] for _, v, s in spans]),
        "context": _contexts([f.contexts[j] if f.contexts else no_context for f, j in rows]),
        "file_sha": _strings([meta[id(f)][3] for f, _ in rows]),
    }
    return pa.Table.from_arrays([columns[n] for n in SCHEMA.names], schema=SCHEMA)


def dataset_card(manifest: dict[str, Any], splits: Sequence[str]) -> str:
    """README.md with the YAML header that `datasets.load_dataset(folder)` reads."""
    files = "\n".join(f"  - split: {s}\n    path: data/{s}-*.parquet" for s in splits)
    counts = manifest["counts"]
    langs = ", ".join(f"{k} ({v} files)" for k, v in sorted(manifest["languages"].items()))
    kinds = ", ".join(f"{k} ({v})" for k, v in sorted(manifest["span_kinds"].items()))
    return f"""---
configs:
- config_name: default
  data_files:
{files}
tags:
- code
- fill-in-the-middle
---
# fimtune corpus

Fill-in-the-middle examples built by `fimtune build-corpus` (corpus format version {manifest["format_version"]}).
Each row is one example: `prefix + middle + suffix` is exactly the text of the file `path` of repository `repo`;
`span_kind` says what the middle is, `context` holds cross-file snippets from the same repository.

- repositories: {", ".join(manifest["repos"])}
- files: {counts["files_kept"]} kept of {counts["files_seen"]} seen
- examples: {", ".join(f"{k} {v}" for k, v in counts["examples"].items())}
- languages: {langs}
- span kinds: {kinds}

The full build configuration, and every dropped file counted by reason, are in `manifest.json`.
"""


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OutputError(f"{path} is not a readable corpus manifest ({e}); remove it or use another --out") from e
    if not isinstance(data, dict):
        raise OutputError(f"{path} is not a corpus manifest; remove it or use another --out")
    return data


def is_corpus_folder(folder: Path) -> bool:
    """Whether `folder` is fimtune's own: a built corpus (its manifest), or what an interrupted build left."""
    names = [p.name for p in folder.iterdir()]
    if BUILDING_MARKER in names or (names and all(n.startswith(STAGING_PREFIX) for n in names)):
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "identity" in manifest and "format_version" in manifest


def prepare_output(out: Path, identity: dict[str, Any], overwrite: bool, inputs: Sequence[Path] = ()) -> Path:
    """Check the output folder can take this corpus; return a fresh staging folder inside it.

    A folder is usable when it is absent or empty, holds a corpus built with the same identity (the same
    command again), or holds what an interrupted build left; `overwrite` replaces a different corpus. Nothing
    else is ever replaced: not a folder of the user's, the root, the home folder, a repository root or an input.
    """
    try:
        check_output_folder(out, is_corpus_folder, "fimtune corpus", inputs=inputs)
    except OutputRefused as e:
        raise OutputError(str(e)) from None
    if out.is_dir():
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("identity") != identity and not overwrite:
            raise OutputError(
                f"output {out} already holds a different corpus (other inputs or settings); choose another --out, "
                "or pass --overwrite to replace that corpus"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = out / f"{STAGING_PREFIX}{os.getpid()}"
        (staging / "data").mkdir(parents=True)
        probe = staging / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to output {out}: {e.strerror or e}") from None
    return staging


def finalize(out: Path, staging: Path, manifest: dict[str, Any], splits: Sequence[str]) -> None:
    """Move the staged corpus into place; the manifest goes last, so only a finished build has one."""
    marker = out / BUILDING_MARKER
    marker.write_text("a build is moving its files into place\n")
    (out / MANIFEST).unlink(missing_ok=True)
    (staging / "README.md").write_text(dataset_card(manifest, splits), encoding="utf-8")
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    os.replace(staging / "data", out / "data")
    os.replace(staging / "README.md", out / "README.md")
    tmp = staging / MANIFEST
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    marker.unlink()
    shutil.rmtree(staging, ignore_errors=True)
