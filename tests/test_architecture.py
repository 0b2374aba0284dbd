"""The layering ARCHITECTURE.md describes, checked on the code: imports point down, no circles, short functions."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fimtune", "lsp_server")

# Bottom up, as in ARCHITECTURE.md. A module belongs to the layer of the longest prefix listed; a module may
# import its own layer and the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "fimtune",
            "fimtune.console",
            "fimtune.languages",
            "fimtune.records",
            "fimtune.outputs",
            "fimtune.config",
            "fimtune.tokenizer",
        ),
    ),
    ("prompt format", ("fimtune.fim_format", "fimtune.run_meta", "fimtune.postprocess")),
    ("corpus", ("fimtune.context", "fimtune.corpus")),
    ("models and prompts", ("fimtune.models", "fimtune.prompting")),
    ("engines", ("fimtune.engines",)),
    ("jobs", ("fimtune.train", "fimtune.pretrain", "fimtune.eval", "fimtune.export", "fimtune.render_cmd")),
    ("server", ("lsp_server",)),
    (
        "command line",
        (
            "fimtune.cli",
            "fimtune.__main__",
            "fimtune.serve_cmd",
            "lsp_server.__main__",
            "fimtune.train.cli",
            "fimtune.pretrain.cli",
            "fimtune.eval.cli",
            "fimtune.export.cli",
        ),
    ),
)
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """The modules of these packages that `name` imports when it runs (lazy imports in functions included,
    `if TYPE_CHECKING:` blocks not)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    best, level = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return level


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_checker_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert circles(GRAPH) == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(GRAPH.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert upward == []


def test_only_the_training_packages_and_the_cli_import_training() -> None:
    def training(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in ("fimtune.train", "fimtune.pretrain"))

    outside = [
        f"{m} imports {d}"
        for m, deps in sorted(GRAPH.items())
        if not training(m) and m != "fimtune.cli"
        for d in sorted(deps)
        if training(d)
    ]
    assert outside == []


@cache
def _depth(module: str) -> int:
    return 1 + max((_depth(d) for d in GRAPH[module]), default=0)


def test_the_layers_are_what_the_graph_shows() -> None:
    # Every module is placed, and the longest chain of imports stays shallow enough to read in one sitting.
    assert all(layer_of(m) >= 0 for m in GRAPH)
    assert max(_depth(m) for m in GRAPH) <= 14


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_longer_than_80_lines(package: str) -> None:
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
