"""Stop rules: golden cases per language (literal prefix, suffix and completion -> text and cuts), line mode,
the rule switches, the syntax window and its cost on a 5 MB file."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fimtune.languages import language_for_path, parse
from fimtune.postprocess import (
    CUT_NAMES,
    MAX_WINDOW_ERRORS,
    SYNTAX,
    WINDOW_LINES,
    Processed,
    Settled,
    StopRules,
    adds_syntax_errors,
    line_mode,
    postprocess,
    prefix_window,
    syntax_errors,
)

# (id, language, prefix, suffix, raw completion, expected text, expected cuts in order)
GOLDEN: list[tuple[str, str, str, str, str, str, tuple[str, ...]]] = [
    # python
    (
        "py-dedent-ends-block",
        "python",
        "def f(x):\n    y = x + 1\n    ",
        "\n\ndef g():\n    pass\n",
        "z = y * 2\n    return z\n\ndef h():\n    return 0\n",
        "z = y * 2\n    return z",
        ("block_exit", "trailing_space"),
    ),
    (
        "py-after-colon",
        "python",
        "def f(x):\n    if x:\n        ",
        "\n    return 0\n",
        "return 1\n    else:\n        return 2\n",
        "return 1",
        ("block_exit", "trailing_space"),
    ),
    ("py-single-line", "python", "def f(x):\n    return ", "\n", "x + 1\n    print(x)\n", "x + 1", ("single_line",)),
    (
        "py-call-args-closed-by-suffix",
        "python",
        "total = sum(",
        ")\nprint(total)\n",
        "values)",
        "values",
        ("block_exit",),
    ),
    (
        "py-brackets-in-strings",
        "python",
        "def f():\n    ",
        "\n",
        "s = ')' + \"]\"  # )\n    return s\n",
        "s = ')' + \"]\"  # )\n    return s",
        ("trailing_space",),
    ),
    (
        "py-suffix-overlap",
        "python",
        "def f(x):\n    ",
        "\n    return x\n",
        "x = x + 1\n    return x",
        "x = x + 1",
        ("suffix_overlap",),
    ),
    (
        "py-repeat",
        "python",
        "for i in range(3):\n    ",
        "\n",
        "print(i)\n    print(i)\n    print(i)\n",
        "print(i)",
        ("repeat", "trailing_space"),
    ),
    ("py-syntax-reject", "python", "def f(x):\n    return ", "\n", "x +", "", ("syntax_reject",)),
    ("py-cursor-in-string", "python", 'x = "a(', '"\n', "b)", "b)", ()),
    (
        "py-multiline-call",
        "python",
        "def f(x):\n    y = g(\n        x,\n",
        "    )\n    return y\n",
        "        1,\n    )\n    return y\n",
        "        1,\n",
        ("block_exit",),
    ),
    (
        "py-docstring-dedent",
        "python",
        "def f(x):\n    ",
        "\n",
        '"""Doc.\n\nMore text at column 0.\n"""\n    return x\nprint(1)\n',
        '"""Doc.\n\nMore text at column 0.\n"""\n    return x',
        ("block_exit", "trailing_space"),
    ),
    (
        "py-signature-then-body",  # `):` closes the prefix's `(`: the body may follow, a dedent ends it
        "python",
        "def f(\n    a,\n    ",
        "\n",
        "b,\n):\n    return a + b\n\n\ndef g():\n    pass\n",
        "b,\n):\n    return a + b",
        ("block_exit", "trailing_space"),
    ),
    (
        "py-call-then-statements",  # the block is the statement's that opened the call, not the argument lines'
        "python",
        "def f():\n    y = g(\n        a,\n        ",
        "\n",
        "b)\n    return y\n\ndef h():\n    pass\n",
        "b)\n    return y",
        ("block_exit", "trailing_space"),
    ),
    (
        "py-end-of-def-line",
        "python",
        "def f(x):",
        "\n",
        "\n    return x\n\n\nclass B:\n    pass",
        "\n    return x",
        ("block_exit", "trailing_space"),
    ),
    (
        "py-comment-line-at-column-0-stays-in-the-block",  # Python reads no indentation from a comment line
        "python",
        "class A:\n    def f(self):\n        x = 1\n        ",
        "\n\n    def g(self):\n        pass\n",
        "y = 2\n#        print(y)\n        return y\n\n    def h(self):\n        pass\n",
        "y = 2\n#        print(y)\n        return y",
        ("block_exit", "trailing_space"),
    ),
    (
        "py-backslash-continuation-is-not-a-dedent",
        "python",
        "def f(a, b):\n    ",
        "\n\n\ndef g():\n    pass\n",
        "x = a + \\\nb\n    return x\n\ndef h():\n    pass\n",
        "x = a + \\\nb\n    return x",
        ("block_exit", "trailing_space"),
    ),
    # javascript
    (
        "js-closing-brace-in-suffix",
        "javascript",
        "function f(x) {\n  ",
        "\n}\n",
        "const y = x + 1;\n  return y;\n}\n\nfunction g() {\n  return 0;\n}\n",
        "const y = x + 1;\n  return y;",
        ("block_exit", "trailing_space"),
    ),
    (
        "js-finishes-block",
        "javascript",
        "items.forEach((item) => {\n  ",
        "",
        "console.log(item);\n});\nconsole.log('done');\n",
        "console.log(item);\n});",
        ("block_exit",),
    ),
    (
        "js-template-string",
        "javascript",
        "function f(a) {\n  ",
        "\n}\n",
        "const s = `}${a}`;\n  return s;\n}\n",
        "const s = `}${a}`;\n  return s;",
        ("block_exit", "trailing_space"),
    ),
    (
        "js-regex-literal-brackets-are-not-code",
        "javascript",
        "function f(s) {\n  ",
        "\n}\n\nfunction g() {\n  return 1;\n}\n",
        'return s.replace(/\\)/g, "").split(/"/);\n}\n\nfunction h() {\n  return 2;\n}\n',
        'return s.replace(/\\)/g, "").split(/"/);',
        ("block_exit", "trailing_space"),
    ),
    ("js-args-single-line", "javascript", "const x = compute(", ", 2);\n", "value)", "value", ("block_exit",)),
    (
        "js-end-of-brace-line",
        "javascript",
        "if (x) {",
        "\n}\n",
        "\n  return 1;\n}\n",
        "\n  return 1;",
        ("block_exit", "trailing_space"),
    ),
    # typescript
    (
        "ts-interface",
        "typescript",
        "interface User {\n  ",
        "\n}\n",
        "name: string;\n  age: number;\n}\n\ninterface Admin extends User {}\n",
        "name: string;\n  age: number;",
        ("block_exit", "trailing_space"),
    ),
    (
        "ts-generics",
        "typescript",
        "function id<T>(x: T): T {\n  ",
        "\n}\n",
        "const m: Map<string, T> = new Map();\n  return x;\n}\n",
        "const m: Map<string, T> = new Map();\n  return x;",
        ("block_exit", "trailing_space"),
    ),
    # go
    (
        "go-func-body",
        "go",
        "func f(x int) int {\n\t",
        "\n}\n",
        "y := x * 2\n\treturn y\n}\n\nfunc g() {}\n",
        "y := x * 2\n\treturn y",
        ("block_exit", "trailing_space"),
    ),
    (
        "go-raw-string-rune",
        "go",
        "func f() int {\n\t",
        "\n}\n",
        "s := `}` + string('}')\n\treturn len(s)\n}\n",
        "s := `}` + string('}')\n\treturn len(s)",
        ("block_exit", "trailing_space"),
    ),
    (
        "go-repeat",
        "go",
        "func f(x int) {\n\t",
        "\n}\n",
        "fmt.Println(x)\n\tfmt.Println(x)\n",
        "fmt.Println(x)",
        ("repeat", "trailing_space"),
    ),
    # rust
    (
        "rust-lifetime-char",
        "rust",
        "fn first<'a>(s: &'a str) -> char {\n    ",
        "\n}\n",
        "let c = s.chars().next().unwrap_or('}');\n    c\n}\n\nfn main() {}\n",
        "let c = s.chars().next().unwrap_or('}');\n    c",
        ("block_exit", "trailing_space"),
    ),
    (
        "rust-syntax-reject",
        "rust",
        "fn f() -> i32 {\n    let x = 1;\n    ",
        "\n    x\n}\n",
        "let y = (x + ;",
        "",
        ("syntax_reject",),
    ),
    (
        "rust-raw-string",
        "rust",
        "fn f() -> usize {\n    ",
        "\n}\n",
        'let s = r#"}"#;\n    s.len()\n}\n',
        'let s = r#"}"#;\n    s.len()',
        ("block_exit", "trailing_space"),
    ),
    # java
    (
        "java-method-body",
        "java",
        "class A {\n    int f(int x) {\n        ",
        "\n    }\n}\n",
        "int y = x + 1;\n        return y;\n    }\n\n    int g() { return 0; }\n",
        "int y = x + 1;\n        return y;",
        ("block_exit", "trailing_space"),
    ),
    (
        "java-string-semicolon",
        "java",
        "class A {\n    String s = ",
        ";\n}\n",
        '"a{b";\n    int x;',
        '"a{b"',
        ("single_line", "suffix_overlap"),
    ),
    # c
    (
        "c-comment-brace",
        "c",
        "int f(int x) {\n    ",
        "\n}\n",
        "/* } */ int y = x;\n    return y;\n}\nint g(void) { return 0; }\n",
        "/* } */ int y = x;\n    return y;",
        ("block_exit", "trailing_space"),
    ),
    (
        "c-printf-args",
        "c",
        "int main(void) {\n    printf(",
        ");\n}\n",
        '"%d)\\n", 42);\n    return 0;\n',
        '"%d)\\n", 42',
        ("block_exit",),
    ),
    # cpp
    (
        "cpp-method",
        "cpp",
        "namespace ns {\nclass A {\n public:\n  int f() {\n    ",
        "\n  }\n\n private:\n  int x_;\n};\n}  // namespace ns\n",
        "return x_;\n  }\n\n private:\n  int x_;\n",
        "return x_;",
        ("block_exit", "trailing_space"),
    ),
    (
        "cpp-raw-string",
        "cpp",
        "size_t f() {\n    ",
        "\n}\n",
        'auto s = R"x(})x";\n    return s.size();\n}\n',
        'auto s = R"x(})x";\n    return s.size();',
        ("block_exit", "trailing_space"),
    ),
    (
        "cpp-repeat-pair",
        "cpp",
        "void f() {\n    ",
        "\n}\n",
        "a();\n    b();\n    a();\n    b();\n    a();\n",
        "a();\n    b();",
        ("repeat", "trailing_space"),
    ),
    # any other language: language-independent rules only
    ("yaml-repeat", "yaml", "key:\n  ", "", "a: 1\n  a: 1\n", "a: 1", ("repeat", "trailing_space")),
]


LANGUAGES_COVERED = {"python", "javascript", "typescript", "go", "rust", "java", "c", "cpp"}


def test_golden_cases_cover_every_language() -> None:
    assert {case[1] for case in GOLDEN} >= LANGUAGES_COVERED
    assert {case[1] for case in GOLDEN} - set(SYNTAX)  # and one language without an entry


@pytest.mark.parametrize(
    ("language", "prefix", "suffix", "completion", "text", "cuts"), [c[1:] for c in GOLDEN], ids=[c[0] for c in GOLDEN]
)
def test_golden(language: str, prefix: str, suffix: str, completion: str, text: str, cuts: tuple[str, ...]) -> None:
    out = postprocess(completion, prefix, suffix, language)
    assert (out.text, out.cuts) == (text, cuts)
    assert set(out.cuts) <= set(CUT_NAMES)
    if out.text:  # what is kept never adds syntax errors
        assert not adds_syntax_errors(prefix, out.text, suffix, language)


# (language, text before the cursor, text after it, expected mode)
LINE_MODES = [
    ("python", "def f():\n    ", "\n", "multi"),  # blank line
    ("python", "if x:", "\n", "multi"),  # opens a block
    ("python", "if x:  # note", "\n", "multi"),  # the comment does not count
    ("python", "x = 1  # done:", "\n", "single"),  # a colon inside the comment does not open a block
    ("python", "s = 'a:'", "\n", "single"),  # nor inside a string
    ("python", 'x = f("a:', "\n", "single"),  # nor inside a string still open at the cursor
    ("python", "x = f(1,  # args:", "\n", "single"),  # a comment to the end of the line
    ("python", "x = f(  # args", "\n", "multi"),
    ("python", "print(", ")\n", "multi"),  # only closing brackets after the cursor
    ("python", "foo(a, ", "b)\n", "single"),  # code after the cursor
    ("python", "    ", "x = 1\n", "single"),  # cursor in the indentation of a code line
    ("python", "    return x", "\n", "single"),  # end of a line with code
    ("javascript", "function f() {", "}\n", "multi"),  # editor's auto-closed braces
    ("javascript", "const f = () =>", "\n", "multi"),
    ("javascript", "  case 1:", "\n", "multi"),
    ("javascript", "let x = 1;", "\n", "single"),
    ("javascript", "const s = `a {", "\n", "single"),  # inside a template literal
    ("tsx", "  <p>Don't {", "\n", "multi"),  # an apostrophe in JSX text opens no string
    ("tsx", "  const s = 'a {", "\n", "single"),
    ("typescript", "type A = {", "\n", "multi"),
    ("typescript", "const n: number = ", "\n", "single"),
    ("go", "func f() {", "\n", "multi"),
    ("go", "x := y", " + 1\n", "single"),
    ("rust", "Some(x) =>", "\n", "multi"),
    ("rust", "let x = 1;", "\n", "single"),
    ("java", "if (x) { // go", "\n", "multi"),
    ("java", "return x", ";\n", "single"),
    ("c", "#include <stdio.h>", "\n", "single"),
    ("c", "switch (x) {", "\n", "multi"),
    ("cpp", "std::vector<int> v = {", "};\n", "multi"),
    ("cpp", "int x = f(", "a);\n", "single"),
    ("yaml", "key:", "\n", "multi"),  # no entry: brackets and ':' open
    ("yaml", "key: value", "\n", "single"),
]


@pytest.mark.parametrize(("language", "before", "after", "mode"), LINE_MODES)
def test_line_mode(language: str, before: str, after: str, mode: str) -> None:
    assert line_mode("# header\n" + before, after + "more = 1\n", language) == mode


def test_line_mode_covers_every_language() -> None:
    assert {m[0] for m in LINE_MODES} >= LANGUAGES_COVERED
    assert line_mode("", "", "python") == "multi"  # an empty file


def test_single_line_mode_keeps_the_first_line_and_empty_is_valid() -> None:
    out = postprocess("\n    return x\n", "x = 1", "\n", "python")
    assert out == Processed("", "single", ("single_line",))
    assert "syntax_reject" not in out.cuts
    assert postprocess("", "def f():\n    ", "\n", "python") == Processed("", "multi", ())


def test_mode_override() -> None:
    raw = "a = 1\n    b = 2"
    prefix, suffix = "def f():\n    x = ", "\n"  # auto: single (end of a line with code)
    assert postprocess(raw, prefix, suffix, "python").text == "a = 1"
    multi = postprocess(raw, prefix, suffix, "python", StopRules(mode="multi", syntax=False))
    assert (multi.text, multi.mode) == (raw, "multi")
    assert postprocess(raw, "def f():\n    ", "\n", "python", StopRules(mode="single")).text == "a = 1"


def test_off_returns_the_raw_completion() -> None:
    raw = "y = 1   \n    y = 1\n}\n\ndef g(:\n"
    out = postprocess(raw, "def f():\n    ", "\n", "python", StopRules.off())
    assert out == Processed(raw, "multi", ())


@pytest.mark.parametrize(
    ("rules", "text", "cuts"),
    [
        (StopRules(), "a = 1\n    a = 2", ("block_exit", "repeat", "trailing_space")),
        (StopRules(block=False), "a = 1\n    a = 2", ("repeat", "trailing_space")),
        (
            StopRules(block=False, repeats=False, syntax=False),
            "a = 1\n    a = 2\n    a = 2\nb = 3",
            ("trailing_space",),
        ),
        (StopRules(block=False, repeats=False, syntax=False, max_lines=2), "a = 1\n    a = 2", ("max_lines",)),
    ],
)
def test_each_rule_can_be_switched_off(rules: StopRules, text: str, cuts: tuple[str, ...]) -> None:
    raw = "a = 1\n    a = 2\n    a = 2\nb = 3\n"
    out = postprocess(raw, "if x:\n    ", "\nz = 0\n", "python", rules)
    assert (out.text, out.cuts) == (text, cuts)


def test_suffix_overlap_keeps_brackets_the_completion_opened_and_whole_words() -> None:
    # `bar()` before `)`: the tail `)` closes the completion's own `(`, so it stays (the block rule keeps it too)
    assert postprocess("bar()", "foo(", ")\n", "javascript").text == "bar()"
    assert postprocess("bar()", "foo(", ")\n", "yaml").text == "bar()"
    # the whole completion repeats the suffix: nothing to insert
    assert postprocess("value", "print(", "value)\n", "python") == Processed("", "single", ("suffix_overlap",))
    # `bay` before `y)`: the tail `y` starts inside a word, so it is kept
    assert postprocess("bay", "f(", "y)\n", "python", StopRules(syntax=False)).text == "bay"
    # without a grammar the overlap still goes
    assert postprocess("x = 1\nend", "", "\nend\n", "yaml").text == "x = 1"


def test_text_after_the_cursor_keeps_the_completions_end() -> None:
    assert postprocess("a + ", "return ", "x\n", "python").text == "a + "
    assert postprocess("a + b  ", "return ", "\n", "python").text == "a + b"


def test_syntax_reject_only_for_new_errors() -> None:
    broken = "def f(:\n    pass\n\ndef g():\n    "  # the file already has an error above the cursor
    assert postprocess("return 1", broken, "\n", "python").text == "return 1"
    assert "syntax_reject" in postprocess("return (1", broken, "\n", "python").cuts
    # a completion that fixes the hole is kept
    assert postprocess("1", "x = ", "\n", "python").text == "1"
    assert adds_syntax_errors("x = 1\n", "z = (", "\ny = 2\n", "python")
    assert not adds_syntax_errors("x = 1\n", "z = (", "\ny = 2\n", "yaml")  # no grammar: never rejected
    # counts are compared, not places: swapping the hole's error (`x = `) for another (`x = 1 +`) is not rejected
    assert not adds_syntax_errors("x = ", "1 +", "\n", "python")
    # non-ASCII text before the insertion (the incremental reparse uses byte offsets)
    assert not adds_syntax_errors("s = 'é€😀'\nx = ", "1\ny = 2", "\nprint(x)\n", "python")
    assert adds_syntax_errors("s = 'é€😀'\nx = ", "1\ny = (", "\nprint(x)\n", "python")


def test_syntax_check_reads_a_window_around_the_cursor() -> None:
    far = "def broken(:\n" + "x = 1\n" * (WINDOW_LINES + 5)
    near = "def broken(:\n" + "x = 1\n" * (WINDOW_LINES - 5)
    assert syntax_errors(far, "y = 2\n", "", "python") == 0
    assert (syntax_errors(near, "y = 2\n", "", "python") or 0) >= 1
    after = "y = 2\n" * (WINDOW_LINES + 5) + "def broken(:\n"
    assert syntax_errors("", "", after, "python") == 0
    assert (syntax_errors("", "", "def broken(:\n" + after, "python") or 0) >= 1
    assert syntax_errors("", "", "", "yaml") is None


def test_window_does_not_start_inside_a_docstring() -> None:
    """150 lines back from the cursor is the middle of a long docstring with brackets and quotes in it: the window
    starts at the next top-level line instead, so the code is not read as text (no errors, brackets not counted)."""
    doc = "    text (with [brackets and 'quotes\n" * 200
    body = "    y = 2\n" * 60
    prefix = f'def f():\n    """Doc.\n{doc}    """\n    return 1\n\n\ndef g():\n{body}    '
    window = prefix_window(prefix)
    assert window.startswith("def g():\n") and window.endswith("    y = 2\n    ")
    assert syntax_errors(prefix, "return y\n", "\n", "python") == 0
    out = postprocess("return y\n\ndef h():\n    pass\n", prefix, "\n", "python")
    assert (out.text, out.cuts) == ("return y", ("block_exit", "trailing_space"))
    # the plain last 150 lines start in the docstring: read as code, they do not parse
    plain = "\n".join(prefix.split("\n")[-WINDOW_LINES - 1 :])
    assert plain.startswith("    text (with") and parse("python", (plain + "return y\n").encode()).root_node.has_error


def test_window_does_not_start_in_a_string_whose_lines_look_like_code() -> None:
    """An SQL query at column 0 inside a function, 150 lines back: its lines begin with words at the smallest
    indentation, but read from there the lexer puts the cursor in a string; the window starts at the function's
    own lines instead, so syntax errors and the block's end are seen."""
    filler = "".join(f"    v{i} = {i}\n" for i in range(160))
    prefix = f'def main():\n{filler}    query = """\nSELECT name\nFROM users\n"""\n    y = 2\n    '
    suffix = '\n    return query\n\n\ndef g():\n    """Doc."""\n    return 1\n'
    window = prefix_window(prefix, "python")
    assert window.startswith("    v") and 'query = """' in window
    assert prefix_window(prefix).startswith("SELECT name")  # the language-blind choice
    assert adds_syntax_errors(prefix, "x = = 1", suffix, "python")
    out = postprocess("x = 1\n    return x\n\ndef other():\n    return 2\n", prefix, suffix, "python")
    assert out.text == "x = 1\n    return x"


