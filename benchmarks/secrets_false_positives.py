"""Secret detection on real code that holds (almost) no secrets: how many values it would redact, and which.

    python benchmarks/secrets_false_positives.py .venv/lib/python3.11/site-packages --show 40

Every source file of the corpus languages under the folders is read as the corpus build reads it (walk rules,
filters) and scanned with `scan_secrets`; each redacted value is counted by detector, and `--show N` prints the
first N with their line, for a person to judge (installed packages ship test fixtures and documentation
examples, so a few hits may be real-looking fakes rather than false positives of the detector).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--show", type=int, default=30, help="print the first N redacted values with their line")
    args = p.parse_args()

    from fimtune.config import FilterConfig, WalkConfig
    from fimtune.corpus.filters import decode_and_filter
    from fimtune.corpus.secrets import find_secrets
    from fimtune.corpus.walk import read_file, walk_repo

    files = 0
    scanned = 0
    kinds: Counter[str] = Counter()
    shown: list[str] = []
    started = time.perf_counter()
    for folder in args.folders:
        for item in walk_repo(folder, WalkConfig(), ()):
            if item.reason is not None:
                continue
            data, _ = read_file(folder, item)
            if data is None:
                continue
            text, _ = decode_and_filter(item.path, data, FilterConfig())
            if text is None:
                continue
            files += 1
            scanned += len(data)
            for start, end, kind in find_secrets(text):
                kinds[kind] += 1
                if len(shown) < args.show:
                    line = text[text.rfind("\n", 0, start) + 1 : text.find("\n", end) % (len(text) + 1)].strip()
                    shown.append(f"{kind:18} {folder.name}/{item.path}: {line[:140]}")
    seconds = time.perf_counter() - started
    total = sum(kinds.values())
    print(f"scanned {files} files, {scanned / 1e6:.1f} MB, in {seconds:.1f}s ({scanned / 1e6 / seconds:.1f} MB/s)")
    print(f"values redacted: {total} ({total / (scanned / 1e6):.3f} per MB)")
    for kind, n in kinds.most_common():
        print(f"  {kind}: {n}")
    if shown:
        print("\nfirst redacted values:")
        print("\n".join(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
