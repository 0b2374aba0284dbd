"""Tests for fimtune.corpus.spans: middles at syntax boundaries, caps, fallback, Unicode, determinism."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import tree_sitter as ts

from fimtune.config import ConfigError, CorpusConfig, SpanConfig
from fimtune.corpus.spans import (
    _ID,
    LINE_KINDS,
    MAX_RUN,
    MAX_WINDOWS,
    MIN_RUN,
    STATEMENT_KIND,
    STATEMENTS_KIND,
    SpanResult,
    _resolver,
    _run,
    _sibling_statements,
    _syntax_nodes,
    _Text,
    choose_spans,
    examples_for_size,
    query_windows,
)
from fimtune.languages import LANGUAGES, get_query, parse
from fimtune.records import SourceFile, Span
from tests.corpus_rows import example_from_span


def syntax_candidates(source: SourceFile, cfg: SpanConfig) -> dict[str, list[Span]]:
    """Every syntax-boundary middle of a file within the caps, per kind: the oracle choose_spans must draw from.

    Empty when the file does not parse cleanly, unless cfg.syntax_in_files_with_errors.
    """
    data = source.data
    tree = parse(source.language, data)
    text = _Text(data, cfg)
    nodes = _syntax_nodes(source.language, tree, cfg)
    out: dict[str, set[tuple[int, int]]] = {}
    for kind, found in nodes.items():
        resolve = _resolver(kind, text)
        out.setdefault(kind, set()).update(r for r in map(resolve, found) if r is not None)
    if STATEMENT_KIND in nodes:
        keys = set(map(_ID, nodes[STATEMENT_KIND]))
        runs = out.setdefault(STATEMENTS_KIND, set())
        for first in nodes[STATEMENT_KIND]:
            run = _run(first, MAX_RUN, keys)
            for k in range(MIN_RUN, len(run) + 1):
                if text.fits(run[0].start_byte, run[k - 1].end_byte):
                    runs.add((run[0].start_byte, run[k - 1].end_byte))
    return {k: [Span(a, b, k) for a, b in sorted(v)] for k, v in sorted(out.items()) if v}


SYNTAX_KINDS = ("statement", "statements", "block", "call_args", "condition", "assignment_rhs")
ALL_KINDS = (*SYNTAX_KINDS, *LINE_KINDS)

# One small program per language; each has `y = g(x, 2)`, `if x > 1` and a block holding `return y`.
SAMPLES: dict[str, str] = {
    "python": "def f(x):\n    y = g(x, 2)\n    if x > 1:\n        return y\n    return y\n",
    "javascript": (
        "function f(x) {\n  const y = g(x, 2);\n  if (x > 1) {\n    return y;\n  }\n  return y;\n}\n"
        "class A {\n  z = 4;\n}\n"
    ),
    "typescript": (
        "function f(x: number): number {\n  let y: number = g(x, 2);\n  if (x > 1) {\n    return y;\n  }\n"
        "  return y;\n}\ninterface I {\n  a: string;\n}\n"
    ),
    "tsx": (
        "function f(x: number) {\n  const y = g(x, 2);\n  if (x > 1) {\n    return y;\n  }\n"
        "  return <div>{y}</div>;\n}\n"
    ),
    "go": "package main\n\nfunc f(x int) int {\n\ty := g(x, 2)\n\tif x > 1 {\n\t\treturn y\n\t}\n\treturn y\n}\n",
    "rust": "fn f(x: i32) -> i32 {\n    let y = g(x, 2);\n    if x > 1 {\n        return y;\n    }\n    y\n}\n",
    "java": (
        "class A {\n    int f(int x) {\n        int y = g(x, 2);\n        if (x > 1) {\n            return y;\n"
        "        }\n        return y;\n    }\n}\n"
    ),
    "c": "int f(int x) {\n    int y = g(x, 2);\n    if (x > 1) {\n        return y;\n    }\n    return y;\n}\n",
    "cpp": "int f(int x) {\n    auto y = g(x, 2);\n    if (x > 1) {\n        return y;\n    }\n    return y;\n}\n",
}

# A middle of each syntax kind that each sample must offer, exactly.
_SEMI = {"python": "", "go": ""}
_RETURN_BLOCK = {
    "python": "return y",
    "javascript": "    return y;\n",
    "typescript": "    return y;\n",
    "tsx": "    return y;\n",
    "go": "\t\treturn y\n",
    "rust": "        return y;\n",
    "java": "            return y;\n",
    "c": "        return y;\n",
    "cpp": "        return y;\n",
}
_FIRST_TWO = {
    "python": "y = g(x, 2)\n    if x > 1:\n        return y",
    "javascript": "const y = g(x, 2);\n  if (x > 1) {\n    return y;\n  }",
    "typescript": "let y: number = g(x, 2);\n  if (x > 1) {\n    return y;\n  }",
    "tsx": "const y = g(x, 2);\n  if (x > 1) {\n    return y;\n  }",
    "go": "y := g(x, 2)\n\tif x > 1 {\n\t\treturn y\n\t}",
    "rust": "let y = g(x, 2);\n    if x > 1 {\n        return y;\n    }",
    "java": "int y = g(x, 2);\n        if (x > 1) {\n            return y;\n        }",
    "c": "int y = g(x, 2);\n    if (x > 1) {\n        return y;\n    }",
    "cpp": "auto y = g(x, 2);\n    if (x > 1) {\n        return y;\n    }",
}


def _source(language: str, text: str) -> SourceFile:
    return SourceFile(repo="r", path=f"f.{language}", language=language, text=text)


def _middles(source: SourceFile, spans: list[Span]) -> list[str]:
    data = source.data
    return [data[s.start : s.end].decode("utf-8") for s in spans]


def _candidates(language: str, text: str, cfg: SpanConfig | None = None) -> dict[str, list[str]]:
    source = _source(language, text)
    found = syntax_candidates(source, cfg or SpanConfig())
    return {kind: _middles(source, spans) for kind, spans in found.items()}


def _check_result(source: SourceFile, result: SpanResult, cfg: SpanConfig) -> None:
    """The invariants every result keeps, whatever the file and the seed."""
    data = source.data
    assert result.spans == sorted(result.spans, key=lambda s: (s.start, s.end, s.kind))
    assert len({(s.start, s.end) for s in result.spans}) == len(result.spans)
    assert len(result.spans) <= cfg.max_examples_per_file
    for span in result.spans:
        assert 0 <= span.start <= span.end <= len(data)
        assert span.kind in cfg.mix
        if not result.parse_ok and not cfg.syntax_in_files_with_errors:
            assert span.kind in LINE_KINDS
        middle = data[span.start : span.end]
        assert len(middle) <= cfg.max_middle_bytes
        assert middle.count(b"\n") + (not middle.endswith(b"\n")) <= cfg.max_middle_lines or not middle
        assert (span.start == span.end) == (span.kind == "empty")
        # Each piece decodes on its own: the offsets are on character boundaries.
        ex = example_from_span(source, span)
        assert ex.prefix + ex.middle + ex.suffix == source.text
        assert ex.middle.encode("utf-8") == middle


# --- the query files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_every_language_has_a_spans_query_that_compiles(language: str) -> None:
    query = get_query(language, "spans")
    assert query is not None, f"queries/{language}-spans.scm is missing"
    names = {query.capture_name(i) for i in range(query.capture_count)}  # type: ignore[call-overload]
    assert names <= set(SYNTAX_KINDS) | {n for n in names if n.startswith("_")}


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_every_syntax_kind_on_a_literal_sample(language: str) -> None:
    found = _candidates(language, SAMPLES[language])
    assert set(found) == set(SYNTAX_KINDS)
    assert "x > 1" in found["condition"]
    assert "x, 2" in found["call_args"]
    assert "g(x, 2)" in found["assignment_rhs"]
    assert _RETURN_BLOCK[language] in found["block"]
    assert "return y" + _SEMI.get(language, ";") in found["statement"]
    assert _FIRST_TWO[language] in found["statements"]


def test_python_literal_middles() -> None:
    text = "def f(x):\n    if x > 1:\n        return g(x, 2)\n    z = [1,\n         2]\n"
    found = _candidates("python", text)
    assert found["condition"] == ["x > 1"]
    assert found["call_args"] == ["x, 2"]
    assert found["assignment_rhs"] == ["[1,\n         2]"]
    assert found["block"] == ["if x > 1:\n        return g(x, 2)\n    z = [1,\n         2]", "return g(x, 2)"]
    assert "return g(x, 2)" in found["statement"]
    assert found["statements"] == ["if x > 1:\n        return g(x, 2)\n    z = [1,\n         2]"]


def test_loop_conditions_and_empty_ones() -> None:
    loops = "for (;;) {}\nfor (i = 0; ; i++) {}\nfor (i = 0; i < n; i++) {}\n"
    assert _candidates("javascript", loops)["condition"] == ["i < n"]
    assert _candidates("typescript", loops)["condition"] == ["i < n"]
    assert _candidates("c", "void f() {\n" + loops + "}\n")["condition"] == ["i < n"]
    go = "package m\n\nfunc f() {\n\tfor x < 5 {\n\t}\n\tfor i := 0; i < n; i++ {\n\t}\n\tfor {\n\t}\n}\n"
    assert _candidates("go", go)["condition"] == ["x < 5", "i < n"]


def test_parentheses_are_left_out_of_conditions_and_arguments() -> None:
    found = _candidates("python", "if (a and b):\n    f( 1, 2 )\nwhile (c):\n    pass\n")
    assert found["condition"] == ["a and b", "c"]
    assert found["call_args"] == ["1, 2"]
    found = _candidates("cpp", "void f() {\n    while (int n = next()) {\n        use(n);\n    }\n}\n")
    assert found["condition"] == ["int n = next()"]
    assert found["call_args"] == ["n"]  # next() has no arguments: no call_args middle
    found = _candidates("rust", 'fn f() {\n    println!("{}", x);\n}\n')
    assert found["call_args"] == ['"{}", x']


def test_brace_blocks_are_whole_lines_inside_the_braces() -> None:
    found = _candidates("javascript", "function f() { return 1; }\nfunction g() {\n  a();\n  b(); }\n")
    # The one-line body has no whole line; the other keeps its lines, not the code after `{` or `}`.
    assert found["block"] == ["  a();\n  b();"]
    found = _candidates("c", "int f() { // entry\n    a();\n    b();\n}\n")
    assert found["block"] == ["    a();\n    b();\n"]
    # Code after `{` on its line: cutting at the next line would split the method in two.
    found = _candidates("java", "class A { void f() {\n    a();\n  }\n}\n")
    assert found["block"] == ["    a();\n"]


def test_statements_are_consecutive_siblings_across_comments() -> None:
    text = "def f():\n    a()\n    # note\n    b()\n    c()\n    d()\n    e()\n"
    found = _candidates("python", text)
    assert "a()\n    # note\n    b()" in found["statements"]
    assert "a()\n    # note\n    b()\n    c()\n    d()" in found["statements"]
    # At most four statements; never the function with its body (different parents).
    assert all(m.count("()") <= 4 for m in found["statements"])
    assert not any(m.startswith("def") for m in found["statements"])
    # A Rust block's tail expression is a statement too.
    found = _candidates("rust", SAMPLES["rust"])
    assert "y" in found["statement"]
    assert "if x > 1 {\n        return y;\n    }\n    y" in found["statements"]


# --- choosing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_round_trip_on_every_span_over_many_seeds(language: str) -> None:
    source = _source(language, SAMPLES[language])
    cfg = SpanConfig(min_examples_per_file=12, max_examples_per_file=12)
    kinds: set[str] = set()
    for seed in range(150):
        result = choose_spans(source, cfg, random.Random(seed))
        assert result.parse_ok
        _check_result(source, result, cfg)
        kinds.update(s.kind for s in result.spans)
    assert kinds == set(ALL_KINDS)


def test_unicode_offsets_stay_on_character_boundaries() -> None:
    text = (
        "def grüße(名前):\n"
        "    emoji = '🐍🚀 ok 😀'\n"
        "    if 名前 == '日本語':\n"
        "        return f(名前, '🎉')\n"
        "    return '∑' * 3  # ✓\n"
        "🙂🙃🙂🙃\n"  # not valid Python: the tree has an error
    )
    for language_text, parse_ok in ((text[: text.index("🙂")], True), (text, False)):
        source = _source("python", language_text)
        cfg = SpanConfig(min_examples_per_file=20, max_examples_per_file=20, max_middle_bytes=60)
        seen: set[str] = set()
        for seed in range(300):
            result = choose_spans(source, cfg, random.Random(seed))
            assert result.parse_ok is parse_ok
            _check_result(source, result, cfg)
            seen.update(s.kind for s in result.spans)
        assert {"random", "line_rest"} <= seen
    found = _candidates("python", text[: text.index("🙂")])
    assert found["condition"] == ["名前 == '日本語'"]
    assert found["call_args"] == ["名前, '🎉'"]


def test_unparsable_file_falls_back_to_line_kinds() -> None:
    source = _source("python", "def f(:\n    x = (1,\n    return g(x, 2)\n\nclass\n")
    cfg = SpanConfig(min_examples_per_file=6, syntax_in_files_with_errors=False)
    result = choose_spans(source, cfg, random.Random(3))
    assert not result.parse_ok
    assert len(result.spans) == 6
    assert {s.kind for s in result.spans} <= set(LINE_KINDS)
    assert syntax_candidates(source, cfg) == {}
    _check_result(source, result, cfg)


def test_syntax_middles_from_clean_subtrees_when_allowed() -> None:
    broken = "MACRO_BEGIN(x) {\n  int a = 1 +;\n}\n\n"
    source = _source("c", broken + SAMPLES["c"])
    clean_from = len(broken)
    strict = SpanConfig(min_examples_per_file=30, max_examples_per_file=30, syntax_in_files_with_errors=False)
    assert {s.kind for s in choose_spans(source, strict, random.Random(0)).spans} <= set(LINE_KINDS)
    allowed = replace(strict, syntax_in_files_with_errors=True)
    kinds: set[str] = set()
    for seed in range(20):
        result = choose_spans(source, allowed, random.Random(seed))
        assert not result.parse_ok
        for span in result.spans:
            kinds.add(span.kind)
            if span.kind not in LINE_KINDS:
                assert span.start >= clean_from, span  # nothing from the function with the error
    assert {"condition", "call_args", "block", "statements"} <= kinds


def test_caps_exclude_long_candidates() -> None:
    text = "def f(x):\n" + "".join(f"    a{i} = g(x, {i})\n" for i in range(30))
    source = _source("python", text)
    cfg = SpanConfig(max_middle_lines=3, max_middle_bytes=50)
    found = syntax_candidates(source, cfg)
    assert "block" not in found  # the only block has 30 lines
    assert all(s.end - s.start <= 50 for spans in found.values() for s in spans)
    assert max(source.data.count(b"\n", s.start, s.end) for s in found["statements"]) == 2
    assert not any(s.kind == "statement" and s.start == 0 for s in found["statement"])  # the whole def
    cfg = replace(cfg, min_examples_per_file=25, max_examples_per_file=25)
    for seed in range(40):
        _check_result(source, choose_spans(source, cfg, random.Random(seed)), cfg)


def test_line_kinds_are_cut_inside_line_content() -> None:
    text = "x = 1\r\n\r\n    call(a,  b)   \r\nend\r\n"
    source = _source("python", text)
    data = source.data
    for kind in ("line", "line_rest"):
        cfg = SpanConfig(mix={kind: 1.0}, min_examples_per_file=10)
        for seed in range(30):
            result = choose_spans(source, cfg, random.Random(seed))
            assert {s.kind for s in result.spans} == {kind}
            for span in result.spans:
                lines = [line.strip() for line in text.split("\n")]
                middle = data[span.start : span.end].decode()
                line_start = data.rfind(b"\n", 0, span.start) + 1
                line = data[line_start : data.find(b"\n", span.start)].decode().strip()
                assert line in lines and line
                assert line.endswith(middle)  # up to the end of the content: no spaces, no \r
                if kind == "line":
                    assert middle == line
                else:
                    assert 0 < len(middle) < len(line)
    # Three lines have content: asking for more gives three whole lines, no duplicates.
    result = choose_spans(source, SpanConfig(mix={"line": 1.0}, min_examples_per_file=10), random.Random(0))
    assert _middles(source, result.spans) == ["x = 1", "call(a,  b)", "end"]


def test_empty_middles_sit_at_line_starts_or_after_statements() -> None:
    source = _source("go", SAMPLES["go"])
    data = source.data
    cfg = SpanConfig(mix={"empty": 1.0}, min_examples_per_file=8)
    for seed in range(30):
        for span in choose_spans(source, cfg, random.Random(seed)).spans:
            assert span.kind == "empty" and span.start == span.end
            at = span.start
            assert at == 0 or data[at - 1 : at] == b"\n" or data[at - 1 : at] in (b")", b"y", b"}")


def test_mix_is_renormalised_over_kinds_present() -> None:
    source = _source("python", "x = f(1)\ny = 2\nz = h(y)\n")  # no condition, no block
    cfg = SpanConfig(mix={"condition": 10.0, "block": 10.0, "call_args": 1.0}, min_examples_per_file=5)
    result = choose_spans(source, cfg, random.Random(0))
    assert _middles(source, result.spans) == ["1", "y"]  # every call_args there is, and nothing else
    only_random = choose_spans(source, SpanConfig(mix={"random": 1.0, "nonexistent": 5.0}), random.Random(1))
    assert {s.kind for s in only_random.spans} == {"random"}


def test_number_of_examples_scales_with_file_size() -> None:
    cfg = SpanConfig(examples_per_kb=2.0, min_examples_per_file=1, max_examples_per_file=32)
    assert examples_for_size(100, cfg) == 1
    assert examples_for_size(5 * 1024, cfg) == 10
    assert examples_for_size(1_000_000, cfg) == 32
    text = "".join(f"def f{i}(x):\n    return g(x, {i})\n\n\n" for i in range(120))
    source = _source("python", text)
    n = examples_for_size(len(source.data), cfg)
    assert 1 < n < 32
    assert len(choose_spans(source, cfg, random.Random(0)).spans) == n


def test_deterministic_for_a_given_rng_state() -> None:
    source = _source("java", SAMPLES["java"] * 3)
    cfg = SpanConfig(min_examples_per_file=15)
    first = choose_spans(source, cfg, random.Random(42))
    for _ in range(5):
        assert first == choose_spans(source, cfg, random.Random(42))
    assert any(choose_spans(source, cfg, random.Random(s)) != first for s in range(5))


def test_empty_and_whitespace_files() -> None:
    for text in ("", "\n\n   \n"):
        source = _source("python", text)
        result = choose_spans(source, SpanConfig(), random.Random(0))
        assert all(s.kind == "empty" for s in result.spans)
        _check_result(source, result, SpanConfig())


def test_bad_caps_are_a_config_error_before_any_file() -> None:
    with pytest.raises(ConfigError, match=r"^spans\.max_middle_bytes: must be at least 1, not 0$"):
        CorpusConfig(spans=SpanConfig(max_middle_bytes=0)).validate()


# --- windows: syntax middles from a uniform sample of the file -------------------------------------------------


def _big_python(functions: int = 150) -> str:
    """A file well over the windows' reach, with every syntax kind many times."""
    return "".join(
        f"def f{i}(x, y):\n    a = g(x, {i})\n    if a > {i}:\n        b = h(a, y)\n        return b\n"
        f"    c = [a, {i}]\n    return k(c)\n\n\n"
        for i in range(functions)
    )