def test_no_verdict_on_a_window_that_is_not_code() -> None:
    """The cursor is deep in a long docstring: read as code, the window has hundreds of errors, so nothing is
    rejected."""
    arg = (
        "        max_new_tokens (`int`, *optional*):\n            The maximum number of tokens, ignoring the prompt.\n"
    )
    prefix = 'class A:\n    def f(self):\n        """\n        Args:\n' + arg * 100 + "        "
    suffix = "\n" + arg * 20 + '        """\n'
    before = syntax_errors(prefix, "", suffix, "python") or 0
    assert before > MAX_WINDOW_ERRORS
    assert (syntax_errors(prefix, "min_length (`int`", suffix, "python") or 0) > before  # would be rejected
    out = postprocess("min_length (`int`", prefix, suffix, "python")
    assert (out.text, out.cuts) == ("min_length (`int`", ())


def test_a_completion_that_makes_readable_code_unreadable_is_rejected() -> None:
    """A docstring the completion opens and does not close turns the rest of the window into string and the
    string into code (more than MAX_WINDOW_ERRORS errors): rejected, since the window was code before."""
    prefix = "class A:\n    def f(self):\n        "
    suffix = "\n        return 0\n" + "".join(
        f'\n    def g{i}(self, a, b):\n        """Sum {i} of a and b, in that order."""\n        return a + b + {i}\n'
        for i in range(40)
    )
    completion = '"""Return the first value.\n\n        Args:\n            self: the object'
    assert (syntax_errors(prefix, "", suffix, "python") or 0) <= MAX_WINDOW_ERRORS
    assert (syntax_errors(prefix, completion, suffix, "python") or 0) > MAX_WINDOW_ERRORS
    assert postprocess(completion, prefix, suffix, "python", StopRules(mode="multi")).cuts[-1] == "syntax_reject"
    closed = '"""Return the first value."""\n        x = 1'
    assert postprocess(closed, prefix, suffix, "python", StopRules(mode="multi")).text == closed


