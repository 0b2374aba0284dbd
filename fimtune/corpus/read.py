"""Reads a corpus folder written by `fimtune build-corpus`, refusing a missing, unfinished or other-version one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fimtune import CORPUS_FORMAT_VERSION
from fimtune.records import FimExample

REQUIRED_COLUMNS = ("id", "repo", "path", "language", "span_kind", "prefix", "middle", "suffix")


class CorpusReadError(Exception):
    """The corpus cannot be read; the message names the folder or file and says what to do."""


@dataclass(frozen=True)
class CorpusInfo:
    """A finished corpus folder: its manifest (and that manifest's hash, recorded by training)."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str

    def shards(self, split: str) -> list[Path]:
        return sorted((self.folder / "data").glob(f"{split}-*.parquet"))

    def iter_examples(self, split: str) -> Iterator[FimExample]:
        for shard in self.shards(split):
            try:
                table = pq.read_table(shard)
            except (OSError, pa.ArrowException, ValueError) as e:  # a truncated shard raises ArrowInvalid
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CorpusReadError(
                    f"corpus shard {shard} is not readable Parquet ({first}); rebuild the corpus"
                ) from None
            missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
            if missing:
                raise CorpusReadError(
                    f"corpus shard {shard} has no {', '.join(missing)} column; it was not written by "
                    "`fimtune build-corpus`: rebuild the corpus"
                )
            for row in table.to_pylist():
                yield FimExample.from_row(row)

    def examples(self, split: str) -> list[FimExample]:
        return list(self.iter_examples(split))


def open_corpus(folder: str | Path) -> CorpusInfo:
    root = Path(folder).expanduser()
    build = "build one with `fimtune build-corpus REPO --out DIR`"
    if not root.is_dir():
        raise CorpusReadError(f"corpus folder {root} does not exist; {build}")
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise CorpusReadError(
            f"{root} is not a fimtune corpus (no manifest.json, or its build did not finish); {build}"
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CorpusReadError(f"{manifest_path} is not valid JSON ({e}); rebuild the corpus") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != CORPUS_FORMAT_VERSION:
        raise CorpusReadError(
            f"corpus {root} has format version {version!r}, but this fimtune reads version {CORPUS_FORMAT_VERSION}; "
            "rebuild it with this fimtune's `fimtune build-corpus`"
        )
    return CorpusInfo(root, manifest, hashlib.sha256(raw).hexdigest())
