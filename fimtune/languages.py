"""File extension -> tree-sitter grammar; one cached parser per language; loads the query files in queries/."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import tree_sitter as ts

QUERIES_DIR = Path(__file__).parent / "queries"


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    """A supported language: the PyPI grammar module and the function in it that returns the grammar."""

    name: str
    extensions: tuple[str, ...]
    module: str
    function: str = "language"
    # How a line comment starts: used for path headers in prompts of families without file separators.
    line_comment: str = "//"


LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec("python", (".py", ".pyi"), "tree_sitter_python", line_comment="#"),
        LanguageSpec("javascript", (".js", ".jsx", ".mjs", ".cjs"), "tree_sitter_javascript"),
        LanguageSpec("typescript", (".ts", ".mts", ".cts"), "tree_sitter_typescript", "language_typescript"),
        LanguageSpec("tsx", (".tsx",), "tree_sitter_typescript", "language_tsx"),
        LanguageSpec("go", (".go",), "tree_sitter_go"),
        LanguageSpec("rust", (".rs",), "tree_sitter_rust"),
        LanguageSpec("java", (".java",), "tree_sitter_java"),
        LanguageSpec("c", (".c", ".h"), "tree_sitter_c"),
        LanguageSpec("cpp", (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".ipp"), "tree_sitter_cpp"),
    )
}

_BY_EXTENSION: dict[str, str] = {ext: spec.name for spec in LANGUAGES.values() for ext in spec.extensions}


class UnknownLanguageError(ValueError):
    pass


def check_languages(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate user-given language names; raise with the list of known ones."""
    unknown = [n for n in names if n not in LANGUAGES]
    if unknown:
        raise UnknownLanguageError(f"unknown language(s) {', '.join(unknown)}; known: {', '.join(sorted(LANGUAGES))}")
    return tuple(names)


def language_for_path(path: str) -> str | None:
    """The language of a file from its extension, or None when fimtune does not handle it."""
    return _BY_EXTENSION.get(PurePosixPath(path).suffix.lower())


@cache
def get_language(name: str) -> ts.Language:
    spec = LANGUAGES[name]
    module = importlib.import_module(spec.module)
    return ts.Language(getattr(module, spec.function)())


@cache
def get_parser(name: str) -> ts.Parser:
    """One parser per language per process (parsers are not shared across processes)."""
    return ts.Parser(get_language(name))


def parse(name: str, data: bytes) -> ts.Tree:
    return get_parser(name).parse(data)


@cache
def get_query(name: str, kind: str) -> ts.Query | None:
    """The compiled `queries/<name>-<kind>.scm` query, or None when the language has none.

    TSX reuses the TypeScript queries when it has no file of its own.
    """
    path = QUERIES_DIR / f"{name}-{kind}.scm"
    if not path.exists() and name == "tsx":
        path = QUERIES_DIR / f"typescript-{kind}.scm"
    if not path.exists():
        return None
    return ts.Query(get_language(name), path.read_text(encoding="utf-8"))


def captures(name: str, kind: str, node: ts.Node) -> dict[str, list[ts.Node]]:
    """Run a language's query over a node: capture name -> nodes."""
    query = get_query(name, kind)
    if query is None:
        return {}
    return ts.QueryCursor(query).captures(node)


def matches(name: str, kind: str, node: ts.Node) -> list[tuple[int, dict[str, list[ts.Node]]]]:
    """Run a language's query over a node: (pattern index, capture name -> nodes) per match."""
    query = get_query(name, kind)
    if query is None:
        return []
    return ts.QueryCursor(query).matches(node)
