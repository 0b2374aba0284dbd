"""Cross-file context: tag extraction, import resolution and retrieval on small literal repositories."""

from __future__ import annotations

import itertools
import math
import pickle
import random
import re
from collections import Counter
from hashlib import blake2b

import numpy as np
import pytest

from fimtune.config import ConfigError, ContextConfig
from fimtune.context import Definition, FileIndex, RepoIndex, index_file, store, tokenize
from fimtune.languages import language_for_path
from fimtune.records import SourceFile

CFG = ContextConfig()


def src(path: str, text: str) -> SourceFile:
    lang = language_for_path(path)
    assert lang is not None, path
    return SourceFile("repo", path, lang, text)


def defs(path: str, text: str) -> dict[str, Definition]:
    """Definitions by name (by "name kind" when a name is defined twice, as a Rust struct and its impl)."""
    found = index_file(src(path, text), CFG).definitions
    names = [d.name for d in found]
    return {(d.name if names.count(d.name) == 1 else f"{d.name} {d.kind}"): d for d in found}


def repo(files: dict[str, str], cfg: ContextConfig = CFG) -> RepoIndex:
    return RepoIndex.build((index_file(src(p, t), cfg) for p, t in files.items()), cfg)


# ---- tag extraction ------------------------------------------------------------------------------------------

PY = '''import os
from .util import helper

MAX_SIZE = 10

# Adds things.
@cache
def add(a: int, b: int = 2) -> int:
    """Add a and b.

    Returns the sum.
    """
    def local():
        return 1
    return a + b + local()

class Stack(Base):
    """A stack."""
    limit: int = 3

    def push(self, item):
        """Push one item."""
        self.items.append(item)
        return item
'''


def test_python_definitions_are_stubs() -> None:
    d = defs("pkg/mod.py", PY)
    assert {n: x.kind for n, x in d.items()} == {
        "MAX_SIZE": "constant",
        "add": "function",
        "Stack": "class",
        "push": "method",
    }  # `local` is inside a function: not importable, not listed
    assert d["add"].text == (
        "# Adds things.\n@cache\ndef add(a: int, b: int = 2) -> int:\n"
        '    """Add a and b.\n\n    Returns the sum.\n    """\n    ...'
    )
    assert "return a + b" not in d["add"].text
    stack = d["Stack"].text
    assert stack.startswith('class Stack(Base):\n    """A stack."""\n    limit: int = 3\n    def push(self, item):')
    assert '"""Push one item."""' in stack and "append" not in stack
    assert d["push"].text == 'def push(self, item):\n    """Push one item."""\n    ...'
    assert (d["add"].start_line, d["add"].end_line) == (6, 14)  # from its decorator


def test_typescript_and_javascript_definitions() -> None:
    ts = defs(
        "src/a.ts",
        "/** Adds. */\nexport function add(a: number, b: number): number {\n  return a + b;\n}\n"
        "export interface Shape {\n  area(): number;\n}\n"
        "export class Box extends Base {\n  size = 1;\n  area(): number {\n    return 0;\n  }\n}\n"
        "export const mul = (a: number) => {\n  return a * 2;\n};\n",
    )
    assert {n: x.kind for n, x in ts.items()} == {
        "add": "function",
        "Shape": "interface",
        "Box": "class",
        "area": "method",
        "mul": "function",
    }
    assert ts["add"].text == "/** Adds. */\nexport function add(a: number, b: number): number {\n  ...\n}"
    assert ts["Box"].text == "export class Box extends Base {\n  size = 1;\n  area(): number {\n    ...\n  }\n}"
    assert ts["mul"].text == "export const mul = (a: number) => {\n  ...\n};"
    tsx = defs("src/a.tsx", "export function App(): JSX.Element {\n  return <div/>;\n}\n")
    assert tsx["App"].kind == "function" and "<div/>" not in tsx["App"].text
    js = defs("a.js", "class K {\n  m(a) {\n    return a;\n  }\n}\nfunction f(x) {\n  return x;\n}\n")
    assert {n: x.kind for n, x in js.items()} == {"K": "class", "m": "method", "f": "function"}


