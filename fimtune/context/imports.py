"""Import resolution: per-language rules (kept as data in `RESOLVERS`) that map an import specifier as
written to files of the same repository, over the set of paths in the index."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

from fimtune.context.files import tokenize


class Paths:
    """The repository's file paths, indexed by folder and by file name for import resolution."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.by_dir: dict[str, set[str]] = {}
        self.by_name: dict[str, set[str]] = {}
        self.dirs_by_name: dict[str, set[str]] = {}

    def add(self, path: str) -> None:
        self.files.add(path)
        folder, name = posixpath.split(path)
        self.by_name.setdefault(name, set()).add(path)
        while True:
            if folder not in self.by_dir:
                self.by_dir[folder] = set()
                self.dirs_by_name.setdefault(posixpath.basename(folder), set()).add(folder)
            self.by_dir[folder].add(path)
            parent = posixpath.dirname(folder)
            if not folder or parent == folder:  # "" for a relative path; "/" would be its own parent
                break
            folder = parent

    def discard(self, path: str) -> None:
        if path not in self.files:
            return
        self.files.discard(path)
        folder, name = posixpath.split(path)
        self.by_name[name].discard(path)
        if not self.by_name[name]:
            del self.by_name[name]
        while True:
            members = self.by_dir[folder]
            members.discard(path)
            if not members:
                del self.by_dir[folder]
                base = posixpath.basename(folder)
                self.dirs_by_name[base].discard(folder)
                if not self.dirs_by_name[base]:
                    del self.dirs_by_name[base]
            parent = posixpath.dirname(folder)
            if not folder or parent == folder:
                break
            folder = parent

    def direct_files(self, folder: str) -> list[str]:
        """Files directly in a folder (not in its subfolders), sorted."""
        return sorted(p for p in self.by_dir.get(folder, ()) if posixpath.dirname(p) == folder)

    def with_suffix(self, suffix: str) -> list[str]:
        """Files whose path is `suffix` or ends with `/suffix`."""
        name = posixpath.basename(suffix)
        return [p for p in self.by_name.get(name, ()) if p == suffix or p.endswith("/" + suffix)]

    def dirs_with_suffix(self, suffix: str) -> list[str]:
        name = posixpath.basename(suffix)
        return [d for d in self.dirs_by_name.get(name, ()) if d == suffix or d.endswith("/" + suffix)]


def _closest(candidates: Iterable[str], path: str) -> str | None:
    """The candidate nearest to `path` in the folder tree; then the shortest; then the first by name."""
    here = posixpath.dirname(path).split("/")

    def key(c: str) -> tuple[int, int, str]:
        parts = posixpath.dirname(c).split("/")
        common = 0
        for a, b in zip(here, parts, strict=False):
            if a != b:
                break
            common += 1
        return (-common, c.count("/"), c)

    ordered = sorted(candidates, key=key)
    return ordered[0] if ordered else None


def _join(folder: str, *parts: str) -> str | None:
    """Normalised repo path of folder/parts, or None when it leaves the repository."""
    joined = posixpath.normpath(posixpath.join(folder, *parts)) if folder or parts else ""
    if joined == ".":
        return ""
    if joined.startswith("../") or joined == ".." or joined.startswith("/"):
        return None
    return joined


def _resolve_python(paths: Paths, path: str, spec: str) -> list[str]:
    exts = (".py", ".pyi")

    def module_in(folder: str, parts: list[str]) -> str | None:
        base = _join(folder, *parts)
        if base is None:
            return None
        for cand in [base + e for e in exts] + [_join(base, "__init__" + e) or "" for e in exts]:
            if cand in paths.files and cand:
                return cand
        return None

    if spec.startswith("."):
        dots = len(spec) - len(spec.lstrip("."))
        rest = [p for p in spec[dots:].split(".") if p]
        folder = posixpath.dirname(path)
        for _ in range(dots - 1):
            if not folder:
                return []
            folder = posixpath.dirname(folder)
        found = module_in(folder, rest)
        return [found] if found else []
    parts = [p for p in spec.split(".") if p]
    if not parts:
        return []
    rel = "/".join(parts)
    # (module file, the folder it is imported from): that folder must be an import root, not itself a package.
    candidates: list[tuple[str, str]] = []
    for ext in exts:
        candidates += [(c, c[: -len(rel + ext)]) for c in paths.with_suffix(rel + ext)]
    for folder in paths.dirs_with_suffix(rel):
        found = module_in(folder, [])
        if found:
            candidates.append((found, folder[: -len(rel)]))
    roots_ok = [c for c, root in candidates if not any(_join(root, "__init__" + e) in paths.files for e in exts)]
    best = _closest(roots_ok, path)
    return [best] if best else []


_JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".d.ts")


def _resolve_js(paths: Paths, path: str, spec: str) -> list[str]:
    if not spec.startswith((".", "/")):
        return []  # a package, not a file of this repository
    target = _join(posixpath.dirname(path), spec.lstrip("/") if spec.startswith("/") else spec)
    if target is None:
        return []
    stem, ext = posixpath.splitext(target)
    candidates = [target]
    if ext in (".js", ".jsx", ".mjs", ".cjs"):  # TypeScript sources imported by their compiled name
        candidates += [stem + e for e in (".ts", ".tsx", ".mts", ".cts")]
    candidates += [target + e for e in _JS_EXTENSIONS]
    candidates += [f"{target}/index{e}" if target else f"index{e}" for e in _JS_EXTENSIONS]
    for cand in candidates:
        if cand in paths.files:
            return [cand]
    return []


