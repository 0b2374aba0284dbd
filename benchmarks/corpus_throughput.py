"""Corpus build throughput: tree-sitter parsing alone vs the whole `fimtune build-corpus`, per core.

Runs both on the same real code nobody here wrote (by default an installed package's sources from
site-packages) in one run and prints MB/s per core side by side with their ratio.

    python benchmarks/corpus_throughput.py                      # pip's sources from site-packages
    python benchmarks/corpus_throughput.py --source .venv/lib/python3.11/site-packages/transformers
    python benchmarks/corpus_throughput.py --source DIR --workers 2 --out benchmarks/results/corpus_throughput.md
    python benchmarks/corpus_throughput.py --skip-context --source DIR1 DIR2 ...   # one summary line per source

Targets: the whole build (context off) at least half the parse-only speed and at least 5 MB/s per core.

Each row also reports the CPU seconds it used (all its processes) and MB per CPU second: on a machine shared
with other work, wall time per core penalises the multi-process build more than the one-process parse, while
CPU time does not. "parse only, N processes" runs the parse on as many processes as the build, at the same
time, so it meets the same contention; the build's ratio to it is printed as well. --repeat N keeps the
fastest of N runs of each row.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from fimtune.config import CorpusConfig, FilterConfig, WalkConfig
from fimtune.corpus import filters, walk
from fimtune.corpus.pipeline import build_corpus
from fimtune.languages import parse


def default_source() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    for name in ("pip", "datasets", "transformers"):
        if (site / name).is_dir():
            return site / name
    raise SystemExit(f"no default source under {site}; pass --source DIR")


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (pool workers are joined by then)."""
    return sum(cpu_split())


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process (all its threads), and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def parse_items(root: Path, languages: set[str], filtered: bool = False) -> list[walk.WalkItem]:
    """The files the walk keeps; with filtered, only those the build's content filters keep too (the ones it
    parses: generated, minified and similar files are dropped before parsing)."""
    items = [it for it in walk.walk_repo(root, WalkConfig(), languages) if it.reason is None]
    if filtered:
        cfg = FilterConfig()
        items = [it for it in items if filters.decode_and_filter(it.path, (root / it.path).read_bytes(), cfg)[0]]
    return items


def _parse_share(job: tuple[Path, list[walk.WalkItem]]) -> int:
    root, items = job
    total = 0
    for it in items:
        data = (root / it.path).read_bytes()
        parse(it.language or "", data)
        total += len(data)
    return total


def parse_only(root: Path, languages: set[str], processes: int = 1, filtered: bool = False) -> tuple[int, float, float]:
    """Read and parse every file the walk would keep: (bytes, seconds, CPU seconds).

    On `processes` processes at once, each taking every processes-th file, when more than one. With filtered,
    only the files that pass the build's content filters.
    """
    items = parse_items(root, languages, filtered)
    cpu, start = cpu_seconds(), time.perf_counter()
    if processes <= 1:
        total = _parse_share((root, items))
    else:
        with mp.get_context("fork").Pool(processes) as pool:
            total = sum(pool.map(_parse_share, [(root, items[k::processes]) for k in range(processes)]))
            pool.close()
            pool.join()
    return total, time.perf_counter() - start, cpu_seconds() - cpu


def build(
    root: Path, workers: int, context: bool, languages: list[str]
) -> tuple[int, float, float, dict[str, Any], float]:
    """One `build_corpus` into a temporary folder: (bytes in, seconds, CPU seconds, manifest, CPU seconds of the
    main process alone: walk, dedup, split, context index and the Parquet writer's threads)."""
    out = Path(tempfile.mkdtemp(prefix="fimtune-bench-"))
    try:
        cfg = CorpusConfig(repos=[str(root)], out=str(out / "c"), workers=workers, languages=languages)
        cfg.context.enabled = context
        (own, children), start = cpu_split(), time.perf_counter()
        manifest = build_corpus(cfg, progress=False)
        secs = time.perf_counter() - start
        own_after, children_after = cpu_split()
        main = own_after - own
        return manifest["bytes_in"], secs, main + children_after - children, manifest, main
    finally:
        shutil.rmtree(out, ignore_errors=True)


def best_of(n: int, run: Any) -> Any:
    """The run with the fewest wall seconds (the second item of each result) among n."""
    return min((run() for _ in range(max(1, n))), key=lambda r: r[1])


