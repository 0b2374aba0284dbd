"""Completion metrics on (prediction, reference) pairs, their aggregation by group, and a paired bootstrap.

Pure Python + numpy (+ rapidfuzz for Levenshtein), no torch. Every metric is a float in [0, 1], or None where it
does not apply to the example (parse_valid for a language without a grammar, empty_middle_accuracy when the
reference is not empty); `aggregate` averages over the examples where a metric applies and says how many those are.

Texts are compared after `normalize`: trailing whitespace removed from every line and from the end ("\\r\\n" counts
as "\\n"), so a completion that differs from the reference only by trailing spaces or a final newline matches.
"""

from __future__ import annotations

import keyword
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from fimtune.languages import LANGUAGES, get_language
from fimtune.postprocess import syntax_errors

METRICS: tuple[str, ...] = (
    "exact_match",
    "edit_similarity",
    "first_line_exact_match",
    "identifier_f1",
    "parse_valid",
    "empty_middle_accuracy",
    "over_generation",
)

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
# Words a grammar lexes as anonymous tokens that are ordinary identifiers in code (Rust macro fragment specifiers,
# `new.target`/`import.meta`, accessors, Python 2's print/exec): they stay identifiers.
_NOT_KEYWORDS = frozenset(
    {"block", "expr", "expr_2021", "ident", "item", "lifetime", "literal", "meta", "pat", "pat_param", "path", "stmt"}
    | {"tt", "ty", "vis", "target", "get", "set", "require", "print", "exec", "raw", "module", "object", "string"}
)


def normalize(text: str) -> str:
    """The text without trailing whitespace on each line and at the end."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


@cache
def keywords(language: str) -> frozenset[str]:
    """Keywords of a fimtune language: the grammar's anonymous word tokens (Python: also keyword.kwlist and the
    soft keywords), minus the few that are common identifiers. Empty for other languages."""
    if language not in LANGUAGES:
        return frozenset()
    lang = get_language(language)
    words = {
        kind
        for i in range(lang.node_kind_count)
        if not lang.node_kind_is_named(i)
        and lang.node_kind_is_visible(i)
        and (kind := lang.node_kind_for_id(i))
        and _IDENTIFIER.fullmatch(kind)
    }
    if language == "python":
        words |= set(keyword.kwlist) | set(keyword.softkwlist)
    return frozenset(words - _NOT_KEYWORDS)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - Levenshtein distance / length of the longer text (1.0 for two empty texts)."""
    return float(Levenshtein.normalized_similarity(normalize(prediction), normalize(reference)))


def _first_line(text: str) -> str:
    return next((line for line in normalize(text).split("\n") if line.strip()), "")


def first_line_exact_match(prediction: str, reference: str) -> float:
    """Whether the first non-blank lines are equal (indentation included); two texts with no such line match."""
    return float(_first_line(prediction) == _first_line(reference))


def identifiers(text: str, language: str = "") -> Counter[str]:
    """Bag of identifiers (`[A-Za-z_]\\w*`) minus the language's keywords."""
    kw = keywords(language)
    return Counter(w for w in _IDENTIFIER.findall(text) if w not in kw)


def identifier_f1(prediction: str, reference: str, language: str = "") -> float:
    """F1 of the identifier bags (multiset overlap); 1.0 when both are empty, 0.0 when only one is."""
    pred, ref = identifiers(prediction, language), identifiers(reference, language)
    if not pred and not ref:
        return 1.0
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def parse_valid(prediction: str, reference: str, prefix: str, suffix: str, language: str) -> float | None:
    """1.0 when prefix + prediction + suffix has no more tree-sitter errors than prefix + reference + suffix
    (same window around the cursor as the stop rules' syntax check); None for a language without a grammar."""
    pred = syntax_errors(prefix, prediction, suffix, language)
    ref = syntax_errors(prefix, reference, suffix, language)
    if pred is None or ref is None:
        return None
    return float(pred <= ref)


def empty_middle_accuracy(prediction: str, reference: str) -> float | None:
    """On an example whose reference is empty (the code is already complete): 1.0 when the prediction is empty
    too. None for every other example."""
    if normalize(reference):
        return None
    return float(not normalize(prediction))


def _line_count(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def over_generation(prediction: str, reference: str) -> float:
    """1.0 when the prediction runs past the reference: longer and starting with it, or more lines than it."""
    pred, ref = normalize(prediction), normalize(reference)
    longer = len(pred) > len(ref) and pred.startswith(ref)
    return float(longer or _line_count(pred) > _line_count(ref))


def score_example(
    prediction: str, reference: str, *, prefix: str = "", suffix: str = "", language: str = ""
) -> dict[str, float | None]:
    """Every metric in METRICS for one example (prefix, suffix and language are needed by parse_valid and by
    identifier_f1's keyword list)."""
    return {
        "exact_match": exact_match(prediction, reference),
        "edit_similarity": edit_similarity(prediction, reference),
        "first_line_exact_match": first_line_exact_match(prediction, reference),
        "identifier_f1": identifier_f1(prediction, reference, language),
        "parse_valid": parse_valid(prediction, reference, prefix, suffix, language),
        "empty_middle_accuracy": empty_middle_accuracy(prediction, reference),
        "over_generation": over_generation(prediction, reference),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, str)


def _summary(rows: list[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(rows)}
    for name in names:
        values = [float(r[name]) for r in rows if r.get(name) is not None]
        out[name] = math.fsum(values) / len(values) if values else None
        out[f"n_{name}"] = len(values)
    return out


def aggregate(
    rows: Iterable[Mapping[str, Any]], by: str | None = None, metrics: Sequence[str] | None = None
) -> dict[str, Any]:
    """Means of the metrics over rows (dicts such as score_example's, with extra fields like span_kind).

    Returns {"n": rows, "<metric>": mean or None, "n_<metric>": rows where the metric applies, ...}; with `by`
    (a field such as "span_kind" or "language") one such dict per value of that field, keys sorted.
    `metrics` defaults to every field whose values are all numbers or None (bools count), other than `by`.
    """
    rows = list(rows)
    if metrics is None:
        seen: dict[str, bool] = {}
        for row in rows:
            for key, value in row.items():
                seen[key] = seen.get(key, True) and (value is None or _is_number(value))
        metrics = [k for k, numeric in seen.items() if numeric and k != by]
    if by is None:
        return _summary(rows, metrics)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        if by not in row:
            raise ValueError(f"aggregate by {by!r}: row {i} has no {by!r} field (fields: {', '.join(row)})")
        groups.setdefault(str(row[by]), []).append(row)
    return {key: _summary(groups[key], metrics) for key in sorted(groups)}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Percentile bootstrap of the paired difference mean(b) - mean(a) over the same examples.

    Examples are resampled with replacement (the same indices for a and b); `low`/`high` are the
    (1 - confidence) / 2 and 1 - (1 - confidence) / 2 quantiles of the resampled differences. Deterministic for a
    seed. Returns mean_a, mean_b, diff, low, high.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty score lists of equal length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_bootstrap: scores must be finite numbers (drop examples where a metric is None)")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"paired_bootstrap: n_resamples must be >= 1 and confidence in (0, 1), got {n_resamples}, {confidence}"
        )
    diff = y - x
    n = diff.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 1_000_000 // n)  # resamples per batch: about 8 MB of indices at a time
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        means[start : start + m] = diff[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff": float(diff.mean()),
        "low": float(low),
        "high": float(high),
    }