def _resolve_go(paths: Paths, path: str, spec: str) -> list[str]:
    segments = [s for s in spec.split("/") if s]
    if not segments:
        return []
    # Standard-library paths have no dot in their first element; module paths without one need 2 matching folders.
    min_k = 1 if "." in segments[0] else 2
    for k in range(len(segments), min_k - 1, -1):
        for folder in sorted(paths.dirs_with_suffix("/".join(segments[-k:]))):
            files = [f for f in paths.direct_files(folder) if f.endswith(".go") and not f.endswith("_test.go")]
            if files:
                return [f for f in files if f != path]
    return []


def _rust_module_dir(path: str) -> str:
    folder, name = posixpath.split(path)
    if name in ("mod.rs", "lib.rs", "main.rs"):
        return folder
    return posixpath.join(folder, name[:-3]) if name.endswith(".rs") else folder


def _rust_module_file(paths: Paths, folder: str) -> str | None:
    for cand in (f"{folder}.rs", f"{folder}/mod.rs", f"{folder}/lib.rs", f"{folder}/main.rs"):
        cand = cand.lstrip("/")
        if cand in paths.files:
            return cand
    return None


def _rust_in(paths: Paths, folder: str, segments: list[str], min_k: int) -> str | None:
    for k in range(len(segments), min_k - 1, -1):
        if k == 0:
            return _rust_module_file(paths, folder)
        base = posixpath.join(folder, *segments[:k])
        for cand in (base + ".rs", base + "/mod.rs"):
            if cand in paths.files:
                return cand
    return None


def _resolve_rust(paths: Paths, path: str, spec: str) -> list[str]:
    mod = re.match(r"^(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)$", spec)
    if mod:
        module = _rust_in(paths, _rust_module_dir(path), [mod.group(1)], 1)
        return [module] if module else []
    spec = re.sub(r"\s+as\s+\w+$", "", spec)
    segments = [s for s in spec.split("::") if s and s not in ("*", "self")]
    if not segments:
        return []
    crate = posixpath.dirname(path)
    while crate and not ({f"{crate}/lib.rs", f"{crate}/main.rs"} & paths.files):
        crate = posixpath.dirname(crate)
    head, rest = segments[0], segments[1:]
    found: str | None = None
    if head == "crate":
        found = _rust_in(paths, crate, rest, 0)
    elif head in ("self", "super"):
        folder = _rust_module_dir(path)
        while rest and rest[0] == "super":
            rest = rest[1:]
            folder = posixpath.dirname(folder)
        if head == "super":
            folder = posixpath.dirname(folder)
        found = _rust_in(paths, folder, rest, 0)
    else:
        found = _rust_in(paths, crate, segments, 1)
        if found is None:  # another crate of the same workspace: <crate>/src/lib.rs
            for folder in sorted(paths.by_dir):
                if posixpath.basename(folder).replace("-", "_") == head and f"{folder}/src/lib.rs" in paths.files:
                    found = _rust_in(paths, f"{folder}/src", rest, 0)
                    break
    return [found] if found else []


def _resolve_java(paths: Paths, path: str, spec: str) -> list[str]:
    segments = [s for s in spec.split(".") if s]
    if not segments:
        return []
    if segments[-1] == "*":
        for folder in sorted(paths.dirs_with_suffix("/".join(segments[:-1]))):
            files = [f for f in paths.direct_files(folder) if f.endswith(".java") and f != path]
            if files:
                return files
        return []
    # a.b.C, a.b.C.Inner or a static member a.b.C.m: the longest prefix that is a file.
    for k in range(len(segments), max(1, len(segments) - 2) - 1, -1):
        best = _closest(paths.with_suffix("/".join(segments[:k]) + ".java"), path)
        if best:
            return [best]
    return []


def _resolve_include(paths: Paths, path: str, spec: str) -> list[str]:
    system = spec.startswith("<") and spec.endswith(">")
    name = spec[1:-1] if system else spec
    if not system:
        local = _join(posixpath.dirname(path), name)
        if local is not None and local in paths.files:
            return [local]
    clean = posixpath.normpath(name)
    if clean.startswith("../"):
        clean = clean.lstrip("./")
    best = _closest(paths.with_suffix(clean), path)
    return [best] if best else []


# How each language's import specifiers are resolved (their member separators: files.MEMBER_SEP).
RESOLVERS: dict[str, Callable[[Paths, str, str], list[str]]] = {
    "python": _resolve_python,
    "javascript": _resolve_js,
    "typescript": _resolve_js,
    "tsx": _resolve_js,
    "go": _resolve_go,
    "rust": _resolve_rust,
    "java": _resolve_java,
    "c": _resolve_include,
    "cpp": _resolve_include,
}


def imported_names(specs: Iterable[str]) -> frozenset[str]:
    return frozenset(t for spec in specs for t in tokenize(spec)[-1:])