def measure(root: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """All rows for one source: (the report's lines, the figures the summary over several sources shows)."""
    langs = set(args.languages)
    # (label, processes, bytes, seconds, CPU seconds, manifest)
    rows: list[tuple[str, int, int, float, float, dict[str, Any] | None]] = []
    main_cpu: dict[str, float] = {}  # build rows: CPU seconds of the main process
    parse_bytes, parse_s, parse_cpu = best_of(args.repeat, lambda: parse_only(root, langs))
    rows.append(("tree-sitter parse only", 1, parse_bytes, parse_s, parse_cpu, None))
    if args.workers > 1:
        nbytes, secs, cpu = best_of(args.repeat, lambda: parse_only(root, langs, args.workers))
        rows.append((f"tree-sitter parse only, {args.workers} processes", args.workers, nbytes, secs, cpu, None))
    for context in [False] if args.skip_context else [False, True]:
        nbytes, secs, cpu, manifest, main = best_of(
            args.repeat, lambda c=context: build(root, args.workers, c, args.languages)
        )
        label = f"whole build, context {'on' if context else 'off'}"
        rows.append((label, args.workers, nbytes, secs, cpu, manifest))
        main_cpu[label] = main

    def rate(row: tuple[str, int, int, float, float, Any]) -> float:
        return row[2] / 1e6 / row[3] / row[1]

    parse_rate, parse_cpu_rate = rate(rows[0]), rows[0][2] / 1e6 / rows[0][4]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    lines = [
        f"source: {shown(root)} ({parse_bytes / 1e6:.1f} MB of parsed source)",
        f"machine: {machine}; load average at the end {os.getloadavg()[0]:.1f}; best of {max(1, args.repeat)} run(s)",
        "",
        "| run | processes | MB in | seconds | MB/s per core | ratio to parse-only | examples "
        "| CPU s | MB per CPU s | ratio to parse-only (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        label, procs, nbytes, secs, cpu, manifest = row
        examples = sum(manifest["counts"]["examples"].values()) if manifest else "-"
        cpu_rate = nbytes / 1e6 / cpu
        lines.append(
            f"| {label} | {procs} | {nbytes / 1e6:.1f} | {secs:.2f} | {rate(row):.2f} | {rate(row) / parse_rate:.2f} "
            f"| {examples} | {cpu:.2f} | {cpu_rate:.2f} | {cpu_rate / parse_cpu_rate:.2f} |"
        )
    off = next(r for r in rows if r[0] == "whole build, context off")
    off_rate, off_cpu_ratio, off_manifest = rate(off), (off[2] / 1e6 / off[4]) / parse_cpu_rate, off[5]
    assert off_manifest is not None  # build rows carry their manifest
    ratio, ratio_met, speed_met = off_rate / parse_rate, off_rate >= 0.5 * parse_rate, off_rate >= 5
    lines += [
        "",
        f"targets: whole build (context off) >= 0.5 x parse-only: {'met' if ratio_met else 'NOT met'} ({ratio:.2f}); "
        f">= 5 MB/s per core: {'met' if speed_met else 'NOT met'} ({off_rate:.2f})",
    ]
    if args.workers > 1:
        same = rate(rows[1])
        lines.append(
            f"whole build (context off) vs parse only on {args.workers} processes: {off_rate / same:.2f}; "
            f"by CPU time: {off_cpu_ratio:.2f}"
        )
    # How much of the build parsing is, on the files it keeps: the ratio above also credits the build with the
    # bytes its filters drop before parsing (generated files, say), which differ from one source to the next.
    kept_bytes, _, kept_cpu = best_of(args.repeat, lambda: parse_only(root, langs, filtered=True))
    lines.append(
        f"files the content filters keep: {kept_bytes / 1e6:.1f} of {parse_bytes / 1e6:.1f} MB; parsing them alone "
        f"takes {kept_cpu:.2f} CPU s, {kept_cpu / off[4]:.2f} of the whole build's (context off)"
    )
    for label, _procs, _nbytes, _secs, cpu, manifest in rows:
        if manifest:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in manifest["stage_seconds"].items())
            lines.append(f"stage seconds, {label}: {stages}")
            lines.append(
                f"CPU seconds, {label}: workers {cpu - main_cpu[label]:.2f}, main process {main_cpu[label]:.2f} "
                "(walk, dedup, split, context index, Parquet writer threads)"
            )
    summary = {
        "source": shown(root),
        "mb": parse_bytes / 1e6,
        "kept_mb": kept_bytes / 1e6,
        "files": off_manifest["counts"]["files_kept"],
        "examples": sum(off_manifest["counts"]["examples"].values()),
        "parse_rate": parse_rate,
        "build_rate": off_rate,
        "ratio": ratio,
        "cpu_ratio": off_cpu_ratio,
        "parse_share": kept_cpu / off[4],
        "met": ratio_met and speed_met,
    }
    return lines, summary


def shown(root: Path) -> str:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    return f"site-packages/{root.relative_to(site)}" if root.is_relative_to(site) else str(root)


def summary_table(summaries: list[dict[str, Any]]) -> list[str]:
    """One line per source: the two targets and how much of the build's CPU time parsing the kept files takes."""
    lines = [
        "| source | MB parsed | MB kept | files kept | examples | parse-only MB/s | build MB/s per core "
        "| ratio | ratio (CPU) | parse share of build CPU | both targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['source']} | {s['mb']:.1f} | {s['kept_mb']:.1f} | {s['files']} | {s['examples']} "
            f"| {s['parse_rate']:.2f} | {s['build_rate']:.2f} | {s['ratio']:.2f} | {s['cpu_ratio']:.2f} "
            f"| {s['parse_share']:.2f} | {'met' if s['met'] else 'NOT met'} |"
        )
    met = sum(s["met"] for s in summaries)
    lines += ["", f"both targets met on {met} of {len(summaries)} sources"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--source", type=Path, nargs="+", default=None, help="folders of real code (default: one from site-packages)"
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--languages", nargs="*", default=[])
    ap.add_argument("--skip-context", action="store_true", help="do not run the build with context on")
    ap.add_argument("--repeat", type=int, default=1, help="keep the fastest of N runs of each row")
    ap.add_argument("--out", type=Path, help="also write the results as Markdown here")
    args = ap.parse_args()
    roots = [r.resolve() for r in args.source or [default_source()]]

    blocks, summaries = [], []
    for root in roots:
        lines, summary = measure(root, args)
        print("\n".join(lines) + "\n", flush=True)
        blocks.append("\n".join(lines))
        summaries.append(summary)
    if len(roots) > 1:
        table = "\n".join(summary_table(summaries))
        print(table)
        blocks.insert(0, table)
    if args.out:
        args.out.write_text(
            f"# Corpus build throughput\n\n`{' '.join(['python', *sys.argv])}`\n\n" + "\n\n".join(blocks) + "\n"
        )


if __name__ == "__main__":
    main()
