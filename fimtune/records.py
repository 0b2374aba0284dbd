"""The record types passed between stages: SourceFile, Span, Snippet, FimExample."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "test")  # a corpus's splits


def sha256_hex(data: str | bytes) -> str:
    """Hex SHA-256 of a string (UTF-8) or bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One kept file of one repository. `path` is relative to the repo root and '/'-separated."""

    repo: str
    path: str
    language: str
    text: str

    @property
    def sha(self) -> str:
        return sha256_hex(self.text)

    @property
    def data(self) -> bytes:
        return self.text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Span:
    """A middle to cut out of a file: UTF-8 byte offsets [start, end) and what kind of code it is.

    `start == end` is an empty middle. Offsets always fall on character boundaries.
    """

    start: int
    end: int
    kind: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad span [{self.start}, {self.end})")


@dataclass(frozen=True, slots=True)
class Snippet:
    """Cross-file context: text from another file of the same repository.

    kind is "definition" (something the file imports) or "similar" (a lexically similar window).
    """

    path: str
    text: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "text": self.text, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snippet:
        return cls(path=str(d["path"]), text=str(d["text"]), kind=str(d["kind"]))


def example_id(repo: str, path: str, span: Span) -> str:
    """Stable id of an example: hash of (repo, path, span)."""
    return sha256_hex(f"{repo}\x00{path}\x00{span.start}\x00{span.end}\x00{span.kind}")[:24]


@dataclass(frozen=True, slots=True)
class FimExample:
    """One fill-in-the-middle example. `prefix + middle + suffix` is exactly the file's text."""

    id: str
    repo: str
    path: str
    language: str
    span_kind: str
    prefix: str
    middle: str
    suffix: str
    context: tuple[Snippet, ...] = field(default=())
    file_sha: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FimExample:
        return cls(
            id=row["id"],
            repo=row["repo"],
            path=row["path"],
            language=row["language"],
            span_kind=row["span_kind"],
            prefix=row["prefix"],
            middle=row["middle"],
            suffix=row["suffix"],
            context=tuple(Snippet.from_dict(d) for d in (row.get("context") or [])),
            file_sha=row.get("file_sha", ""),
        )
