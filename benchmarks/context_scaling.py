"""How the corpus build's context stage grows with the repository: N small generated files, N = 10,000 and 50,000.

Each file is a small Python module (an import of a neighbour, two functions, a class) with its own names and
some shared ones, the shape of a large repository of small files. Both sizes run `build_corpus` with context
on, in one run, and the table gives the stage seconds side by side with their ratio.

    python benchmarks/context_scaling.py
    python benchmarks/context_scaling.py --sizes 2000,10000 --out benchmarks/results/context_scaling.md

Target: the context stage at 50,000 files takes at most 6x its time at 10,000 (5x the files). The repository
index is filled while the files come in, so its cost is in the "files" stage: the whole build's ratio is held
to the same bound.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fimtune.config import CorpusConfig
from fimtune.corpus.pipeline import build_corpus

SHARED = ["config", "session", "record", "payload", "result", "client", "handler", "value", "items", "cache"]


def module(i: int, n: int, rng: random.Random) -> str:
    a, b = rng.sample(SHARED, 2)
    other = rng.randrange(n)
    return (
        f'"""Module {i}."""\n\nfrom pkg{other % 50}.mod{other} import helper_{other}\n\n\n'
        f"def helper_{i}({a}, {b}_{i % 97}):\n"
        f"    total_{i} = helper_{other}({a})\n"
        f"    for item in {b}_{i % 97}:\n"
        f"        total_{i} += item.{a}_{i % 13}\n"
        f"    return total_{i}\n\n\n"
        f"class Thing{i}:\n"
        f"    def __init__(self, {a}):\n"
        f"        self.{a} = {a}\n"
        f"        self.count_{i % 31} = 0\n\n"
        f"    def run(self, {b}):\n"
        f"        self.count_{i % 31} += 1\n"
        f"        return helper_{i}(self.{a}, {b})\n"
    )


def make_repo(root: Path, n: int) -> int:
    rng = random.Random(n)
    size = 0
    for i in range(n):
        folder = root / f"pkg{i % 50}"
        folder.mkdir(parents=True, exist_ok=True)
        text = module(i, n, rng)
        (folder / f"mod{i}.py").write_text(text)
        size += len(text)
    for k in range(50):
        (root / f"pkg{k}" / "__init__.py").write_text("")
    return size


def run(n: int, workers: int, max_postings: int | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fimtune-scale-"))
    try:
        repo = tmp / "repo"
        size = make_repo(repo, n)
        cfg = CorpusConfig(repos=[str(repo)], out=str(tmp / "out"), workers=workers, languages=["python"])
        if max_postings is not None:
            cfg.context.max_postings = max_postings
        start = time.perf_counter()
        manifest = build_corpus(cfg, progress=False)
        return {
            "files": n,
            "mb": size / 1e6,
            "seconds": time.perf_counter() - start,
            "examples": sum(manifest["counts"]["examples"].values()),
            "stages": manifest["stage_seconds"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000", help="file counts, comma-separated (default 10000,50000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-postings", type=int, default=None, help="context.max_postings (default: the default)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [run(n, args.workers, args.max_postings) for n in sizes]
    base = rows[0]
    lines = [
        "# Context stage against repository size",
        "",
        f"`python benchmarks/context_scaling.py --sizes {args.sizes}`",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{args.workers} workers",
        "",
        "| files | MB | examples | build s | context stage s | files ratio | build ratio | context ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ctx = r["stages"].get("context", 0.0)
        lines.append(
            f"| {r['files']} | {r['mb']:.1f} | {r['examples']} | {r['seconds']:.1f} | {ctx:.2f} | "
            f"{r['files'] / base['files']:.1f} | {r['seconds'] / base['seconds']:.2f} | "
            f"{ctx / max(base['stages'].get('context', 0.0), 1e-9):.2f} |"
        )
    for r in rows:
        lines.append(
            f"\nstage seconds, {r['files']} files: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        )
    last = rows[-1]["stages"].get("context", 0.0) / max(base["stages"].get("context", 0.0), 1e-9)
    bound = 6.0 * rows[-1]["files"] / base["files"] / 5.0
    whole = rows[-1]["seconds"] / base["seconds"]
    lines.append(
        f"\ntarget: context stage ratio at most {bound:.1f}: {'met' if last <= bound else 'not met'} ({last:.2f}); "
        f"whole build: {'met' if whole <= bound else 'not met'} ({whole:.2f})"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
