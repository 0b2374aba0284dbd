"""Pretraining sources: permissively licensed code of installed packages (and node_modules), with a manifest."""

from __future__ import annotations

import hashlib
import json
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from email.message import Message
from importlib import metadata
from pathlib import Path
from typing import Any

from fimtune.config import FilterConfig
from fimtune.corpus.filters import decode_and_filter

PERMISSIVE = "permissive"
COPYLEFT = "copyleft"
UNKNOWN = "unknown"

# SPDX ids (lower-cased) whose terms allow training on and redistributing derived weights without copyleft.
PERMISSIVE_IDS = {
    s.lower(): s
    for s in (
        "MIT",
        "MIT-0",
        "MIT-CMU",
        "X11",
        "BSD-1-Clause",
        "BSD-2-Clause",
        "BSD-2-Clause-Patent",
        "BSD-3-Clause",
        "BSD-3-Clause-Clear",
        "0BSD",
        "Apache-2.0",
        "ISC",
        "PSF-2.0",
        "Python-2.0",
        "Python-2.0.1",
        "CNRI-Python",
        "Unlicense",
        "CC0-1.0",
        "Zlib",
        "BSL-1.0",
        "HPND",
        "NCSA",
        "UPL-1.0",
        "BlueOak-1.0.0",
        "PostgreSQL",
        "curl",
        "WTFPL",
    )
}
# Prefixes of SPDX ids with copyleft terms (weak copyleft such as MPL and LGPL included: they are kept out).
COPYLEFT_PREFIXES = ("gpl", "lgpl", "agpl", "mpl", "epl", "eupl", "cddl", "osl", "cecill", "cc-by-sa", "sspl", "ms-rl")

# Trove classifiers -> SPDX id or a copyleft marker.
CLASSIFIERS: dict[str, str] = {
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "BSD License": "BSD-3-Clause",
    "Apache Software License": "Apache-2.0",
    "ISC License (ISCL)": "ISC",
    "Python Software Foundation License": "PSF-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "zlib/libpng License": "Zlib",
    "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "University of Illinois/NCSA Open Source License": "NCSA",
    "Universal Permissive License (UPL)": "UPL-1.0",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}

# Free-text names (License field, package.json) -> SPDX id; checked in order, first match wins.
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), spdx)
    for p, spdx in (
        (r"\b(?:a|l)?gpl|general public licen[cs]e", "GPL"),
        (r"\bmpl\b|mozilla public", "MPL-2.0"),
        (r"\beupl\b|\bepl\b|eclipse public|\bcddl\b", "EPL"),
        (r"\bmit\b|expat", "MIT"),
        (r"\bbsd\b", "BSD-3-Clause"),
        (r"apache", "Apache-2.0"),
        (r"\bisc\b", "ISC"),
        (r"\bpsf\b|python software foundation", "PSF-2.0"),
        (r"unlicense", "Unlicense"),
        (r"\bcc0\b", "CC0-1.0"),
        (r"\bzlib\b", "Zlib"),
        (r"\bhpnd\b", "HPND"),
        (r"boost software", "BSL-1.0"),
    )
)

# Phrases of licence texts (a LICENSE file or a License field holding the whole text) -> SPDX id.
_TEXT_SIGNATURES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), spdx)
    for p, spdx in (
        (r"GNU (?:AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE", "GPL"),
        (r"Mozilla Public License", "MPL-2.0"),
        (r"Eclipse Public License", "EPL"),
        (r"Permission is hereby granted,\s+free of charge", "MIT"),
        (r"Redistribution and use in source and binary forms", "BSD-3-Clause"),
        (r"Apache License,?\s+Version 2\.0", "Apache-2.0"),
        (r"Permission to use, copy, modify, and(?:/or)? distribute this software for any\s+purpose", "ISC"),
        (r"PYTHON SOFTWARE FOUNDATION LICENSE", "PSF-2.0"),
        (r"This is free and unencumbered software released into the public domain", "Unlicense"),
        (r"This software is provided 'as-is', without any express or implied", "Zlib"),
        (r"Boost Software License", "BSL-1.0"),
    )
)


