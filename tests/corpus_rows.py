"""A corpus row built from a file and a span, as `build-corpus` writes it (corpus/write.py slices the bytes)."""

from __future__ import annotations

from fimtune.records import FimExample, Snippet, SourceFile, Span, example_id


def example_from_span(source: SourceFile, span: Span, context: tuple[Snippet, ...] = ()) -> FimExample:
    data = source.data
    return FimExample(
        id=example_id(source.repo, source.path, span),
        repo=source.repo,
        path=source.path,
        language=source.language,
        span_kind=span.kind,
        prefix=data[: span.start].decode("utf-8"),
        middle=data[span.start : span.end].decode("utf-8"),
        suffix=data[span.end :].decode("utf-8"),
        context=context,
        file_sha=source.sha,
    )
