"""Cross-file context: index build time, retrieval latency, corpus build cost and identifier recall vs random.

Runs on real code nobody here wrote (by default the installed `transformers` sources from site-packages, about
2,900 files; 1,600 once the corpus content filters drop the generated ones) and prints every number in one table:

- index: `context.index_file` over every kept file (one process; `--no-filters`: every file the walk yields)
  and `RepoIndex.build`, with peak RSS;
- latency: `RepoIndex.retrieve` for N cursors at line starts of sampled files (wall and process CPU time);
- corpus: `build_corpus` with context off and on (all cores, in a fresh process), seconds, ratio and stages;
- quality: for M held-out middles cut by `spans.choose_spans`, the share of the middle's identifiers that occur
  in the retrieved context, against random windows of other files of the same repository with the same
  snippet sizes. Three identifier sets: all (minus Python keywords); those not in the last 20 lines of the
  prefix (what the nearby code does not already show); those nowhere else in the file (neither prefix nor
  suffix: only cross-file context can supply them). Also per snippet kind, and how often the middle appears
  verbatim in the context (a copy of the answer).

    python benchmarks/context_retrieval.py                          # transformers from site-packages
    python benchmarks/context_retrieval.py --source DIR --out benchmarks/results/context_retrieval.md
    python benchmarks/context_retrieval.py --no-filters --skip-corpus    # index every file, skip the builds

Target: retrieval p95 at most 5 ms on a 2-core x86-64 CPU.
"""

from __future__ import annotations

import argparse
import keyword
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from fimtune.config import ContextConfig, CorpusConfig, FilterConfig, SpanConfig, WalkConfig
from fimtune.context import FileIndex, RepoIndex, index_file, tokenize
from fimtune.corpus import filters, spans, walk
from fimtune.corpus.pipeline import build_corpus
from fimtune.records import Snippet, SourceFile

KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
LOCAL_LINES = 20  # "nearby code": this many lines of prefix before the cursor
LATENCY_TARGET_MS = 5.0
# A middle this long (whitespace squashed) found whole in the context means the context holds a copy of it.
VERBATIM_MIN_CHARS = 40


def default_source() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    if (site / "transformers").is_dir():
        return site / "transformers"
    raise SystemExit(f"no transformers under {site}; pass --source DIR (a real repository of 2,000+ files)")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_sources(root: Path, content_filters: bool) -> list[SourceFile]:
    """Every file the corpus walk and content filters keep, as the build would see it (no secret redaction).

    Without content filters: every readable UTF-8 file the walk yields (generated and minified files too).
    """
    out: list[SourceFile] = []
    fcfg = FilterConfig()
    for item in walk.walk_repo(root, WalkConfig(), ()):
        if item.reason is not None:
            continue
        data, _ = walk.read_file(root, item)
        if data is None:
            continue
        if content_filters:
            text, _ = filters.decode_and_filter(item.path, data, fcfg)
        else:
            text = data.removeprefix(filters.BOM).decode("utf-8", "replace")
        if text is not None:
            out.append(SourceFile(root.name, item.path, item.language or "", text))
    return out


def tail_lines(text: str, n: int) -> str:
    return "\n".join(text.split("\n")[-n:])


_LINE_STARTS: dict[str, list[int]] = {}


def line_starts(source: SourceFile) -> list[int]:
    """Offsets (in characters) of every line start after the first, cached per file."""
    found = _LINE_STARTS.get(source.path)
    if found is None:
        found = _LINE_STARTS[source.path] = [m.end() for m in re.finditer("\n", source.text)]
    return found


def format_stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {secs:.1f}" for name, secs in stages.items())


def squash(text: str) -> str:
    return " ".join(text.split())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------------------------------------------
# Latency


def sample_cursors(sources: list[SourceFile], n: int, rng: random.Random) -> list[tuple[SourceFile, str, str]]:
    """n cursors at a line start strictly inside a file (prefix and suffix both non-empty)."""
    out: list[tuple[SourceFile, str, str]] = []
    candidates = [s for s in sources if s.text.count("\n") >= 2]
    while len(out) < n:
        source = rng.choice(candidates)
        at = rng.choice([a for a in line_starts(source) if a < len(source.text)])
        out.append((source, source.text[:at], source.text[at:]))
    return out


def time_retrieval(index: RepoIndex, cursors: list[tuple[SourceFile, str, str]]) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for source, prefix, suffix in cursors:
        w0, c0 = time.perf_counter(), time.process_time()
        index.retrieve(source.path, source.language, prefix, suffix)
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return wall, cpu