def verdict_of_id(spdx: str) -> str:
    """permissive, copyleft or unknown for one SPDX id (a trailing "+" and "-only"/"-or-later" are ignored)."""
    key = spdx.strip().lower().removesuffix("+")
    if key in PERMISSIVE_IDS:
        return PERMISSIVE
    if key.startswith(COPYLEFT_PREFIXES):
        return COPYLEFT
    return UNKNOWN


@dataclass(frozen=True, slots=True)
class Licence:
    """What a package's licence was judged to be, from which metadata, and the ids found there."""

    verdict: str  # permissive | copyleft | unknown
    ids: tuple[str, ...] = ()
    source: str = ""  # License-Expression | classifier | License | licence file | package.json

    @property
    def permissive(self) -> bool:
        return self.verdict == PERMISSIVE


_SPDX_TOKEN = re.compile(r"\(|\)|[A-Za-z0-9][A-Za-z0-9.+:\-]*")


def spdx_verdict(expression: str) -> Licence:
    """Judge an SPDX expression: OR keeps the best branch, AND the worst, WITH exceptions keep the base licence.

    An expression that does not parse is unknown.
    """
    tokens = _SPDX_TOKEN.findall(expression)
    if not tokens or "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", expression):
        return Licence(UNKNOWN, (expression.strip(),), "License-Expression")
    pos = 0
    ids: list[str] = []
    rank = {COPYLEFT: 0, UNKNOWN: 1, PERMISSIVE: 2}

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> str:
        tok = take()
        if tok == "(":
            v = disjunction()
            if peek() != ")":
                raise ValueError("unbalanced parentheses")
            take()
            return v
        if tok.upper() in ("AND", "OR", "WITH", ")"):
            raise ValueError(f"unexpected {tok}")
        ids.append(tok)
        if peek() is not None and peek().upper() == "WITH":  # type: ignore[union-attr]
            take()
            take()  # the exception keeps the base licence's verdict
        return UNKNOWN if tok.lower().startswith(("licenseref-", "documentref-")) else verdict_of_id(tok)

    def conjunction() -> str:
        v = atom()
        while peek() is not None and peek().upper() == "AND":  # type: ignore[union-attr]
            take()
            w = atom()
            v = v if rank[v] <= rank[w] else w
        return v

    def disjunction() -> str:
        v = conjunction()
        while peek() is not None and peek().upper() == "OR":  # type: ignore[union-attr]
            take()
            w = conjunction()
            v = v if rank[v] >= rank[w] else w
        return v

    try:
        verdict = disjunction()
        if pos != len(tokens):
            raise ValueError("trailing tokens")
    except (ValueError, IndexError):
        return Licence(UNKNOWN, (expression.strip(),), "License-Expression")
    return Licence(verdict, tuple(ids), "License-Expression")


def _combine(ids: list[str], source: str) -> Licence | None:
    """All ids found by one source: permissive only if every one is; any copyleft id makes it copyleft."""
    if not ids:
        return None
    ids = list(dict.fromkeys(ids))
    verdicts = {verdict_of_id(i) for i in ids}
    if COPYLEFT in verdicts:
        return Licence(COPYLEFT, tuple(ids), source)
    if verdicts == {PERMISSIVE}:
        return Licence(PERMISSIVE, tuple(ids), source)
    return Licence(UNKNOWN, tuple(ids), source)


def name_verdict(text: str, source: str) -> Licence | None:
    """A short licence name ("MIT", "BSD 3-Clause", "Apache 2.0", "GPLv3+") or SPDX expression; None if unnamed."""
    text = text.strip()
    if not text or text.upper() in ("UNKNOWN", "NONE", "UNLICENSED", "SEE LICENSE", "OTHER"):
        return None
    spdx = spdx_verdict(text)
    if spdx.verdict != UNKNOWN:
        return Licence(spdx.verdict, spdx.ids, source)
    for pattern, spdx_id in _NAME_PATTERNS:
        if pattern.search(text):
            return _combine([spdx_id], source)
    return None


