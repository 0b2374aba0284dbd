"""Corpus build throughput: tree-sitter parsing alone vs the whole `fimtune build-corpus`, per core.

Runs both on the same real code nobody here wrote (by default an installed package's sources from
site-packages) in one run and prints MB/s per core side by side with their ratio.

    python benchmarks/corpus_throughput.py                      # transformers' sources from site-packages
    python benchmarks/corpus_throughput.py --source DIR --workers 2 --out benchmarks/results/corpus_throughput.md

Targets (issue 2): the whole build at least half the parse-only speed and at least 5 MB/s per core.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from fimtune.config import CorpusConfig, WalkConfig
from fimtune.corpus import walk
from fimtune.corpus.pipeline import build_corpus
from fimtune.languages import parse


def default_source() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    for name in ("pip", "datasets", "transformers"):
        if (site / name).is_dir():
            return site / name
    raise SystemExit(f"no default source under {site}; pass --source DIR")


def parse_only(root: Path, languages: set[str]) -> tuple[int, float]:
    """Read and parse every file the walk would keep, in one process: (bytes, seconds)."""
    items = [it for it in walk.walk_repo(root, WalkConfig(), languages) if it.reason is None]
    total, start = 0, time.perf_counter()
    for it in items:
        data = (root / it.path).read_bytes()
        parse(it.language or "", data)
        total += len(data)
    return total, time.perf_counter() - start


def build(root: Path, workers: int, context: bool, languages: list[str]) -> tuple[int, float, dict]:
    out = Path(tempfile.mkdtemp(prefix="fimtune-bench-"))
    try:
        cfg = CorpusConfig(repos=[str(root)], out=str(out / "c"), workers=workers, languages=languages)
        cfg.context.enabled = context
        start = time.perf_counter()
        manifest = build_corpus(cfg, progress=False)
        return manifest["bytes_in"], time.perf_counter() - start, manifest
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="folder of real code (default: from site-packages)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--languages", nargs="*", default=[])
    ap.add_argument("--skip-context", action="store_true", help="do not run the build with context on")
    ap.add_argument("--out", type=Path, help="also write the results as Markdown here")
    args = ap.parse_args()
    root = (args.source or default_source()).resolve()
    langs = set(args.languages)

    parse_bytes, parse_s = parse_only(root, langs)
    parse_rate = parse_bytes / 1e6 / parse_s
    rows = [("tree-sitter parse only", 1, parse_bytes, parse_s, parse_rate, None)]
    runs = [False] if args.skip_context else [False, True]
    for context in runs:
        nbytes, secs, manifest = build(root, args.workers, context, args.languages)
        rate = nbytes / 1e6 / secs / args.workers
        label = f"whole build, context {'on' if context else 'off'}"
        rows.append((label, args.workers, nbytes, secs, rate, manifest))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    lines = [
        f"source: {root} ({parse_bytes / 1e6:.1f} MB of parsed source)",
        f"machine: {machine}",
        "",
        "| run | processes | MB in | seconds | MB/s per core | ratio to parse-only | examples |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, procs, nbytes, secs, rate, manifest in rows:
        examples = sum(manifest["counts"]["examples"].values()) if manifest else "-"
        ratio = rate / parse_rate
        lines.append(f"| {label} | {procs} | {nbytes / 1e6:.1f} | {secs:.2f} | {rate:.2f} | {ratio:.2f} | {examples} |")
    off = rows[1][4]
    lines += [
        "",
        f"targets: whole build (context off) >= 0.5 x parse-only: {'met' if off >= 0.5 * parse_rate else 'NOT met'} "
        f"({off / parse_rate:.2f}); >= 5 MB/s per core: {'met' if off >= 5 else 'NOT met'} ({off:.2f})",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# Corpus build throughput\n\n`{' '.join(['python', *sys.argv])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