def test_go_rust_java_c_cpp_definitions() -> None:
    go = defs(
        "p/a.go",
        "package p\n\n// Sum adds.\nfunc Sum(a, b int) int {\n\treturn a + b\n}\n\n"
        "type S struct {\n\tA int\n}\n\nfunc (s *S) Get() int {\n\treturn s.A\n}\n",
    )
    assert {n: x.kind for n, x in go.items()} == {"Sum": "function", "S": "class", "Get": "method"}
    assert go["Sum"].text == "// Sum adds.\nfunc Sum(a, b int) int {\n\t...\n}"
    assert go["S"].text == "type S struct {\n\tA int\n}"

    rs = defs(
        "src/lib.rs",
        "/// A point.\npub struct P { x: i32 }\n\nimpl P {\n    /// New.\n    pub fn new() -> Self {\n"
        "        P { x: 0 }\n    }\n}\n\npub trait T {\n    fn t(&self) -> i32;\n}\n",
    )
    assert rs["P class"].text == "/// A point.\npub struct P { x: i32 }"
    assert rs["P impl"].text.startswith("impl P {\n    /// New.\n    pub fn new() -> Self {\n        ...")
    assert rs["new"].kind == "method" and rs["new"].text == "/// New.\npub fn new() -> Self {\n    ...\n}"
    assert rs["T"].kind == "interface" and "fn t(&self) -> i32;" in rs["T"].text

    java = defs(
        "a/b/A.java",
        "package a.b;\n/** The A. */\npublic class A {\n    private int x = 1;\n"
        "    /** Get. */\n    public int get(int y) {\n        return x + y;\n    }\n}\n",
    )
    assert {n: x.kind for n, x in java.items()} == {"A": "class", "get": "method"}
    assert java["A"].text == (
        "/** The A. */\npublic class A {\n    private int x = 1;\n    /** Get. */\n"
        "    public int get(int y) {\n        ...\n    }\n}"
    )

    c = defs(
        "a.c",
        "/* Adds. */\nstatic int *add(int a, int b) {\n    return 0;\n}\nint proto(void);\n"
        "struct point {\n    int x;\n};\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    )
    assert {n: x.kind for n, x in c.items()} == {
        "add": "function",
        "proto": "function",
        "point": "class",
        "MAX": "macro",
    }
    assert c["add"].text == "/* Adds. */\nstatic int *add(int a, int b) {\n    ...\n}"

    cpp = defs(
        "a.cpp",
        "namespace ns {\nclass W {\npublic:\n    int size() const { return n_; }\n};\n"
        "template <typename T>\nT maxof(T a, T b) {\n    return a;\n}\nint W::grow(int y) {\n    return y;\n}\n}\n",
    )
    assert {n: x.kind for n, x in cpp.items()} == {
        "W": "class",
        "size": "method",
        "maxof": "function",
        "grow": "function",
    }
    assert cpp["maxof"].text == "template <typename T>\nT maxof(T a, T b) {\n    ...\n}"


def test_long_class_stub_is_capped() -> None:
    body = "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(60))
    d = defs("big.py", "class Big:\n" + body)["Big"]
    assert len(d.text.split("\n")) <= CFG.definition_max_lines
    assert d.text.endswith("...") and "def m0(self):" in d.text


def test_import_specifiers_as_written() -> None:
    def imports(path: str, text: str) -> tuple[str, ...]:
        return index_file(src(path, text), CFG).imports

    assert imports("p/m.py", "import a.b as q, c\nfrom ..x import y, z as w\nfrom . import u\n") == (
        "a.b",
        "c",
        "..x",
        "..x.y",
        "..x.z",
        ".",
        ".u",
    )
    assert imports("a.ts", 'import x from "./x";\nexport * from "../y";\nconst z = require("./z");\n') == (
        "./x",
        "../y",
        "./z",
    )
    assert imports("a.go", 'package a\nimport (\n\t"fmt"\n\tu "example.com/m/util"\n)\n') == (
        "fmt",
        "example.com/m/util",
    )
    assert imports("src/a.rs", "use crate::a::{b, c::{d, e}};\npub mod m;\n") == (
        "crate::a::b",
        "crate::a::c::d",
        "crate::a::c::e",
        "pub mod m",
    )
    assert imports("A.java", "import a.b.*;\nimport static a.c.D.m;\nimport a.c.E;\n") == ("a.b.*", "a.c.D.m", "a.c.E")
    assert imports("a.c", '#include "x/y.h"\n#include <stdio.h>\n') == ("x/y.h", "<stdio.h>")


def test_file_index_is_picklable_and_windows_cover_the_file() -> None:
    text = "".join(f"line_{i} = {i}\n" for i in range(45))
    fi = index_file(src("w.py", text), CFG)
    assert pickle.loads(pickle.dumps(fi)) == fi
    assert [w.start_line for w in fi.windows] == [0, 10, 20, 30]
    texts = [fi.window_text(k) for k in range(len(fi.windows))]
    assert texts[-1].endswith("line_44 = 44") and texts[0].startswith("line_0 = 0\nline_1 = 1\n")
    assert [posted_counts(fi, k) for k in range(len(fi.windows))] == [Counter(tokenize(t)) for t in texts]


def posted_counts(fi: FileIndex, k: int) -> Counter[str]:
    """How often each token occurs in window k, read back from the file's postings."""
    p = fi.postings
    return Counter(
        {
            term: p.counts[i]
            for t, term in enumerate(p.terms)
            for i in range(p.starts[t], p.starts[t + 1])
            if p.windows[i] == k
        }
    )


@pytest.mark.parametrize(("lines", "stride"), [(20, 10), (7, 3), (6, 4), (5, 10), (1, 1), (3, 3)])
def test_window_tokens_are_the_tokens_of_its_lines(lines: int, stride: int) -> None:
    """Overlapping windows share tokenized blocks of lines: each window's tokens are still exactly its lines'."""
    cfg = ContextConfig(window_lines=lines, window_stride=stride)
    text = "".join(f"v{i} = f{i}(x)  \n" if i % 4 else "\n" for i in range(53)) + "tail_no_newline"
    fi = index_file(src("w.py", text), cfg)
    windows = fi.windows
    source_lines = text.split("\n")
    assert windows[0].start_line == 1  # line 0 is blank
    for k, w in enumerate(windows):
        text = fi.window_text(k)
        assert w.length == len(tokenize(text)) > 0
        assert posted_counts(fi, k) == Counter(tokenize(text))
        span = source_lines[w.start_line : w.end_line]
        assert text == "\n".join(line.rstrip() for line in span)
        assert span[0].strip() and span[-1].strip()  # no blank line at either edge
        assert len(span) <= lines
    assert fi.window_text(len(windows) - 1).endswith("tail_no_newline")


# ---- import resolution ---------------------------------------------------------------------------------------


def test_resolve_python() -> None:
    index = repo(
        {
            "src/pkg/__init__.py": "",
            "src/pkg/util.py": "def helper(): pass\n",
            "src/pkg/sub/__init__.py": "",
            "src/pkg/sub/deep.py": "from .. import util\nfrom ..util import helper\nfrom . import other\n",
            "src/pkg/sub/other.py": "",
            "app.py": "import pkg.util\nfrom pkg.sub import deep\nimport os\n",
            "tools/util.py": "",
        }
    )
    assert index.resolve_imports("src/pkg/sub/deep.py") == [
        "src/pkg/__init__.py",
        "src/pkg/util.py",
        "src/pkg/sub/__init__.py",  # `from . import other` runs the package's __init__ too
        "src/pkg/sub/other.py",
    ]
    assert index.resolve_imports("app.py") == ["src/pkg/util.py", "src/pkg/sub/__init__.py", "src/pkg/sub/deep.py"]


def test_resolve_javascript_and_typescript() -> None:
    index = repo(
        {
            "web/app.ts": 'import { a } from "./lib/a";\nimport b from "./lib";\nimport c from "../shared/c.js";\n'
            'import React from "react";\n',
            "web/lib/a.tsx": "export const a = 1;\n",
            "web/lib/index.ts": "export default 2;\n",
            "shared/c.ts": "export default 3;\n",
            "web/main.js": 'const u = require("./util");\n',
            "web/util.jsx": "module.exports = 1;\n",
        }
    )
    assert index.resolve_imports("web/app.ts") == ["web/lib/a.tsx", "web/lib/index.ts", "shared/c.ts"]
    assert index.resolve_imports("web/main.js") == ["web/util.jsx"]


def test_resolve_go() -> None:
    index = repo(
        {
            "cmd/main.go": 'package main\nimport (\n\t"fmt"\n\t"example.com/m/internal/util"\n)\n',
            "internal/util/a.go": "package util\n",
            "internal/util/b.go": "package util\n",
            "internal/util/a_test.go": "package util\n",
        }
    )
    assert index.resolve_imports("cmd/main.go") == ["internal/util/a.go", "internal/util/b.go"]


def test_resolve_rust() -> None:
    index = repo(
        {
            "src/lib.rs": "pub mod net;\nmod util;\nuse crate::net::http::Client;\n",
            "src/net/mod.rs": "pub mod http;\nuse super::util::helper;\n",
            "src/net/http.rs": "use crate::{util, Thing};\nuse self::inner::X;\n",
            "src/util.rs": "pub fn helper() {}\n",
        }
    )
    assert index.resolve_imports("src/lib.rs") == ["src/net/mod.rs", "src/util.rs", "src/net/http.rs"]
    assert index.resolve_imports("src/net/mod.rs") == ["src/net/http.rs", "src/util.rs"]
    assert index.resolve_imports("src/net/http.rs") == ["src/util.rs", "src/lib.rs"]


def test_resolve_java() -> None:
    index = repo(
        {
            "src/main/java/com/x/App.java": "package com.x;\nimport com.x.util.Strings;\nimport com.x.model.*;\n"
            "import static com.x.util.Maths.max;\nimport java.util.List;\n",
            "src/main/java/com/x/util/Strings.java": "package com.x.util;\n",
            "src/main/java/com/x/util/Maths.java": "package com.x.util;\n",
            "src/main/java/com/x/model/A.java": "package com.x.model;\n",
            "src/main/java/com/x/model/B.java": "package com.x.model;\n",
        }
    )
    assert index.resolve_imports("src/main/java/com/x/App.java") == [
        "src/main/java/com/x/util/Strings.java",
        "src/main/java/com/x/model/A.java",
        "src/main/java/com/x/model/B.java",
        "src/main/java/com/x/util/Maths.java",
    ]


def test_resolve_c_and_cpp_includes() -> None:
    index = repo(
        {
            "src/main.c": '#include "local.h"\n#include "lib/api.h"\n#include <stdio.h>\n#include <proj/conf.h>\n',
            "src/local.h": "int f(void);\n",
            "include/lib/api.h": "int g(void);\n",
            "include/proj/conf.h": "#define X 1\n",
            "src/x.cpp": '#include "../include/lib/api.h"\n',
        }
    )
    assert index.resolve_imports("src/main.c") == ["src/local.h", "include/lib/api.h", "include/proj/conf.h"]
    assert index.resolve_imports("src/x.cpp") == ["include/lib/api.h"]


# ---- retrieval -----------------------------------------------------------------------------------------------

GEOMETRY = '''"""Shapes."""


def area_of_circle(radius):
    """Area of a circle of the given radius."""
    return 3.14159 * radius * radius


def unrelated_helper():
    """Not used by main."""
    return None
'''

REPORT = """def monthly_report(ledger_entries, exchange_rates):
    totals = {}
    for entry in ledger_entries:
        rate = exchange_rates[entry.currency]
        totals[entry.account] = totals.get(entry.account, 0) + entry.amount * rate
    return totals
"""

MAIN = """from .geometry import area_of_circle


def summary(ledger_entries, exchange_rates):
    for entry in ledger_entries:
        rate = exchange_rates[entry.currency]
    return area_of_circle(2)
"""


def small_repo(cfg: ContextConfig = CFG) -> RepoIndex:
    return repo({"app/__init__.py": "", "app/geometry.py": GEOMETRY, "app/report.py": REPORT, "app/main.py": MAIN}, cfg)


def test_retrieve_imported_definition_and_similar_window() -> None:
    index = small_repo()
    cut = MAIN.index("    return area_of_circle")
    snippets = index.retrieve("app/main.py", "python", MAIN[:cut] + "    return area_of", MAIN[cut + 18 :])
    kinds = [(s.kind, s.path) for s in snippets]
    assert kinds[0] == ("definition", "app/geometry.py")
    assert "def area_of_circle(radius):" in snippets[0].text and "3.14159" not in snippets[0].text
    assert ("similar", "app/report.py") in kinds
    similar = next(s for s in snippets if s.kind == "similar" and s.path == "app/report.py")
    assert "exchange_rates[entry.currency]" in similar.text
    assert all(s.path != "app/main.py" for s in snippets)


def test_definitions_used_near_the_cursor_come_first() -> None:
    index = small_repo()
    filler = "".join(f"z{i} = {i}\n" for i in range(30))
    prefix = (
        "from .geometry import area_of_circle, unrelated_helper\n" + filler + "def f():\n    return unrelated_helper("
    )
    snippets = index.retrieve("app/main.py", "python", prefix)
    assert snippets[0].kind == "definition" and "def unrelated_helper():" in snippets[0].text


def test_own_file_is_never_a_source() -> None:
    # A repo of near-copies: the best lexical match would be the file itself.
    body = "def compute_totals(rows):\n    return sum(row.value for row in rows)\n"
    index = repo({"a.py": body, "b.py": body.replace("compute_totals", "compute_sums")})
    snippets = index.retrieve("a.py", "python", body)
    assert snippets and all(s.path == "b.py" for s in snippets)


def test_budget_and_count_limits() -> None:
    files = {f"m{i}.py": "".join(f"value_{j} = shared_name + {j}\n" for j in range(60)) for i in range(6)}
    files["target.py"] = "total = shared_name + value_1\n"
    for max_chars, max_snippets in ((4000, 8), (500, 8), (4000, 2), (150, 1)):
        cfg = ContextConfig(max_chars=max_chars, max_snippets=max_snippets)
        snippets = repo(files, cfg).retrieve("target.py", "python", files["target.py"])
        assert snippets, (max_chars, max_snippets)
        assert sum(len(s.text) for s in snippets) <= max_chars
        assert len(snippets) <= max_snippets


def test_windows_never_overlap_or_repeat() -> None:
    text = "".join(f"alpha_{i % 7} = beta_{i % 5}(gamma)  # {i}\n" for i in range(120))  # unique lines
    index = repo({"big.py": text, "q.py": "x = 1\n"}, ContextConfig(max_chars=100_000, max_snippets=50))
    snippets = index.retrieve("q.py", "python", "alpha_1 = beta_2(gamma)\nalpha_3 = beta_4(gamma)\n")
    assert len(snippets) > 1
    starts = sorted(text.split("\n").index(s.text.split("\n")[0]) for s in snippets)
    texts = [s.text for s in snippets]
    assert len(set(texts)) == len(texts)
    # No two windows share a line: each starts after the previous one ends.
    lengths = {text.split("\n").index(s.text.split("\n")[0]): s.text.count("\n") + 1 for s in snippets}
    for a, b in itertools.pairwise(starts):
        assert a + lengths[a] <= b


def test_incremental_updates_equal_a_full_rebuild() -> None:
    files = {"app/__init__.py": "", "app/geometry.py": GEOMETRY, "app/report.py": REPORT, "app/main.py": MAIN}
    index = repo(files)
    queries = [
        ("app/main.py", MAIN[: MAIN.index("    return")]),
        ("app/report.py", REPORT[:120]),
        ("app/geometry.py", GEOMETRY),
    ]
    for path, prefix in queries:  # what the index keeps per file from a retrieval must not outlive an update
        index.retrieve(path, "python", prefix)
    # modify, add, remove
    files["app/report.py"] = (
        REPORT.replace("monthly_report", "weekly_report") + "\n\ndef area_of_square(side):\n    pass\n"
    )
    index.update(index_file(src("app/report.py", files["app/report.py"]), CFG))
    files["app/extra.py"] = "def area_of_circle_fast(radius):\n    return radius * radius * 3\n"
    index.update(index_file(src("app/extra.py", files["app/extra.py"]), CFG))
    del files["app/geometry.py"]
    index.remove("app/geometry.py")
    rebuilt = repo(files)
    assert index.paths == rebuilt.paths
    for path, prefix in queries:
        assert index.retrieve(path, "python", prefix) == rebuilt.retrieve(path, "python", prefix)
        assert index.resolve_imports(path) == rebuilt.resolve_imports(path)
    got = index.retrieve("app/main.py", "python", MAIN)
    assert all(s.path != "app/geometry.py" for s in got)
    assert any("weekly_report" in s.text for s in got) and not any("monthly_report" in s.text for s in got)
    # Adding the imported file back makes its definition reappear.
    index.update(index_file(src("app/geometry.py", GEOMETRY), CFG))
    assert any(
        s.kind == "definition" and "area_of_circle(radius)" in s.text
        for s in index.retrieve("app/main.py", "python", MAIN)
    )


def test_update_touches_only_that_file() -> None:
    index = small_repo()
    before = {p: index.definitions(p) for p in index.paths}
    index.update(index_file(src("app/report.py", "def other():\n    pass\n"), CFG))
    for path in index.paths:
        if path != "app/report.py":
            assert index.definitions(path) is before[path]
    assert [d.name for d in index.definitions("app/report.py")] == ["other"]


def test_retrieval_is_deterministic() -> None:
    files = {f"f{i}.py": f"def fn_{i}(shared, arg_{i}):\n    return shared.combine(arg_{i})\n" for i in range(12)}
    forward = repo(files)
    backward = RepoIndex.build([index_file(src(p, files[p]), CFG) for p in reversed(list(files))], CFG)
    prefix = "def g(shared, x):\n    return shared.combine("
    first = forward.retrieve("new.py", "python", prefix)
    assert first == forward.retrieve("new.py", "python", prefix) == backward.retrieve("new.py", "python", prefix)
    # All twelve windows tie: their order is a hash of path and line, the same for any order of indexing.
    similar = [s.path for s in first if s.kind == "similar"]
    by_hash = sorted(files, key=lambda p: store.tie_key(int.from_bytes(blake2b(p.encode(), digest_size=8).digest()), 0))
    assert len(similar) >= 3 and similar == by_hash[: len(similar)]


def bm25_reference(files: dict[str, str], tokens: set[str], cfg: ContextConfig) -> dict[tuple[str, int], float]:
    """Okapi BM25 of every window for the query tokens, written out from the definition, over the rarest tokens
    whose postings fit in cfg.max_postings (always at least one)."""
    indexed = [index_file(src(p, t), cfg) for p, t in files.items()]
    windows = [(fi.path, w) for fi in indexed for w in fi.windows]
    words = {(fi.path, w.start_line): tokenize(fi.window_text(k)) for fi in indexed for k, w in enumerate(fi.windows)}
    df = {t: sum(t in words[p, w.start_line] for p, w in windows) for t in tokens}
    present = sorted((d, t) for t, d in df.items() if d)
    counted: list[str] = []
    total = 0
    for d, t in present:
        if counted and total + d > cfg.max_postings:
            break
        counted.append(t)
        total += d
    n, k1, b, pivot = len(windows), 1.2, 0.75, cfg.window_lines * 4.0
    scores = {}
    for path, w in windows:
        ws = words[path, w.start_line]
        norm = k1 * (1 - b + b * len(ws) / pivot)
        scores[(path, w.start_line)] = sum(
            math.log1p((n - df[t] + 0.5) / (df[t] + 0.5)) * ws.count(t) * (k1 + 1) / (ws.count(t) + norm)
            for t in counted
        )
    return scores


@pytest.mark.parametrize("max_postings", [100_000, 3, 1])
def test_window_scores_are_bm25(max_postings: int) -> None:
    cfg = ContextConfig(max_postings=max_postings)
    files = {"app/__init__.py": "", "app/geometry.py": GEOMETRY, "app/report.py": REPORT, "app/main.py": MAIN}
    index = repo(files, cfg)
    tokens = {"entry", "rate", "exchange_rates", "totals", "radius", "no_such_token"}
    scored = index.store.scores(tokens)
    assert scored is not None
    expected = bm25_reference(files, tokens, cfg)
    by_id = dict(zip(scored[0].tolist(), scored[1].tolist(), strict=True))
    windows = [index.store.window(i) for i in range(len(index.store._win_path))]
    got = {(path, line): by_id.get(i, 0.0) for i, (path, line, _) in enumerate(windows)}
    assert got.keys() == expected.keys()
    assert all(by_id.values())  # only windows holding a query token are scored
    assert got == pytest.approx(expected, rel=1e-5)
    assert max(expected.values()) > 0
    assert index.store.scores({"no_such_token"}) is None


def test_best_windows_agree_with_ranking_all_scores() -> None:
    """`best` (dense scores when postings are many, the windows they name when few; ties at the cut chosen by a
    partition) returns the windows a plain sort of every scored window by (score, hash) puts first."""
    rng = random.Random(0)
    words = [f"name_{i}" for i in range(40)]
    files = {
        f"pkg/mod_{f}.py": "\n".join(
            f"def f_{f}_{k}(x):\n    return {' + '.join(rng.choices(words, k=3))}" for k in range(30)
        )
        for f in range(30)
    }
    index = repo(files, ContextConfig())
    store = index.store
    dense_seen = sparse_seen = 0
    for trial in range(200):
        if trial % 4 == 0:  # defined names: each in one window or two
            tokens = {f"f_{rng.randrange(30)}_{rng.randrange(30)}" for _ in range(rng.choice([1, 3]))}
        else:
            tokens = set(rng.sample(words, rng.choice([1, 2, 6]))) | ({"def", "return", "x"} if trial % 3 else set())
        w = store._postings(tokens)
        assert w is not None
        dense_seen += not store._sparse(w[0])
        sparse_seen += store._sparse(w[0])
        own = index._files[f"pkg/mod_{trial % 30}.py"].wids if trial % 2 else []
        limit = rng.choice([1, 5, 40, 10_000])
        scored = store.scores(tokens)
        assert scored is not None
        ids, scores = scored
        keys = np.frombuffer(store._win_key, dtype=np.int64)[ids]
        candidates = [(-sc, int(k), int(i)) for i, sc, k in zip(ids, scores, keys, strict=True) if i not in own]
        expected = [i for _, _, i in sorted(candidates)[:limit]]  # by score, then (path, line) hash
        assert store.best(tokens, own, limit) == expected
    assert dense_seen and sparse_seen  # both paths were taken


def test_unindexed_buffer_uses_its_live_imports() -> None:
    index = small_repo()
    snippets = index.retrieve("app/new.py", "python", "from .geometry import area_of_circle\n\nx = area_of_circle(")
    assert snippets and snippets[0].kind == "definition" and "area_of_circle" in snippets[0].text


def test_bad_config_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"context\.max_chars"):
        RepoIndex(ContextConfig(max_chars=0))
    with pytest.raises(ConfigError, match="definitions_share"):
        RepoIndex(ContextConfig(definitions_share=1.5))