def text_verdict(text: str, source: str) -> Licence | None:
    """A licence's full text: judged by the earliest known licence phrase (bundled licences follow the main one)."""
    hits = [(m.start(), spdx) for pattern, spdx in _TEXT_SIGNATURES if (m := pattern.search(text))]
    if not hits:
        return None
    return _combine([min(hits)[1]], source)


def _field(meta: Message | metadata.PackageMetadata, key: str) -> str:
    values = meta.get_all(key) or []
    return str(values[0]) if values else ""


def classify_metadata(meta: Message | metadata.PackageMetadata, licence_texts: Iterable[str] = ()) -> Licence:
    """A Python distribution's licence from its core metadata, most authoritative first: License-Expression
    (PEP 639), trove classifiers, the License field (a name or the whole text), then its licence files."""
    expression = _field(meta, "License-Expression")
    if expression:
        found = spdx_verdict(str(expression))
        if found.verdict != UNKNOWN:
            return found
    classifier_ids: list[str] = []
    for c in meta.get_all("Classifier") or []:
        parts = [p.strip() for p in str(c).split("::")]
        if not parts or parts[0] != "License":
            continue
        leaf = parts[-1]
        if leaf in CLASSIFIERS:
            classifier_ids.append(CLASSIFIERS[leaf])
        elif "GPL" in leaf or "General Public" in leaf:
            classifier_ids.append("GPL")
        elif "Mozilla" in leaf:
            classifier_ids.append("MPL-2.0")
        elif leaf in ("Other/Proprietary License", "Freely Distributable", "Freeware"):
            classifier_ids.append(f"LicenseRef-{leaf}")
    found_c = _combine(classifier_ids, "classifier")
    if found_c is not None and found_c.verdict != UNKNOWN:
        return found_c
    field_text = _field(meta, "License")
    if field_text.strip():
        looks_like_text = "\n" in field_text.strip() or len(field_text) > 100
        found_f = text_verdict(field_text, "License") if looks_like_text else name_verdict(field_text, "License")
        if found_f is None and looks_like_text:
            found_f = name_verdict(field_text.strip().splitlines()[0], "License")
        if found_f is not None and found_f.verdict != UNKNOWN:
            return found_f
    for text in licence_texts:
        found_t = text_verdict(text, "licence file")
        if found_t is not None and found_t.verdict != UNKNOWN:
            return found_t
    if found_c is not None:
        return found_c
    return Licence(UNKNOWN, (), "")


def classify_package_json(data: dict[str, Any]) -> Licence:
    """An npm package's licence from package.json: `license` (SPDX expression or {type}) or the old `licenses`."""
    lic = data.get("license")
    names: list[str] = []
    if isinstance(lic, str):
        names.append(lic)
    elif isinstance(lic, dict) and isinstance(lic.get("type"), str):
        names.append(lic["type"])
    old = data.get("licenses")
    if isinstance(old, list):
        names += [x["type"] for x in old if isinstance(x, dict) and isinstance(x.get("type"), str)]
    if not names:
        return Licence(UNKNOWN, (), "package.json")
    if len(names) == 1:
        found = name_verdict(names[0], "package.json")
        return found or Licence(UNKNOWN, (names[0],), "package.json")
    # Several entries in `licenses` are alternatives (dual licensing): one permissive entry suffices.
    verdicts = [name_verdict(n, "package.json") for n in names]
    best = [v for v in verdicts if v is not None and v.permissive]
    return best[0] if best else Licence(UNKNOWN, tuple(names), "package.json")


# ---------------------------------------------------------------------------------------------------------------
# Collecting documents