# --------------------------------------------------------------------------------------------------------------
# Quality


@dataclass(slots=True)
class Middle:
    source: SourceFile
    prefix: str
    middle: str
    suffix: str


def sample_middles(sources: list[SourceFile], m: int, rng: random.Random, seed: int) -> list[Middle]:
    """m held-out middles, each from a different file, cut as the corpus cuts them (empty middles skipped)."""
    out: list[Middle] = []
    cfg = SpanConfig()
    for source in rng.sample(sources, len(sources)):
        if len(out) >= m:
            break
        cut = spans.choose_spans(source, cfg, random.Random(f"{seed}\x00{source.path}"))
        usable = [s for s in cut.spans if s.end > s.start]
        if not usable:
            continue
        span = rng.choice(usable)
        data = source.data
        out.append(
            Middle(source, data[: span.start].decode(), data[span.start : span.end].decode(), data[span.end :].decode())
        )
    return out


def identifier_sets(m: Middle) -> dict[str, set[str]]:
    every = set(tokenize(m.middle)) - KEYWORDS
    local = every - set(tokenize(tail_lines(m.prefix, LOCAL_LINES)))
    elsewhere = every - set(tokenize(m.prefix)) - set(tokenize(m.suffix))
    return {"all": every, "local": local, "file": elsewhere}


SET_LABELS = {
    "all": "all identifiers of the middle",
    "local": f"not in the last {LOCAL_LINES} prefix lines",
    "file": "nowhere else in the file",
}
# Recall per snippet kind is reported for this identifier set.
KINDS = ("definition", "similar")
KIND_SET = "local"


def random_windows(sizes: list[int], own: str, by_size: list[SourceFile], rng: random.Random) -> str:
    """For each retrieved snippet size, a window of exactly that many characters from a random other file."""
    parts: list[str] = []
    for size in sizes:
        pool = [s for s in by_size if len(s.text) >= size and s.path != own]
        source = rng.choice(pool)
        text = source.text
        at = rng.choice([0, *(a for a in line_starts(source) if a <= len(text) - size)])
        parts.append(text[at : at + size])
    return "\n".join(parts)