def test_query_windows_are_disjoint_and_cover_every_part_of_the_file_alike() -> None:
    rng = random.Random(0)
    assert query_windows(100_000, 32, 0, rng) is None  # 0: the whole file
    assert query_windows(100_000, 0, 512, rng) is None  # no examples from this file: nothing to look for
    assert query_windows(10_000, 20, 512, rng) is None  # the windows would cover the file anyway
    size, n, width = 100_000, 32, 512
    covered = np.zeros(size)
    for seed in range(1000):
        windows = query_windows(size, n, width, random.Random(seed))
        assert windows is not None and MAX_WINDOWS <= len(windows) <= 2 * MAX_WINDOWS  # a window may wrap
        assert sum(b - a for a, b in windows) == n * width
        assert all(0 <= a < b <= size for a, b in windows)
        assert all(windows[i][1] <= windows[i + 1][0] for i in range(len(windows) - 1))
        for a, b in windows:
            covered[a:b] += 1
    # Each byte is in a window with the same chance (n * width / size): no part of the file is favoured.
    share = covered.reshape(50, -1).mean(axis=1) / 1000
    assert np.allclose(share, n * width / size, atol=0.03), share


def test_windowed_middles_are_candidates_of_their_kind_and_keep_the_mix() -> None:
    source = _source("python", _big_python())
    windowed, whole = SpanConfig(), SpanConfig(query_bytes_per_example=0)
    n = examples_for_size(len(source.data), windowed)
    assert query_windows(len(source.data), n, windowed.query_bytes_per_example, random.Random(0)) is not None
    candidates = {kind: {(s.start, s.end) for s in spans} for kind, spans in syntax_candidates(source, whole).items()}
    counts: dict[str, dict[str, int]] = {"windowed": {}, "whole": {}}
    for seed in range(120):
        for name, cfg in (("windowed", windowed), ("whole", whole)):
            result = choose_spans(source, cfg, random.Random(seed))
            _check_result(source, result, cfg)
            for span in result.spans:
                counts[name][span.kind] = counts[name].get(span.kind, 0) + 1
                if name == "windowed" and span.kind in candidates:
                    assert (span.start, span.end) in candidates[span.kind], span
    total = {name: sum(c.values()) for name, c in counts.items()}
    assert total["windowed"] == total["whole"]
    for kind in ALL_KINDS:
        share = {name: counts[name].get(kind, 0) / total[name] for name in counts}
        assert share["windowed"] > 0, kind
        assert abs(share["windowed"] - share["whole"]) < 0.02, (kind, share)