PY_SUFFIXES = (".py",)
JS_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx")
LANGUAGE_OF = {
    ".py": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
}


@dataclass(frozen=True, slots=True)
class Document:
    """One source file of a package: the unit the FIM transform and the held-out split work on."""

    package: str
    path: str  # relative to the package's install root, '/'-separated
    language: str
    text: str


@dataclass
class Package:
    """One distribution found in a source folder, what its licence was judged to be, and what became of it."""

    name: str
    version: str
    ecosystem: str  # python | npm
    root: str  # where its files are
    licence: Licence
    files: list[str] = field(default_factory=list)  # candidate source files (relative to root)
    status: str = ""  # train | heldout | skipped | unused
    reason: str = ""  # why skipped or unused
    files_kept: int = 0
    bytes_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["licence"] = {"verdict": self.licence.verdict, "ids": list(self.licence.ids), "source": self.licence.source}
        d.pop("files")
        d["files_found"] = len(self.files)
        return d


def default_sources() -> list[str]:
    """The running interpreter's site-packages folders."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _licence_texts(dist: metadata.Distribution) -> list[str]:
    names = [str(x) for x in dist.metadata.get_all("License-File") or []]
    texts: list[str] = []
    for f in dist.files or []:
        parts = f.parts
        is_meta = bool(parts) and parts[0].endswith((".dist-info", ".egg-info"))
        base = f.name.upper()
        if is_meta and (f.name in names or base.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE"))):
            try:
                texts.append(Path(str(dist.locate_file(f))).read_text("utf-8", errors="replace"))
            except OSError:
                continue
    return texts


def find_python_packages(sources: Iterable[str]) -> list[Package]:
    """Every distribution installed in the given site-packages folders, with its licence and .py files."""
    found: dict[str, Package] = {}
    for src in sources:
        for dist in sorted(metadata.distributions(path=[src]), key=lambda d: _field(d.metadata, "Name")):
            name = _field(dist.metadata, "Name")
            if not name or name.lower() in found:
                continue
            lic = classify_metadata(dist.metadata, _licence_texts(dist))
            files = sorted(
                str(f)
                for f in dist.files or []
                if f.suffix in PY_SUFFIXES and ".." not in f.parts and not f.parts[0].endswith(".dist-info")
            )
            found[name.lower()] = Package(name, str(dist.version), "python", src, lic, files)
    return list(found.values())


def _node_package_dirs(node_modules: Path) -> Iterator[Path]:
    for child in sorted(node_modules.iterdir()):
        if child.name.startswith("."):
            continue
        if child.name.startswith("@") and child.is_dir():
            yield from (c for c in sorted(child.iterdir()) if (c / "package.json").is_file())
        elif (child / "package.json").is_file():
            yield child


def find_npm_packages(node_modules: Iterable[str]) -> list[Package]:
    """Packages in node_modules folders (nested node_modules included), licence from package.json, JS/TS files."""
    found: dict[str, Package] = {}
    queue = [Path(p) for p in node_modules]
    while queue:
        nm = queue.pop(0)
        if not nm.is_dir():
            continue
        for pkg_dir in _node_package_dirs(nm):
            try:
                data = json.loads((pkg_dir / "package.json").read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(data, dict):
                continue
            if (pkg_dir / "node_modules").is_dir():
                queue.append(pkg_dir / "node_modules")
            name, version = str(data.get("name") or pkg_dir.name), str(data.get("version") or "")
            key = f"npm:{name}@{version}"
            if key in found:
                continue
            files = sorted(
                p.relative_to(pkg_dir).as_posix()
                for p in pkg_dir.rglob("*")
                if p.suffix in JS_SUFFIXES
                and "node_modules" not in p.relative_to(pkg_dir).parts
                and not p.name.endswith((".min.js", ".min.mjs"))
                and p.is_file()
            )
            found[key] = Package(name, version, "npm", str(pkg_dir), classify_package_json(data), files)
    return list(found.values())


@dataclass
class Collected:
    """The documents for training and for held-out evaluation, and the manifest describing every package."""

    train: list[Document]
    heldout: list[Document]
    packages: list[Package]
    files_dropped: Counter[str]

    def manifest(self, sources: list[str], node_modules: list[str], settings: dict[str, Any]) -> dict[str, Any]:
        skipped = Counter(p.reason for p in self.packages if p.status == "skipped")
        licences = Counter(
            "+".join(p.licence.ids) or p.licence.verdict for p in self.packages if p.status in ("train", "heldout")
        )
        return {
            "sources": sources,
            "node_modules": node_modules,
            "settings": settings,
            "totals": {
                "packages_found": len(self.packages),
                "packages_train": sum(p.status == "train" for p in self.packages),
                "packages_heldout": sum(p.status == "heldout" for p in self.packages),
                "packages_skipped": sum(p.status == "skipped" for p in self.packages),
                "packages_unused": sum(p.status == "unused" for p in self.packages),
                "files_train": len(self.train),
                "files_heldout": len(self.heldout),
                "bytes_train": sum(len(d.text.encode()) for d in self.train),
                "bytes_heldout": sum(len(d.text.encode()) for d in self.heldout),
            },
            "skipped_by_reason": dict(sorted(skipped.items())),
            "files_dropped_by_reason": dict(sorted(self.files_dropped.items())),
            "licences_used": dict(sorted(licences.items())),
            "heldout": sorted(p.name for p in self.packages if p.status == "heldout"),
            "packages": [p.to_dict() for p in sorted(self.packages, key=lambda p: (p.ecosystem, p.name.lower()))],
        }


class SourceError(Exception):
    """The sources give nothing to train on, or a held-out package is not usable; the message says what to do."""


def _read_documents(
    pkg: Package, seen: set[str], forbidden: tuple[str, ...], filters: FilterConfig, max_file_bytes: int
) -> tuple[list[Document], Counter[str]]:
    docs: list[Document] = []
    dropped: Counter[str] = Counter()
    root = Path(pkg.root)
    for rel in pkg.files:
        path = root / rel
        try:
            if path.stat().st_size > max_file_bytes:
                dropped["too_large"] += 1
                continue
            data = path.read_bytes()
        except OSError:
            dropped["unreadable"] += 1
            continue
        text, reason = decode_and_filter(rel, data, filters)
        if text is None:
            dropped[reason or "filtered"] += 1
            continue
        if any(tok in text for tok in forbidden):
            dropped["contains_sentinel_token"] += 1  # would be read as a special token: teaches nonsense
            continue
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            dropped["exact_duplicate"] += 1
            continue
        seen.add(digest)
        suffix = Path(rel).suffix
        docs.append(Document(pkg.name, rel, LANGUAGE_OF.get(suffix, "python"), text))
    return docs, dropped


def _sample_up_to(docs: list[Document], max_bytes: int, rng: random.Random) -> list[Document]:
    """A seeded sample of whole documents whose text totals at most max_bytes, in their original order."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    keep: set[int] = set()
    total = 0
    for i in order:
        n = len(docs[i].text.encode())
        if total + n <= max_bytes:
            keep.add(i)
            total += n
    return [d for i, d in enumerate(docs) if i in keep]


