"""Writes a corpus folder in the Hugging Face dataset layout: data/<split>-NNNNN-of-NNNNN.parquet, README, manifest.

Everything is written into a staging folder first and moved into place at the end, with manifest.json
last: a build that is interrupted never leaves a shard or a manifest that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fimtune.records import FimExample

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

MANIFEST = "manifest.json"
BUILDING_MARKER = ".fimtune-building"
STAGING_PREFIX = ".staging-"


class OutputError(Exception):
    """The output folder cannot be used; the message says why and what to do."""


def shard_names(split: str, n_shards: int) -> list[str]:
    return [f"{split}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


def write_shard(folder: Path, name: str, examples: Sequence[FimExample]) -> None:
    """Write one Parquet shard atomically (deterministic bytes for the same examples)."""
    columns: dict[str, list[Any]] = {n: [getattr(ex, n) for ex in examples] for n in SCHEMA.names if n != "context"}
    columns["context"] = [[s.to_dict() for s in ex.context] for ex in examples]
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    tmp = folder / (name + ".partial")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1000)
    os.replace(tmp, folder / name)


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


def prepare_output(out: Path, identity: dict[str, Any], overwrite: bool) -> Path:
    """Check the output folder can take this corpus; return a fresh staging folder inside it.

    A folder is usable when it is absent or empty, holds a corpus built with the same identity (the same
    command again), holds what an interrupted build left, or `overwrite` is set.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    if out.is_dir():
        manifest = read_manifest(out)
        entries = [p.name for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX)]
        if manifest is not None:
            if manifest.get("identity") != identity and not overwrite:
                raise OutputError(
                    f"output {out} already holds a different corpus (other inputs or settings); "
                    "choose another --out or pass --overwrite"
                )
        elif entries and BUILDING_MARKER not in entries and not overwrite:
            raise OutputError(
                f"output {out} is not empty and holds no fimtune corpus; choose another --out or pass --overwrite"
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
