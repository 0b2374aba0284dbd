"""Cursors in this repository's own source files: real code for engines to complete (tests and benchmarks)."""

from __future__ import annotations

import random
from pathlib import Path

from fimtune.fim_format import FimRequest

REPO = Path(__file__).resolve().parent.parent


def cursors(n: int, seed: int = 0) -> list[FimRequest]:
    """n cursors inside a line or at its start, in seeded choices of fimtune's Python files."""
    rng = random.Random(seed)
    files = sorted((REPO / "fimtune").rglob("*.py"))
    out: list[FimRequest] = []
    while len(out) < n:
        path = rng.choice(files)
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if len(lines) < 10:
            continue
        k = rng.randrange(3, len(lines) - 1)
        pos = sum(map(len, lines[:k])) + rng.randrange(0, max(1, len(lines[k].rstrip())))
        out.append(FimRequest("fimtune", str(path.relative_to(REPO)), "python", text[:pos], text[pos:]))
    return out
