"""Typed configuration for each command: a YAML file gives defaults, command-line flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A setting is wrong; the message names the setting (and the file when there is one)."""


# --- Settings named once -------------------------------------------------------------------------------------
# Each setting is one dataclass field made with `setting(...)`: its default, its help, the rule its value must
# keep and whether it is also a command-line flag. The flags (`add_flags`), the YAML reader (`from_dict`), the
# checks (`check`) and the language server's settings parser all read that one field.


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be; `problem` says how a value breaks it, in words a message can use."""

    choices: tuple[Any, ...] = ()
    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None  # a lower bound the value may not equal
    below: float | None = None  # an upper bound the value may not equal
    zero: str = ""  # 0 is allowed too, and means this (e.g. "all cores")
    must: str = ""  # with `test`: what the test asks, e.g. "a valid regular expression"
    test: Callable[[Any], bool] | None = None
    each: bool = False  # a list setting: the rule holds for each item (a message names the item: `name[2]`)

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.must:
            return self.must
        lo, hi = (self.at_least, self.above), (self.at_most, self.below)
        if lo != (None, None) and hi != (None, None):
            if self.above is None and self.below is None and all(isinstance(b, int) for b in (lo[0], hi[0])):
                text = f"from {self.at_least} to {self.at_most}"
            else:
                left = "[" if self.above is None else "("
                right = "]" if self.below is None else ")"
                text = f"in {left}{_num(lo)}, {_num(hi)}{right}"
        elif lo != (None, None):
            text = f"at least {self.at_least}" if self.above is None else f"more than {self.above}"
        elif hi != (None, None):
            text = f"at most {self.at_most}" if self.below is None else f"less than {self.below}"
        else:
            return ""
        return f"0 ({self.zero}) or {text}" if self.zero else text

    def problem(self, value: Any) -> str | None:
        """None when `value` keeps the rule, else "must be ...". Values are already of the field's type."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.choices and value not in self.choices:
            return f"must be {self.describe()}"
        if self.test is not None and not self.test(value):
            return f"must be {self.describe()}"
        if not isinstance(value, int | float) or isinstance(value, bool) or (self.zero and value == 0):
            return None
        if (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.at_most is not None and value > self.at_most)
            or (self.below is not None and value >= self.below)
        ):
            return f"must be {self.describe()}"
        return None


def _num(bound: tuple[float | None, float | None]) -> float | None:
    return bound[0] if bound[0] is not None else bound[1]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    help: str = "",
    flag: bool | str = False,
    flag_help: str = "",
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    **rule: Any,
) -> Any:
    """A config field: default (or `factory`), `help` (for --help and the docs), `flag` (True: a command-line
    flag named after the dotted setting, e.g. --lora-r; a string: that flag name), `flag_help` (the flag's help
    where it differs, e.g. for --no-context), `parse` (how the flag's text becomes a value) and the keywords of
    `Rule`."""
    meta: dict[str, Any] = {"help": help, "flag": flag, "flag_help": flag_help, "metavar": metavar, "parse": parse}
    meta["rule"] = Rule(**rule)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    return f.metadata.get("rule") or Rule()


def bad_value(setting_name: str, problem: str, value: Any) -> str:
    """The one-line message every check gives: `workers: must be 0 (all cores) or at least 1, not -2`."""
    return f"{setting_name}: {problem}, not {value!r}"