def test_file_index_fields() -> None:
    fi = index_file(src("x.py", "import os\n"), CFG)
    assert isinstance(fi, FileIndex) and fi.language == "python" and fi.imports == ("os",)


def test_tokens_no_window_holds_are_forgotten() -> None:
    """A server re-indexes a buffer at every keystroke: each half-typed name must not stay in the index."""
    index = small_repo()
    words = len(index.store._vocab)
    for i in range(200):
        index.update(index_file(src("app/typing.py", f"def typed_{i}(value_{i}):\n    return value_{i}\n"), CFG))
    assert len(index.store._vocab) <= words + 3  # this keystroke's names only
    before = index.retrieve("new.py", "python", "def g(x):\n    return typed_199(")
    index.remove("app/typing.py")
    assert len(index.store._vocab) == words and "typed_199" not in index.store._vocab
    rebuilt = small_repo()
    rebuilt.update(index_file(src("app/typing.py", "def typed_199(value_199):\n    return value_199\n"), CFG))
    index.update(index_file(src("app/typing.py", "def typed_199(value_199):\n    return value_199\n"), CFG))
    query = ("new.py", "python", "def g(x):\n    return typed_199(")
    assert index.retrieve(*query) == rebuilt.retrieve(*query) == before  # ids reused: same snippets


