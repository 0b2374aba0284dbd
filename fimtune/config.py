"""Typed configuration for each command: a YAML file gives defaults, command-line flags override them."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A setting is wrong; the message names the setting (and the file when there is one)."""


@dataclass
class WalkConfig:
    """Which files of a repository are read at all."""

    max_file_bytes: int = 1_000_000
    # Folder names skipped anywhere in a repository (vendored code, build output, virtual environments).
    skip_dirs: list[str] = field(
        default_factory=lambda: [
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
        ]
    )
    ignore_files: list[str] = field(default_factory=lambda: [".gitignore", ".fimtuneignore"])


@dataclass
class FilterConfig:
    """Content filters: generated, minified and oddly shaped files are dropped."""

    max_line_length: int = 1000
    max_mean_line_length: float = 120.0
    min_alnum_fraction: float = 0.25
    min_lines: int = 3


@dataclass
class SecretsConfig:
    """What happens to a file with a detected secret: "redact" replaces the value, "drop" skips the file."""

    action: str = "redact"
    placeholder: str = "<REDACTED>"


@dataclass
class DedupConfig:
    """Exact and near-duplicate removal across every repository of a build (MinHash + LSH)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    shingle_tokens: int = 5
    # "drop": keep one file per near-duplicate group; "keep": keep all, on the side of the split of the first.
    near_action: str = "drop"


@dataclass
class SpanConfig:
    """How middles are chosen: a weighted mix of kinds, caps, and how many examples a file yields."""

    mix: dict[str, float] = field(
        default_factory=lambda: {
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
        }
    )
    max_middle_lines: int = 40
    max_middle_bytes: int = 2_000
    examples_per_kb: float = 1.0
    min_examples_per_file: int = 1
    max_examples_per_file: int = 32


@dataclass
class ContextConfig:
    """Cross-file context attached to each example (filled by the shared retriever)."""

    enabled: bool = True
    max_chars: int = 4_000
    max_snippets: int = 8
    window_lines: int = 20
    window_stride: int = 10
    query_lines: int = 20
    definitions_share: float = 0.5


@dataclass
class CorpusConfig:
    """Everything `fimtune build-corpus` does; recorded in full in manifest.json."""

    repos: list[str] = field(default_factory=list)
    out: str = "corpora/out/default"
    languages: list[str] = field(default_factory=list)  # empty: every supported language
    workers: int = 0  # 0: all cores
    seed: int = 0
    split: str = "auto"  # auto: by repository when several are given, else by file
    test_fraction: float = 0.1
    shard_examples: int = 50_000
    walk: WalkConfig = field(default_factory=WalkConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    spans: SpanConfig = field(default_factory=SpanConfig)
    context: ContextConfig = field(default_factory=ContextConfig)

    def validate(self) -> None:
        from fimtune.languages import UnknownLanguageError, check_languages

        try:
            check_languages(self.languages)
        except UnknownLanguageError as e:
            raise ConfigError(f"languages: {e}") from None
        if self.split not in ("auto", "repo", "file"):
            raise ConfigError(f"split: must be auto, repo or file, not {self.split!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction: must be in [0, 1), not {self.test_fraction}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be 0 (all cores) or more, not {self.workers}")
        if self.secrets.action not in ("redact", "drop"):
            raise ConfigError(f"secrets.action: must be redact or drop, not {self.secrets.action!r}")
        if self.dedup.near_action not in ("drop", "keep"):
            raise ConfigError(f"dedup.near_action: must be drop or keep, not {self.dedup.near_action!r}")
        if not 0.0 < self.dedup.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold: must be in (0, 1], not {self.dedup.threshold}")
        if any(w < 0 for w in self.spans.mix.values()) or sum(self.spans.mix.values()) <= 0:
            raise ConfigError("spans.mix: weights must be non-negative and not all zero")
        if self.shard_examples < 1:
            raise ConfigError("shard_examples: must be at least 1")


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; errors name the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], yaml_path: str | Path | None, overrides: dict[str, Any]) -> T:
    """YAML defaults, then flag overrides (None means "not given"). Errors name the file or flag."""
    data: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if yaml_path:
            raise ConfigError(f"{yaml_path}: {e}") from None
        raise