def iter_settings(cls: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted name, field, type hint) of every leaf setting of a config dataclass, nested ones included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from iter_settings(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hint


def check(obj: Any, where: str = "", *, flags: bool = False) -> None:
    """Every setting of `obj` (nested ones too) against its rule; the first broken one is a ConfigError naming
    the setting (with `flags`, its flag where it has one: `--max-tokens`)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check(value, name, flags=flags)
            continue
        if flags and f.metadata.get("flag"):
            name = flag_name(name, f)
        rule = rule_of(f)
        items = list(enumerate(value)) if rule.each else [(None, value)]
        for i, item in items:
            problem = rule.problem(item)
            if problem is not None:
                raise ConfigError(bad_value(name if i is None else f"{name}[{i}]", problem, item))


def flag_name(dotted: str, f: dataclasses.Field[Any]) -> str:
    flag = f.metadata.get("flag")
    return flag if isinstance(flag, str) else "--" + dotted.replace(".", "-").replace("_", "-")


def _default_text(f: dataclasses.Field[Any]) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, list):
        return " ".join(map(str, value))
    zero = rule_of(f).zero
    if zero and value == 0:
        return f"0, {zero}"
    return "" if value is None else str(value)


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: Any,
    *,
    exclusive: Sequence[Sequence[str]] = (),
) -> None:
    """A flag for each setting of `cls` marked `flag=...`, its help, choices and default from the field. A flag
    not given is None in the namespace (`given_flags` leaves it out), so the YAML file or the default decides.
    `exclusive`: groups of dotted settings whose flags exclude each other."""
    groups: dict[str, Any] = {}
    for names in exclusive:
        group = parser.add_mutually_exclusive_group()
        groups.update({n: group for n in names})
    for dotted, f, hint in iter_settings(cls):
        if not f.metadata.get("flag"):
            continue
        rule = rule_of(f)
        text = f.metadata.get("flag_help") or f.metadata.get("help", "")
        default = _default_text(f)
        if default and "default" not in text and f"{default}:" not in text and hint is not bool:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": dotted, "help": text, "default": None}
        if hint is bool:
            kwargs.update(action="store_const", const=not f.default)
        else:
            # Choices are shown, not enforced by argparse: `check` refuses a bad one with the same one-line
            # message a YAML file or a client's setting gets.
            choices = "{" + ",".join(map(str, rule.choices)) + "}" if rule.choices else ""
            kwargs["metavar"] = f.metadata.get("metavar") or choices or dotted.rpartition(".")[2].upper()
            if typing.get_origin(hint) is list and f.metadata.get("parse") is None:
                kwargs["nargs"] = "+"
                (item,) = typing.get_args(hint)
                kwargs["type"] = item
            else:
                kwargs["type"] = f.metadata.get("parse") or hint
        groups.get(dotted, parser).add_argument(flag_name(dotted, f), **kwargs)


def given_flags(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The settings of `cls` given as flags: dotted name -> value."""
    values = vars(args)
    return {d: values[d] for d, f, _ in iter_settings(cls) if f.metadata.get("flag") and values.get(d) is not None}


def _pattern_ok(pattern: str) -> bool:
    try:
        re.compile(f"(?:{pattern})")  # as the markers are joined: a global flag such as (?i) fails here too
    except re.error:
        return False
    return True


@dataclass
class WalkConfig:
    """Which files of a repository are read at all."""

    max_file_bytes: int = setting(1_000_000, help="larger files are skipped", at_least=1)
    skip_dirs: list[str] = setting(
        help="folder names skipped anywhere in a repository (vendored code, build output, virtual environments)",
        factory=lambda: [
            ".git",
            ".hg",
            ".svn",
            "node_modules",
            "vendor",
            "third_party",
            "third-party",
            "dist",
            "build",
            "out",
            "target",
            ".venv",
            "venv",
            "env",
            ".env",
            ".tox",
            ".nox",
            "__pycache__",
            ".mypy_cache",
            ".pytest_cache",
            ".ruff_cache",
            "site-packages",
            ".next",
            ".gradle",
            ".idea",
            "bower_components",
        ],
    )
    ignore_files: list[str] = setting(
        help="gitignore-style files read in every folder", factory=lambda: [".gitignore", ".fimtuneignore"]
    )
    # Gitignore-style patterns for files dropped by name: secrets, lock files, generated code.
    env_files: list[str] = setting(
        help="secrets files, dropped by name", factory=lambda: [".env", ".env.*", "*.env", ".envrc"]
    )
    lock_files: list[str] = setting(
        help="lock files, dropped by name",
        factory=lambda: [
            "*.lock",
            "package-lock.json",
            "npm-shrinkwrap.json",
            "pnpm-lock.yaml",
            "bun.lockb",
            "go.sum",
            "gradle.lockfile",
            "packages.lock.json",
            "*.lockfile",
        ],
    )
    generated_names: list[str] = setting(
        help="generated files, dropped by name",
        factory=lambda: [
            "*.min.js",
            "*.min.mjs",
            "*.min.css",
            "*-min.js",
            "*.bundle.js",
            "*_pb2.py",
            "*_pb2.pyi",
            "*_pb2_grpc.py",
            "*.pb.go",
            "*.pb.gw.go",
            "*.pb.cc",
            "*.pb.h",
            "*.pb.c",
            "*.pb-c.c",
            "*.pb-c.h",
            "*.generated.*",
            "*_generated.*",
            "*.gen.go",
            "*.g.dart",
            "*.designer.cs",
            "*.map",
        ],
    )


@dataclass
class FilterConfig:
    """Content filters: generated, minified and oddly shaped files are dropped."""

    max_line_length: int = setting(1000, help="a file with a longer line is dropped (minified)", at_least=1)
    max_mean_line_length: float = setting(120.0, help="a file with longer lines on average is dropped", above=0)
    min_alnum_fraction: float = setting(
        0.25,
        help="share of letters and digits among visible characters below which a file is dropped",
        at_least=0,
        at_most=1,
    )
    min_lines: int = setting(3, help="shorter files are dropped", at_least=0)
    generated_markers: list[str] = setting(
        help="regular expressions that mark a generated file when found in its first generated_header_lines lines",
        must="a valid regular expression, with scoped flags such as (?i:...) rather than (?i)",
        test=_pattern_ok,
        each=True,
        factory=lambda: [
            r"@generated\b",
            r"\bDO NOT EDIT\b",
            r"\bCode generated by\b",
            r"(?i:\bauto-?generated\b)",
            r"(?i:\bthis file (?:was|is|has been) (?:automatically |auto-|machine[- ])?generated\b)",
            r"(?i:\bgenerated by the protocol buffer compiler\b)",
        ],
    )
    generated_header_lines: int = setting(20, help="lines searched for generated_markers", at_least=1)


@dataclass
class SecretsConfig:
    """What happens to a file with a detected secret: "redact" replaces the value, "drop" skips the file."""

    action: str = setting("redact", help="redact: replace the value; drop: skip the file", choices=("redact", "drop"))
    placeholder: str = setting("<REDACTED>", help="what a redacted value becomes")


@dataclass
class DedupConfig:
    """Exact and near-duplicate removal across every repository of a build (MinHash + LSH)."""

    exact: bool = setting(True, help="drop files whose text another file has")
    near: bool = setting(True, help="find near-duplicate files (MinHash + LSH)")
    threshold: float = setting(0.85, help="estimated Jaccard similarity of near duplicates", above=0, at_most=1)
    num_perm: int = setting(128, help="MinHash permutations", at_least=16)
    shingle_tokens: int = setting(5, help="tokens per shingle", at_least=1)
    near_action: str = setting(
        "drop",
        help="drop: keep one file per near-duplicate group; keep: keep all, on the split side of the first",
        choices=("drop", "keep"),
    )


def _mix_ok(mix: dict[str, float]) -> bool:
    return all(math.isfinite(w) and w >= 0 for w in mix.values()) and sum(mix.values()) > 0


@dataclass
class SpanConfig:
    """How middles are chosen: a weighted mix of kinds, caps, and how many examples a file yields."""

    mix: dict[str, float] = setting(
        help="weight of each middle kind",
        factory=lambda: {
            "line_rest": 0.2,
            "line": 0.1,
            "statement": 0.15,
            "statements": 0.1,
            "block": 0.1,
            "call_args": 0.08,
            "condition": 0.05,
            "assignment_rhs": 0.07,
            "random": 0.1,
            "empty": 0.05,
        },
        must="weights that are non-negative and not all zero",
        test=_mix_ok,
    )
    max_middle_lines: int = setting(40, help="longest middle in lines", at_least=1)
    max_middle_bytes: int = setting(2_000, help="longest middle in bytes", at_least=1)
    examples_per_kb: float = setting(1.0, help="examples per KB of a file", at_least=0)
    min_examples_per_file: int = setting(1, help="fewest examples a kept file gives", at_least=0)
    max_examples_per_file: int = setting(32, help="most examples a file gives", at_least=1)
    syntax_in_files_with_errors: bool = setting(
        True,
        help="a file with parse errors gets only line-based middles (line_rest, line, random, empty); with this "
        "on, also syntax middles from its top-level items that parsed without errors (C/C++ macros often break "
        "the parse of one function; the rest of the file is still good syntax)",
    )
    query_bytes_per_example: int = setting(
        256,
        help="syntax middles are looked for in windows of this many bytes, one per example, spread evenly over "
        "the file: a uniform sample of every candidate, for a fraction of the query's cost",
        zero="the whole file",
        at_least=1,
    )


@dataclass
class ContextConfig:
    """Cross-file context attached to each example (filled by the shared retriever)."""

    enabled: bool = setting(
        True, help="attach cross-file context", flag="--no-context", flag_help="do not attach cross-file context"
    )
    max_chars: int = setting(4_000, help="context characters per example", at_least=1)
    max_snippets: int = setting(8, help="snippets per example", at_least=1)
    window_lines: int = setting(20, help="lines per retrieval window", at_least=1)
    window_stride: int = setting(10, help="lines between window starts", at_least=1)
    query_lines: int = setting(20, help="lines before the cursor that make the query", at_least=1)
    definitions_share: float = setting(
        0.5, help="share of the context for definitions of imported names", at_least=0, at_most=1
    )
    definition_max_lines: int = setting(
        30, help='longest definition stub in lines: a longer class shows its first members, then "..."', at_least=1
    )
    # benchmarks/context_retrieval.py --max-postings on transformers' sources (79k windows): the share of a
    # middle's identifiers (not in the 20 lines before it) found in the context was 0.418 at 30,000, 0.434 at
    # 8,000, 0.446 at 3,000, 0.424 at 1,500 and 0.396 at 600; on pip's (12k windows) 0.316 at 30,000 and 0.314
    # at 3,000. The common tokens left out add noise more than signal, and each query reads 10x fewer postings.
    max_postings: int = setting(
        3_000,
        help="retrieval latency cap: rarest query tokens are scored first; stop once this many postings were scanned",
        at_least=1,
    )


@dataclass
class CorpusConfig:
    """Everything `fimtune build-corpus` does; recorded in full in manifest.json."""

    repos: list[str] = setting(help="repository folders", factory=list)
    out: str = setting("corpora/out/default", help="output folder", flag=True)
    languages: list[str] = setting(
        help="only these languages (default: all supported)",
        factory=list,
        flag=True,
    )
    workers: int = setting(0, help="processes", flag=True, zero="all cores", at_least=1)
    seed: int = setting(0, help="seed for every random choice", flag=True)
    split: str = setting(
        "auto",
        help="split by repository or file (auto: by repository when several are given, else by file)",
        flag=True,
        choices=("auto", "repo", "file"),
    )
    test_fraction: float = setting(
        0.1, help="share of repositories or files for the test split", flag=True, at_least=0, below=1
    )
    shard_examples: int = setting(10_000, help="examples per Parquet shard", at_least=1)
    walk: WalkConfig = field(default_factory=WalkConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    spans: SpanConfig = field(default_factory=SpanConfig)
    context: ContextConfig = field(default_factory=ContextConfig)

    def validate(self) -> None:
        check(self)
        from fimtune.languages import UnknownLanguageError, check_languages

        try:
            check_languages(self.languages)
        except UnknownLanguageError as e:  # names the language and the supported ones
            raise ConfigError(f"languages: {e}") from None


T = TypeVar("T")


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data (what manifest.json and fimtune.json record)."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a config dataclass from a dict; an unknown key or a wrong type names the setting."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        setting = f"{where}.{name}" if where else name
        if name not in known:
            raise ConfigError(f"unknown setting {setting!r}; known: {', '.join(sorted(known))}")
        kwargs[name] = _coerce(hints[name], value, setting)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, setting: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, setting)  # type: ignore[arg-type]
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, setting)
    if origin is list:
        if not isinstance(value, list | tuple):
            value = [value]
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{setting}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{setting}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(hint)
        return {str(k): _coerce(vt, v, f"{setting}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{setting}: expected true or false, got {value!r}")
    if hint in (int, float, str):
        if hint is not str and isinstance(value, bool):
            raise ConfigError(f"{setting}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{setting}: expected {hint.__name__}, got {value!r}") from None
    return value


MAX_YAML_ALIASES = 100  # a config needs few; thousands are an alias bomb (each one can double what it expands to)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document using more than MAX_YAML_ALIASES aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; errors name the file."""
    p = Path(path)
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_BoundedLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e)[:500]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], yaml_path: str | Path | None, flags: dict[str, Any]) -> T:
    """YAML defaults, then the flags given (`given_flags`: dotted setting -> value), each setting checked against
    its rule. Errors name the setting, and the file when it came from one."""
    data: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    for key, value in flags.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        cfg = from_dict(cls, data)
        check(cfg)
        return cfg
    except ConfigError as e:
        if yaml_path:
            raise ConfigError(f"{yaml_path}: {e}") from None
        raise