def test_statement_runs_continue_past_a_window_with_the_siblings_a_full_query_finds() -> None:
    c_functions = "\n".join(SAMPLES["c"].replace("f(", f"f{i}(") for i in range(20))
    for language, text in (("python", _big_python(20)), ("c", c_functions)):
        source = _source(language, text)
        tree = parse(language, source.data)
        query = get_query(language, "spans")
        assert query is not None
        statements = ts.QueryCursor(query).captures(tree.root_node)["statement"]
        ids = {node.id for node in statements}
        for first in statements:
            limit = first.start_byte + 2000
            expected = set()
            node = first.next_named_sibling
            while node is not None:
                if node.start_byte < limit and node.id in ids:
                    expected.add(node.id)
                node = node.next_named_sibling
            assert _sibling_statements(query, first, limit) == expected


def test_windowed_files_with_errors_still_take_syntax_middles_only_from_clean_items() -> None:
    broken = "MACRO_BEGIN(x) {\n  int a = 1 +;\n}\n\n"
    clean = "".join(SAMPLES["c"].replace("f(", f"f{i}(") for i in range(60))
    source = _source("c", broken + clean + broken)
    cfg = SpanConfig()
    n = examples_for_size(len(source.data), cfg)
    assert query_windows(len(source.data), n, cfg.query_bytes_per_example, random.Random(0)) is not None
    kinds: set[str] = set()
    for seed in range(40):
        result = choose_spans(source, cfg, random.Random(seed))
        assert not result.parse_ok
        _check_result(source, result, cfg)
        for span in result.spans:
            kinds.add(span.kind)
            if span.kind not in LINE_KINDS:
                assert len(broken) <= span.start and span.end <= len(broken) + len(clean), span
    assert {"statement", "statements", "condition", "call_args", "block"} <= kinds


def test_a_file_that_yields_no_example() -> None:
    source = _source("python", "x = 1\n" * 50)  # 300 bytes: round(0.3) examples
    cfg = SpanConfig(min_examples_per_file=0)
    assert examples_for_size(len(source.data), cfg) == 0
    assert choose_spans(source, cfg, random.Random(0)).spans == []


def test_query_bytes_per_example_must_not_be_negative() -> None:
    from fimtune.config import CorpusConfig

    cfg = CorpusConfig(repos=["r"], out="o")
    cfg.spans.query_bytes_per_example = -1
    with pytest.raises(ConfigError, match=r"spans\.query_bytes_per_example"):
        cfg.validate()