def measure_quality(
    index: RepoIndex, sources: list[SourceFile], middles: list[Middle], rng: random.Random
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    per_set: dict[str, dict[str, list[float]]] = {
        k: {"ret": [], "rnd": [], "hit": [], "rhit": [], "n": []} for k in SET_LABELS
    }
    chars: list[int] = []
    kind_chars: dict[str, list[int]] = {k: [] for k in KINDS}
    by_kind: dict[str, dict[str, list[float]]] = {k: {"ret": [], "rnd": []} for k in KINDS}
    empty = verbatim_n = verbatim_ret = verbatim_rnd = 0
    for m in middles:
        snippets: tuple[Snippet, ...] = index.retrieve(m.source.path, m.source.language, m.prefix, m.suffix)
        sizes = [len(s.text) for s in snippets]
        chars.append(sum(sizes))
        empty += not snippets
        retrieved = "\n".join(s.text for s in snippets)
        baseline = random_windows(sizes, m.source.path, sources, rng)
        flat = squash(m.middle)
        if len(flat) >= VERBATIM_MIN_CHARS:
            verbatim_n += 1
            verbatim_ret += flat in squash(retrieved)
            verbatim_rnd += flat in squash(baseline)
        got, base = set(tokenize(retrieved)), set(tokenize(baseline))
        id_sets = identifier_sets(m)
        for kind in KINDS:
            part = [s.text for s in snippets if s.kind == kind]
            kind_chars[kind].append(sum(map(len, part)))
            ids = id_sets[KIND_SET]
            if ids:
                part_base = random_windows([len(t) for t in part], m.source.path, sources, rng)
                by_kind[kind]["ret"].append(len(ids & set(tokenize("\n".join(part)))) / len(ids))
                by_kind[kind]["rnd"].append(len(ids & set(tokenize(part_base))) / len(ids))
        for key, ids in id_sets.items():
            if not ids:
                continue
            acc = per_set[key]
            acc["ret"].append(len(ids & got) / len(ids))
            acc["rnd"].append(len(ids & base) / len(ids))
            acc["hit"].append(len(ids & got))
            acc["rhit"].append(len(ids & base))
            acc["n"].append(len(ids))
    results: dict[str, dict[str, float]] = {}
    for key, acc in per_set.items():
        total = sum(acc["n"]) or 1
        results[key] = {
            "middles": len(acc["n"]),
            "ids": sum(acc["n"]),
            "ret": statistics.fmean(acc["ret"]) if acc["ret"] else 0.0,
            "rnd": statistics.fmean(acc["rnd"]) if acc["rnd"] else 0.0,
            "ret_pooled": sum(acc["hit"]) / total,
            "rnd_pooled": sum(acc["rhit"]) / total,
        }
    summary: dict[str, float] = {
        "mean_chars": statistics.fmean(chars) if chars else 0.0,
        "empty": empty / max(1, len(middles)),
        "verbatim_n": verbatim_n,
        "verbatim_ret": verbatim_ret / max(1, verbatim_n),
        "verbatim_rnd": verbatim_rnd / max(1, verbatim_n),
    }
    for kind in KINDS:
        summary[f"{kind}_chars"] = statistics.fmean(kind_chars[kind]) if kind_chars[kind] else 0.0
        summary[f"{kind}_ret"] = statistics.fmean(by_kind[kind]["ret"]) if by_kind[kind]["ret"] else 0.0
        summary[f"{kind}_rnd"] = statistics.fmean(by_kind[kind]["rnd"]) if by_kind[kind]["rnd"] else 0.0
    return results, summary


# --------------------------------------------------------------------------------------------------------------
# Corpus build


@dataclass(slots=True)
class Build:
    seconds: float
    examples: int
    stages: dict[str, float]


def corpus_build(root: Path, context: bool) -> Build:
    out = Path(tempfile.mkdtemp(prefix="fimtune-bench-"))
    try:
        cfg = CorpusConfig(repos=[str(root)], out=str(out / "c"), workers=os.cpu_count() or 1)
        cfg.context.enabled = context
        start = time.perf_counter()
        manifest = build_corpus(cfg, progress=False)
        secs = time.perf_counter() - start
        return Build(secs, sum(manifest["counts"]["examples"].values()), manifest["stage_seconds"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _builds_child(root: Path, conn: Connection) -> None:
    conn.send([corpus_build(root, context) for context in (False, True)])
    conn.close()


def corpus_builds(root: Path) -> list[Build]:
    """Context off, then on, in a fresh process: its forked workers and memory do not mix with this one's."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_builds_child, args=(root, send))
    child.start()
    send.close()
    builds: list[Build] = receive.recv()
    child.join()
    return builds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="real repository (default: transformers, site-packages)")
    ap.add_argument(
        "--build-source", type=Path, default=None, help="repository for the corpus builds (default: --source)"
    )
    ap.add_argument("--cursors", type=int, default=500, help="latency samples (N)")
    ap.add_argument("--middles", type=int, default=500, help="held-out middles for recall (M)")
    ap.add_argument("--sample-language", default="python", help="files cursors and middles are drawn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-filters",
        action="store_true",
        help="index every file the walk yields, also those the content filters drop (generated, minified)",
    )
    ap.add_argument("--skip-corpus", action="store_true", help="do not run the two corpus builds")
    ap.add_argument("--max-postings", type=int, default=None, help="context.max_postings (default: the default)")
    ap.add_argument("--out", type=Path, help="also write the results as Markdown here")
    args = ap.parse_args()
    root = (args.source or default_source()).resolve()
    build_root = (args.build_source or root).resolve()
    load_start = os.getloadavg()[0]
    cfg = ContextConfig() if args.max_postings is None else ContextConfig(max_postings=args.max_postings)

    builds = [] if args.skip_corpus else corpus_builds(build_root)

    sources = load_sources(root, not args.no_filters)
    nbytes = sum(len(s.data) for s in sources)
    rss_loaded = peak_rss_mib()
    start = time.perf_counter()
    file_indexes: list[FileIndex] = [index_file(s, cfg) for s in sources]
    index_s = time.perf_counter() - start
    rss_files = peak_rss_mib()
    start = time.perf_counter()
    index = RepoIndex.build(file_indexes, cfg)
    build_s = time.perf_counter() - start
    rss_index = peak_rss_mib()
    n_windows = sum(len(fi.windows) for fi in file_indexes)
    n_defs = sum(len(fi.definitions) for fi in file_indexes)
    del file_indexes

    samples = [s for s in sources if s.language == args.sample_language]
    if not samples:
        raise SystemExit(f"no {args.sample_language} files under {root}; pass --sample-language")
    rng = random.Random(args.seed)
    cursors = sample_cursors(samples, args.cursors, rng)
    index.retrieve(cursors[0][0].path, cursors[0][0].language, cursors[0][1], cursors[0][2])  # warm numpy paths
    wall, cpu = time_retrieval(index, cursors)

    middles = sample_middles(samples, args.middles, rng, args.seed)
    quality, summary = measure_quality(index, sources, middles, rng)

    load_end = os.getloadavg()[0]

    p95 = percentile(wall, 0.95)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}; "
        f"shared with other jobs (1-min load average {load_start:.2f} at start, {load_end:.2f} at end)"
    )
    kept_label = "files (content filters off)" if args.no_filters else "kept files"
    lines = [
        f"source: {root} ({len(sources)} {kept_label}, {nbytes / 1e6:.1f} MB; {len(samples)} {args.sample_language} "
        f"files sampled)",
        f"machine: {machine}",
        f"context config: defaults (max_chars {cfg.max_chars}, max_snippets {cfg.max_snippets}, "
        f"window_lines {cfg.window_lines}, stride {cfg.window_stride}, query_lines {cfg.query_lines})",
        "",
        "| measure | value | baseline | ratio |",
        "|---|---:|---:|---:|",
        f"| index_file over all {kept_label}, 1 process (s; MB/s) | {index_s:.2f}; {nbytes / 1e6 / index_s:.2f} | | |",
        f"| RepoIndex.build, {n_windows} windows, {n_defs} definitions (s) | {build_s:.2f} | | |",
        f"| peak RSS: sources loaded / + file indexes / + RepoIndex (MiB) | {rss_loaded:.0f} / {rss_files:.0f} / "
        f"{rss_index:.0f} | | |",
        f"| retrieve, wall p50 / p95 / max over {len(wall)} cursors (ms) | {percentile(wall, 0.5):.2f} / "
        f"{p95:.2f} / {max(wall):.2f} | | |",
        f"| retrieve, process CPU p50 / p95 / max (ms) | {percentile(cpu, 0.5):.2f} / "
        f"{percentile(cpu, 0.95):.2f} / {max(cpu):.2f} | | |",
    ]
    if builds:
        off, on = builds
        lines.append(
            f"| build_corpus {build_root.name}, {os.cpu_count()} workers, {on.examples} examples: context on vs "
            f"off (s) | {on.seconds:.2f} | {off.seconds:.2f} | {on.seconds / off.seconds:.2f} |"
        )
        lines.append(
            f"| build_corpus stage seconds, context on vs off | {format_stages(on.stages)} | "
            f"{format_stages(off.stages)} | |"
        )
    lines.append(
        f"| retrieved context per middle: mean chars; share of middles with none | {summary['mean_chars']:.0f}; "
        f"{summary['empty']:.1%} | | |"
    )
    for key, label in SET_LABELS.items():
        q = quality[key]
        ratio = q["ret"] / q["rnd"] if q["rnd"] else float("inf")
        lines.append(
            f"| recall, {label} ({q['middles']:.0f} middles, {q['ids']:.0f} ids): retrieved vs random, mean "
            f"(pooled) | {q['ret']:.3f} ({q['ret_pooled']:.3f}) | {q['rnd']:.3f} ({q['rnd_pooled']:.3f}) | "
            f"{ratio:.2f} |"
        )
    for kind in KINDS:
        k_ret, k_rnd = summary[f"{kind}_ret"], summary[f"{kind}_rnd"]
        lines.append(
            f"| recall, {SET_LABELS[KIND_SET]}, from the {kind} snippets only (mean "
            f"{summary[f'{kind}_chars']:.0f} chars): retrieved vs random | {k_ret:.3f} | {k_rnd:.3f} | "
            f"{k_ret / k_rnd if k_rnd else float('inf'):.2f} |"
        )
    v_ret, v_rnd = summary["verbatim_ret"], summary["verbatim_rnd"]
    lines.append(
        f"| middles of {VERBATIM_MIN_CHARS}+ chars found verbatim in the context ({summary['verbatim_n']:.0f} middles)"
        f" | {v_ret:.1%} | {v_rnd:.1%} | {v_ret / v_rnd if v_rnd else float('inf'):.2f} |"
    )
    lines += [
        "",
        f"target: retrieve p95 <= {LATENCY_TARGET_MS:g} ms: {'met' if p95 <= LATENCY_TARGET_MS else 'NOT met'} "
        f"({p95:.2f} ms wall)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# Cross-file context retrieval\n\n`{' '.join(['python', *sys.argv])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