@pytest.mark.parametrize("n", [50, 4096, 4097, 30_000])
def test_kth_largest_is_the_kth_of_the_sorted_scores(n: int) -> None:
    """Both ways (one partition, and bounded by halving from the maximum above 4,096 scores), with the ties of
    look-alike windows and one far higher score."""
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.choice([0.5, 0.7, 1.1], n - 1), [40.0]]) * rng.choice([1.0, 1.0001], n)
    ordered = np.sort(values)[::-1]
    for k in sorted({1, 2, 7, min(96, n), n // 2, n}):
        assert store.kth_largest(values, k) == ordered[k - 1]


def _tricky_text(seed: int) -> str:
    """Lines of every sort for the query-token cut: blank, CRLF, non-ASCII names, digits, and a few lines longer
    than LINES_MAX_CHARS (the cut falls inside them)."""
    rng = random.Random(seed)
    words = ["alpha", "beta_2", "_gamma", "δelta", "x1", "2nd", "név", "self", "return"]
    lines = []
    for _ in range(rng.randrange(60, 180)):
        kind = rng.random()
        if kind < 0.1:
            lines.append("")
        elif kind < 0.11:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randrange(1500, 4000))))
        else:
            line = "    " * rng.randrange(3) + " ".join(rng.choice(words) + rng.choice("(),.:= ") for _ in range(8))
            lines.append(line + ("\r" if kind < 0.2 else ""))
    lines.insert(len(lines) // 2, "long_name " * 2000)
    return "\n".join(lines) + rng.choice(["", "\n", "\n\n"])


@pytest.mark.parametrize("seed", range(4))
def test_line_tokens_equal_the_query_tokens_of_each_cursor(seed: int) -> None:
    from fimtune.context.retrieval import _LineTokens, query_tokens

    text = _tricky_text(seed)
    lines = _LineTokens(text)
    rng = random.Random(seed)
    cursors = [(0, 0), (len(text), len(text)), *((a, a) for a in range(0, len(text), 97))]
    cursors += [tuple(sorted(rng.sample(range(len(text) + 1), 2))) for _ in range(300)]
    cursors += [(m.start(), m.end()) for m in itertools.islice(re.finditer("\n", text), 0, None, 7)]
    fallbacks = 0
    for end, start in cursors:
        for n in (1, 3, 20):
            got = lines.query_tokens(end, start, n)
            fallbacks += got is None
            if got is not None:
                assert got == query_tokens(text[:end], text[start:], n), (end, start, n)
    assert 0 < fallbacks < 3 * len(cursors)  # both paths are taken: the long lines put some cursors on the fallback


def test_retrieve_many_equals_retrieve_for_each_cursor() -> None:
    files = {"app/__init__.py": "", "app/geometry.py": GEOMETRY, "app/report.py": REPORT, "app/main.py": MAIN}
    files["app/long.py"] = "\n".join(f"total_{i} = area_of_circle({i}) + exchange_rates[{i}]" for i in range(400))
    index = repo(files)
    rng = random.Random(0)
    for path, text in files.items():
        cursors = [tuple(sorted(rng.sample(range(len(text) + 1), 2))) for _ in range(12)] if text else [(0, 0)]
        got = index.retrieve_many(path, "python", text, cursors)
        assert got == [index.retrieve(path, "python", text[:a], text[b:]) for a, b in cursors]
        assert any(got) or not text
    unseen = MAIN.replace("main", "other")  # a buffer the index has not seen: imports from its live text
    cursors = [(len(unseen) // 2, len(unseen) // 2), (len(unseen), len(unseen))]
    got = index.retrieve_many("app/other.py", "python", unseen, cursors)
    assert got == [index.retrieve("app/other.py", "python", unseen[:a], unseen[b:]) for a, b in cursors]