def size(pkg: Package) -> int:
    """Bytes of a package's candidate source files on disk (before filters)."""
    root = Path(pkg.root)
    total = 0
    for rel in pkg.files:
        try:
            total += (root / rel).stat().st_size
        except OSError:
            continue
    return total


def _held_out(
    packages: list[Package], usable: list[Package], sources: list[str], holdout: list[str], count: int, seed: int
) -> list[Package]:
    """The packages held out: those named (each must be usable), else a seeded choice of `count` mid-sized ones."""
    by_name = {p.name.lower(): p for p in packages}
    chosen: list[Package] = []
    for name in holdout:
        pkg = by_name.get(name.lower())
        if pkg is None:
            raise SourceError(f"--holdout {name}: no installed package of that name in {', '.join(sources)}")
        if pkg.status:
            raise SourceError(f"--holdout {name}: the package is {pkg.status} ({pkg.reason}); hold out another one")
        chosen.append(pkg)
    if not holdout and count > 0:
        # Mid-sized packages (by source bytes) make a held-out set that is neither trivial nor dominant.
        sized = sorted(usable, key=lambda p: p.name.lower())
        pool = [p for p in sized if 20_000 <= size(p) <= 1_000_000] or sized
        chosen = random.Random(seed).sample(pool, min(count, max(len(pool) - 1, 0)))
    return chosen