def test_prefix_window_at_the_top_of_a_file_is_the_whole_prefix() -> None:
    prefix = '"""Module doc with word lines.\n' + "text\n" * 20 + '"""\n\ndef f():\n    '
    assert prefix_window(prefix) == prefix


def test_threads_get_the_same_answers() -> None:
    cases = GOLDEN * 4
    expected = [postprocess(c[4], c[2], c[3], c[1]) for c in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda c: postprocess(c[4], c[2], c[3], c[1]), cases))
    assert got == expected


def test_stop_rules_validate() -> None:
    with pytest.raises(ValueError, match="mode must be one of auto, single, multi"):
        StopRules(mode="lines")
    with pytest.raises(ValueError, match="max_lines"):
        StopRules(max_lines=-1)


def test_cost_does_not_grow_with_the_file() -> None:
    """A cursor in the middle of a 5 MB Python file: postprocess reads only a window, so it stays in the
    milliseconds (the language server's whole overhead budget is 15 ms p95)."""
    unit = "class C:\n    def method(self, x):\n        y = x + 1\n        return y\n\n"
    half = unit * (2_500_000 // len(unit) + 1)
    prefix, suffix = half + "def f(x):\n    ", "\n" + half
    raw = "z = compute(x)\n    return z\n\ndef g():\n    pass\n"
    assert len(prefix) + len(suffix) > 5_000_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = postprocess(raw, prefix, suffix, "python")
        best = min(best, time.perf_counter() - start)
    assert out.text == "z = compute(x)\n    return z"
    assert best < 0.05, f"postprocess on a 5 MB file took {best * 1000:.1f} ms"


def test_the_lead_rendering_moved_into_the_middle_is_not_inserted_twice() -> None:
    prefix, suffix = "def f(a, b):\n    return a + ", "\n"
    assert postprocess(" b\n    return a + b\n", prefix, suffix, "python", lead=" ").text == "b"
    assert postprocess("b", prefix, suffix, "python", lead=" ").text == "b"  # it wrote none of the lead
    body = "def main():\n    "
    assert postprocess("    run()\n", body, "\n", "python", lead="    ").text == "run()"
    assert postprocess("  run()\n", body, "\n", "python", lead="    ").text == "run()"  # part of it
    assert postprocess(" b", prefix, suffix, "python").text == " b"  # no lead: nothing dropped


# ---------------------------------------------------------------- Settled: the engine may stop once it holds

_REPOS = Path(__file__).resolve().parent / "fixtures" / "repos"
_SOURCES = [
    *sorted((Path(__file__).resolve().parent.parent / "fimtune").rglob("*.py"))[:12],
    *sorted(p for p in _REPOS.rglob("*") if p.is_file() and language_for_path(str(p)) is not None),
]


def _settle_cases(n: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(language, prefix, suffix, completion): a cursor at the end of a line or on a blank line of real code (the
    multi-line places) and some inside lines; the completion is what really follows (the middle, then the
    suffix's start, as a model that writes on does), or text from elsewhere in the file."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        path = rng.choice(_SOURCES)
        language = language_for_path(str(path))
        assert language is not None
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if len(lines) < 12:
            continue
        k = rng.randrange(2, len(lines) - 8)
        at = sum(map(len, lines[:k]))
        pos = at + rng.choice([len(lines[k].rstrip("\n")), 0, 0, rng.randrange(0, max(1, len(lines[k])))])
        end = sum(map(len, lines[: k + rng.randrange(1, 6)])) - 1  # the suffix starts with a line's newline
        if rng.random() < 0.8:
            completion = text[pos : pos + 400]
        else:
            other = rng.randrange(0, max(1, len(text) - 400))
            completion = text[other : other + 400]
        out.append((language, text[:pos], text[max(pos, end) :], completion))
    return out


def test_settled_text_gets_the_answer_of_any_longer_one() -> None:
    """Where `Settled` first holds, postprocess gives what it gives for every longer text (so the engine may
    stop there), in every language, for real code completed by what really follows it."""
    fired = multi = 0
    for language, prefix, suffix, completion in _settle_cases(160):
        check = Settled(prefix, suffix, language)
        multi += check.mode == "multi"
        at = next((k for k in range(1, len(completion) + 1) if check(completion[:k])), None)
        if at is None:
            continue
        fired += check.mode == "multi"
        settled = postprocess(completion[:at], prefix, suffix, language)
        for k in [*range(at + 1, len(completion), 23), len(completion)]:
            longer = postprocess(completion[:k], prefix, suffix, language)
            assert (longer.text, longer.cuts) == (settled.text, settled.cuts), (language, prefix[-80:], completion)
    assert multi >= 60 and fired >= multi // 4  # the multi-line places stop early often enough to matter


def test_settled_in_single_line_mode_holds_at_the_first_newline() -> None:
    check = Settled("x = compute(", ")\n", "python")
    assert check.mode == "multi"
    single = Settled("total = ", "\n", "python")
    assert single.mode == "single"
    assert not single("a + b") and single("a + b\n")
    blocky = Settled("def f(x):\n    y = 1\n", "\ndef g():\n    pass\n", "python")
    assert not blocky("    return y\n")  # still in the block
    assert not blocky("    return y\ndef")  # the dedented line has not ended
    assert blocky("    return y\ndef h():\n")
    assert postprocess(
        "    return y\ndef h():\n", "def f(x):\n    y = 1\n", "\ndef g():\n    pass\n", "python"
    ).text == ("    return y")
    off = Settled("def f(x):\n    y = 1\n", "\n", "python", StopRules(block=False))
    assert not off("    return y\ndef h():\n    pass\n")
