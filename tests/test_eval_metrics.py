"""Completion metrics on hand-made (prediction, reference) pairs, their aggregation and the paired bootstrap."""

from __future__ import annotations

import pytest

from fimtune.eval.metrics import (
    METRICS,
    aggregate,
    edit_similarity,
    empty_middle_accuracy,
    exact_match,
    first_line_exact_match,
    identifier_f1,
    identifiers,
    keywords,
    normalize,
    over_generation,
    paired_bootstrap,
    parse_valid,
    score_example,
)


def test_normalize_and_exact_match_ignore_trailing_whitespace_only() -> None:
    assert normalize("x = 1  \r\n    y = 2\t\n\n") == "x = 1\n    y = 2"
    assert exact_match("x = 1  \n", "x = 1") == 1.0
    assert exact_match("x = 1\n", "x = 1\n\n") == 1.0
    assert exact_match("x=1", "x = 1") == 0.0
    assert exact_match("  x = 1", "x = 1") == 0.0  # leading indentation matters
    assert exact_match("", "") == 1.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("abc", "abd", 2 / 3),  # one substitution over 3 characters
        ("kitten", "sitting", 1 - 3 / 7),  # k->s, e->i, +g
        ("abc", "", 0.0),
        ("", "", 1.0),
        ("abc  \n", "abc", 1.0),  # compared after normalize
        ("ab", "abcd", 0.5),  # two insertions over 4
    ],
)
def test_edit_similarity(prediction: str, reference: str, expected: float) -> None:
    assert edit_similarity(prediction, reference) == pytest.approx(expected)


def test_first_line_exact_match_uses_the_first_non_blank_line() -> None:
    assert first_line_exact_match("a = 1\nb = 2", "a = 1\nc = 3") == 1.0
    assert first_line_exact_match("\n    a = 1", "    a = 1  \nz") == 1.0
    assert first_line_exact_match("\n    a = 1", "\n    b = 1") == 0.0  # not fooled by two empty first lines
    assert first_line_exact_match("a = 1", "  a = 1") == 0.0
    assert first_line_exact_match("", "\n") == 1.0


def test_identifier_f1_is_a_bag_f1_without_keywords() -> None:
    # python: `return` is a keyword; {foo, bar} vs {foo, baz}: P = R = 1/2
    assert identifier_f1("return foo(bar)", "return foo(baz)", "python") == pytest.approx(0.5)
    # no language: `return` counts; {return, foo, bar} vs {return, foo, baz}: P = R = 2/3
    assert identifier_f1("return foo(bar)", "return foo(baz)") == pytest.approx(2 / 3)
    # bags: a a b vs a b b -> overlap {a, b} = 2, P = R = 2/3
    assert identifier_f1("a a b", "a b b") == pytest.approx(2 / 3)
    # P = 1 (x), R = 1/3 (x of x, y, z): F1 = 2 * 1 * 1/3 / (4/3) = 1/2
    assert identifier_f1("x + 1", "x + y + z") == pytest.approx(0.5)
    assert identifier_f1("1 + 2", "") == 1.0  # no identifiers on either side
    assert identifier_f1("x", "") == 0.0
    assert identifier_f1("", "x") == 0.0
    assert identifiers("let x_1 = self.y2;", "rust") == {"x_1": 1, "self": 1, "y2": 1}


@pytest.mark.parametrize(
    ("language", "keyword", "identifier"),
    [
        ("python", "lambda", "path"),
        ("javascript", "function", "target"),
        ("typescript", "interface", "get"),
        ("go", "func", "print"),
        ("rust", "impl", "path"),  # `path` is a macro fragment specifier in the grammar, an identifier in code
        ("java", "implements", "value"),
        ("c", "typedef", "size"),
        ("cpp", "namespace", "vector"),
    ],
)
def test_keywords_come_from_the_grammars(language: str, keyword: str, identifier: str) -> None:
    assert keyword in keywords(language)
    assert identifier not in keywords(language)
    assert keywords("yaml") == frozenset()


def test_parse_valid_compares_with_the_reference() -> None:
    prefix, suffix = "def f(x):\n    y = ", "\n    return y\n"
    assert parse_valid("x + 1", "x * 2", prefix, suffix, "python") == 1.0
    assert parse_valid("(x + 1", "x * 2", prefix, suffix, "python") == 0.0
    # the file is broken above the cursor: a prediction that adds nothing new is valid
    broken = "def g(:\n    pass\n\n" + prefix
    assert parse_valid("x + 1", "x * 2", broken, suffix, "python") == 1.0
    assert parse_valid("x + 1 +", "x * 2", broken, suffix, "python") == 0.0
    # an empty prediction where the code needs something is not valid
    assert parse_valid("", "x", prefix, suffix, "python") == 0.0
    assert parse_valid("x", "x", "", "", "yaml") is None


