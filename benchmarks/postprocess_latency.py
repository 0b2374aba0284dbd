"""Stop rules: time of `postprocess` per completion on real files and on a 5 MB file, with and without the syntax check.

Runs on real code nobody here wrote (the installed `transformers` sources from site-packages, about 2,900 Python
files). For each cursor (a line start inside a file, drawn with random.Random(seed)) the raw completion is what a
model that over-generates would return: the rest of the cursor's line and 1-8 lines after it (the middle, cut
like the corpus's whole-line middles), followed by about 20 lines more, so the block, repeat and suffix rules have
something to cut. Prints one table:

- per call, wall p50 / p95 / max (ms) on files as they are, all rules on;
- the same with the syntax check off (what the lexing rules alone cost);
- the same on one 5 MB file (real files concatenated), cursors in its middle;
- side by side: one tree-sitter parse of the whole 5 MB file, what a check without a window would pay;
- how often the processed text equals the true middle (rules on vs off), and how often each rule cut;
- how often the syntax check rejects the true middle, and the middle cut at a random character.

    python benchmarks/postprocess_latency.py
    python benchmarks/postprocess_latency.py --cursors 1000 --out benchmarks/results/postprocess_latency.md

Target: a few ms per call on normal files; the language server's whole overhead budget is 15 ms p95.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

from fimtune.eval.metrics import exact_match
from fimtune.languages import parse
from fimtune.postprocess import WINDOW_LINES, StopRules, adds_syntax_errors, postprocess

BIG_BYTES = 5_000_000


def default_source() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    if (site / "transformers").is_dir():
        return site / "transformers"
    raise SystemExit(f"no transformers under {site}; pass --source DIR (a folder of Python files)")


def load_files(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.count("\n") >= 20:
            out.append(text)
    return out


def cursors(text: str, rng: random.Random, n: int, lo: int = 0, hi: int | None = None) -> list[tuple[str, str, str]]:
    """n (prefix, suffix, raw completion) triples cut like the corpus's whole-line middles: the cursor after the
    indentation of a line, the middle up to the end of the content of 1-8 lines, the suffix from the newline on.
    The raw completion over-generates: the middle, then the 20 lines after it."""
    starts = [0] + [i + 1 for i, c in enumerate(text[lo:hi], lo) if c == "\n"]
    starts = [s for s in starts if lo <= s < (hi or len(text))]
    out = []
    for _ in range(n):
        k = rng.randrange(1, max(2, len(starts) - 30))
        cut = starts[k]
        cut += len(text[cut:]) - len(text[cut:].lstrip(" \t"))  # after the indentation, as an editor puts it
        end = starts[min(k + rng.randint(1, 8), len(starts) - 1)] - 1  # the newline ending the middle's last line
        end = max(cut, len(text[:end].rstrip()))
        overrun = starts[min(k + 30, len(starts) - 1)]
        out.append((text[:cut], text[end:], text[cut:overrun]))
        MIDDLES[out[-1][2]] = text[cut:end]
    return out


MIDDLES: dict[str, str] = {}  # raw completion -> the true middle it starts with


def timed(cases: list[tuple[str, str, str]], rules: StopRules) -> tuple[list[float], list[float], Counter[str]]:
    """Wall and process CPU milliseconds per call, and the cuts made ("exact" counts outputs equal to the middle)."""
    wall: list[float] = []
    cpu: list[float] = []
    cuts: Counter[str] = Counter()
    postprocess(cases[0][2], cases[0][0], cases[0][1], "python", rules)  # warm the parser and the caches
    for prefix, suffix, raw in cases:
        start, start_cpu = time.perf_counter(), time.process_time()
        out = postprocess(raw, prefix, suffix, "python", rules)
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
        cuts.update(out.cuts)
        cuts["exact"] += exact_match(out.text, MIDDLES[raw]) == 1.0
    return wall, cpu, cuts


def syntax_verdicts(cases: list[tuple[str, str, str]], rng: random.Random) -> tuple[int, int, int]:
    """How often the syntax check rejects the true middle and a copy cut at a random character (what a generation
    stopped by the token limit looks like): (cases, true middles rejected, cut middles rejected)."""
    n = true_rejected = cut_rejected = 0
    for prefix, suffix, raw in cases:
        middle = MIDDLES[raw]
        if len(middle.strip()) < 10:
            continue
        n += 1
        true_rejected += adds_syntax_errors(prefix, middle, suffix, "python")
        cut_rejected += adds_syntax_errors(prefix, middle[: rng.randrange(1, len(middle))], suffix, "python")
    return n, true_rejected, cut_rejected


def pct(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1] if len(times) > 1 else times[0]


def row(label: str, wall: list[float], cpu: list[float]) -> str:
    def cell(t: list[float]) -> str:
        return f"{pct(t, 50):.2f} / {pct(t, 95):.2f} / {max(t):.2f}"

    return f"| {label} | {cell(wall)} | {cell(cpu)} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--cursors", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    root = args.source or default_source()
    files = load_files(root)
    rng = random.Random(args.seed)
    picked = [rng.choice(files) for _ in range(args.cursors)]
    normal = [c for text in picked for c in cursors(text, rng, 1)]
    sizes = sorted(len(t) for t in picked)

    big_parts: list[str] = []
    total = 0
    for text in files:
        if total >= BIG_BYTES:
            break
        big_parts.append(text)
        total += len(text)
    big = "\n".join(big_parts)
    big_cases = cursors(big, rng, args.cursors // 5, len(big) // 4, 3 * len(big) // 4)

    load = os.getloadavg()[0]
    w_all, c_all, cuts = timed(normal, StopRules())
    w_nosyntax, c_nosyntax, _ = timed(normal, StopRules(syntax=False))
    w_big, c_big, big_cuts = timed(big_cases, StopRules())
    _, _, raw_cuts = timed(normal, StopRules.off())
    n_syntax, true_rejected, cut_rejected = syntax_verdicts(normal, random.Random(args.seed))
    start = time.perf_counter()
    tree = parse("python", big.encode("utf-8"))
    full_parse_ms = (time.perf_counter() - start) * 1000
    assert tree.root_node is not None

    lines = [
        "| measure (ms per call) | wall p50 / p95 / max | process CPU p50 / p95 / max |",
        "|---|---:|---:|",
        row(f"postprocess, all rules, {len(normal)} cursors in real files", w_all, c_all),
        row("postprocess, syntax check off, same cursors", w_nosyntax, c_nosyntax),
        row(f"postprocess, all rules, {len(big_cases)} cursors in one {len(big) / 1e6:.1f} MB file", w_big, c_big),
        f"| one tree-sitter parse of the whole {len(big) / 1e6:.1f} MB file (no window) | {full_parse_ms:.0f} | |",
        "",
        f"5 MB file: whole-file parse / postprocess wall p95 = {full_parse_ms / pct(w_big, 95):.0f}x",
        f"files: median {sizes[len(sizes) // 2] / 1000:.1f} kB, max {sizes[-1] / 1000:.0f} kB; window: "
        f"{WINDOW_LINES} lines each side",
        f"processed text equal to the true middle (eval's exact_match): {cuts.pop('exact')} of {len(normal)} with "
        f"the rules, {raw_cuts['exact']} raw (StopRules.off()); {big_cuts.pop('exact')} of {len(big_cases)} in the "
        "5 MB file",
        f"syntax check on {n_syntax} middles of 10+ characters: rejects {true_rejected} true middles "
        f"({true_rejected / n_syntax:.1%}) and {cut_rejected} copies cut at a random character "
        f"({cut_rejected / n_syntax:.1%})",
        "cuts (real files): " + ", ".join(f"{k} {v}" for k, v in cuts.most_common()),
        "cuts (5 MB file): " + ", ".join(f"{k} {v}" for k, v in big_cuts.most_common()),
    ]
    header = [
        f"source: {root.name} from site-packages ({len(files)} Python files of 20+ lines)",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()}; 1-min load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end",
        "",
    ]
    text = "\n".join(header + lines)
    print(text)
    if args.out:
        args.out.write_text(
            "# Stop rules: postprocess latency\n\n`python benchmarks/postprocess_latency.py "
            f"--out {args.out}`\n\n{text}\n",
            encoding="utf-8",
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