def collect(
    sources: list[str],
    node_modules: list[str],
    *,
    holdout: list[str],
    holdout_count: int,
    max_bytes: int,
    seed: int,
    forbidden: tuple[str, ...] = (),
    max_file_bytes: int = 500_000,
    max_package_bytes: int = 0,
) -> Collected:
    """Find packages, keep permissive ones, hold out whole packages, and read training documents up to
    `max_bytes` (0: no cap): packages in a seeded order, each one that still fits under the cap. A package larger
    than `max_package_bytes` (0: no such cap) gives a seeded sample of its files up to that size instead of all
    of them. Files with one of the `forbidden` strings (the tokenizer's special tokens) are dropped."""
    packages = find_python_packages(sources) + find_npm_packages(node_modules)
    for p in packages:
        if not p.licence.permissive:
            p.status = "skipped"
            p.reason = "copyleft licence" if p.licence.verdict == COPYLEFT else "unknown licence"
        elif not p.files:
            p.status, p.reason = "skipped", "no source files"
    usable = [p for p in packages if not p.status]

    chosen = _held_out(packages, usable, sources, holdout, holdout_count, seed)

    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    filters = FilterConfig()
    heldout: list[Document] = []
    for pkg in sorted(chosen, key=lambda p: p.name.lower()):
        pkg.status = "heldout"
        docs, why = _read_documents(pkg, seen, forbidden, filters, max_file_bytes)
        dropped += why
        pkg.files_kept, pkg.bytes_kept = len(docs), sum(len(d.text.encode()) for d in docs)
        heldout += docs

    train: list[Document] = []
    total = 0
    order = sorted((p for p in usable if not p.status), key=lambda p: p.name.lower())
    random.Random(seed + 1).shuffle(order)
    for pkg in order:
        expected = min(size(pkg), max_package_bytes) if max_package_bytes else size(pkg)
        if max_bytes and total + expected > max_bytes:
            pkg.status, pkg.reason = "unused", "larger than the room left under the data cap"
            continue
        docs, why = _read_documents(pkg, seen, forbidden, filters, max_file_bytes)
        dropped += why
        if max_package_bytes and sum(len(d.text.encode()) for d in docs) > max_package_bytes:
            found = len(docs)
            docs = _sample_up_to(docs, max_package_bytes, random.Random(f"{seed}:{pkg.name}"))
            pkg.reason = f"sampled {len(docs)} of {found} files (package cap)"
        if not docs:
            pkg.status, pkg.reason = "skipped", "no file left after filters"
            continue
        pkg.status = "train"
        pkg.files_kept, pkg.bytes_kept = len(docs), sum(len(d.text.encode()) for d in docs)
        total += pkg.bytes_kept
        train += docs
    if not train:
        where = ", ".join(sources + node_modules) or "no source folder"
        raise SourceError(
            f"no training file left in {where}: {len(usable)} permissive packages with source files, "
            f"{len(chosen)} held out, files dropped: {dict(dropped) or 'none'}; pass --sources with a site-packages "
            "folder (or --node-modules) holding more MIT/BSD/Apache packages, or raise --max-data-mb"
        )
    return Collected(train, heldout, packages, dropped)