def test_empty_middle_accuracy_only_on_empty_references() -> None:
    assert empty_middle_accuracy("", "") == 1.0
    assert empty_middle_accuracy("\n  ", "") == 1.0  # whitespace only: nothing to insert
    assert empty_middle_accuracy("x = 1", "") == 0.0
    assert empty_middle_accuracy("", "x = 1") is None


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("x = 1\ny = 2", "x = 1", 1.0),  # runs past the reference
        ("abcd", "abc", 1.0),  # longer, starts with it
        ("x = 1", "x = 1", 0.0),
        ("x", "x = 1", 0.0),  # shorter
        ("a\nb", "abc", 1.0),  # more lines
        ("abd e", "abc", 0.0),  # longer but different, same line count
        ("x = 1\n\n", "x = 1", 0.0),  # trailing whitespace does not count
        ("", "", 0.0),
        ("x", "", 1.0),
    ],
)
def test_over_generation(prediction: str, reference: str, expected: float) -> None:
    assert over_generation(prediction, reference) == expected


def test_score_example_has_every_metric() -> None:
    scores = score_example("y = x + 1", "y = x + 2", prefix="def f(x):\n    ", suffix="\n", language="python")
    assert tuple(scores) == METRICS
    assert scores["exact_match"] == 0.0
    assert scores["edit_similarity"] == pytest.approx(1 - 1 / 9)
    assert scores["first_line_exact_match"] == 0.0
    assert scores["identifier_f1"] == 1.0  # {y, x} both sides
    assert scores["parse_valid"] == 1.0
    assert scores["empty_middle_accuracy"] is None
    assert scores["over_generation"] == 0.0
    assert score_example("", "", language="yaml")["parse_valid"] is None


ROWS = [
    {"span_kind": "block", "language": "python", "exact_match": 1.0, "parse_valid": 1.0, "empty_middle_accuracy": None},
    {"span_kind": "block", "language": "go", "exact_match": 0.0, "parse_valid": None, "empty_middle_accuracy": None},
    {"span_kind": "empty", "language": "python", "exact_match": 1.0, "parse_valid": 0.0, "empty_middle_accuracy": 1.0},
    {"span_kind": "empty", "language": "go", "exact_match": 0.0, "parse_valid": 1.0, "empty_middle_accuracy": 0.0},
]


def test_aggregate_means_with_counts() -> None:
    out = aggregate(ROWS)
    assert out["n"] == 4
    assert out["exact_match"] == 0.5 and out["n_exact_match"] == 4
    assert out["parse_valid"] == pytest.approx(2 / 3) and out["n_parse_valid"] == 3
    assert out["empty_middle_accuracy"] == 0.5 and out["n_empty_middle_accuracy"] == 2
    assert "span_kind" not in out and "language" not in out  # text fields are not metrics


def test_aggregate_by_group() -> None:
    by_kind = aggregate(ROWS, by="span_kind")
    assert list(by_kind) == ["block", "empty"]
    assert by_kind["block"]["n"] == 2 and by_kind["block"]["exact_match"] == 0.5
    assert by_kind["block"]["empty_middle_accuracy"] is None and by_kind["block"]["n_empty_middle_accuracy"] == 0
    assert by_kind["empty"]["parse_valid"] == 0.5
    by_language = aggregate(ROWS, by="language")
    assert by_language["python"]["exact_match"] == 1.0 and by_language["go"]["exact_match"] == 0.0
    assert by_language["go"]["parse_valid"] == 1.0 and by_language["go"]["n_parse_valid"] == 1
    assert aggregate(ROWS, metrics=["exact_match"]) == {"n": 4, "exact_match": 0.5, "n_exact_match": 4}
    assert aggregate([]) == {"n": 0}
    with pytest.raises(ValueError, match="row 0 has no 'repo' field"):
        aggregate(ROWS, by="repo")


def test_paired_bootstrap_known_cases() -> None:
    # two examples, difference 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    out = paired_bootstrap([0.0, 0.0], [0.0, 1.0])
    assert out == {"mean_a": 0.0, "mean_b": 0.5, "diff": 0.5, "low": 0.0, "high": 1.0}
    # a constant difference has a zero-width interval
    shifted = paired_bootstrap([0.1, 0.5, 0.9], [0.6, 1.0, 1.4])
    assert shifted["diff"] == pytest.approx(0.5)
    assert shifted["low"] == pytest.approx(0.5) and shifted["high"] == pytest.approx(0.5)


def test_paired_bootstrap_is_deterministic_and_pairs_examples() -> None:
    a = [float(i % 3 == 0) for i in range(200)]
    b = [float(i % 3 == 0 or i % 7 == 0) for i in range(200)]  # b is never worse than a
    first = paired_bootstrap(a, b, seed=3)
    assert first == paired_bootstrap(a, b, seed=3)
    assert first != paired_bootstrap(a, b, seed=4)
    assert first["diff"] == pytest.approx(sum(b) / 200 - sum(a) / 200)
    assert 0 < first["low"] < first["diff"] < first["high"]  # paired: every resample shows b ahead
    wider = paired_bootstrap(a, b, seed=3, confidence=0.99)
    assert wider["low"] <= first["low"] and wider["high"] >= first["high"]


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.5)
