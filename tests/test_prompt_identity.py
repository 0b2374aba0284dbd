"""Training and serving see identical bytes: a corpus example vs a live request for the same file and cursor.

The corpus side is the real `build_corpus` output (context from the pipeline's retriever); the live side is what
the server does: the file as the editor holds it (without the middle), the cursor as a byte offset, context
from a RepoIndex over the repository's files, and the same render call.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fimtune.config import ContextConfig, CorpusConfig
from fimtune.context import RepoIndex, index_file
from fimtune.corpus.pipeline import build_corpus
from fimtune.corpus.read import open_corpus
from fimtune.fim_format import FimRequest, get_template, render
from fimtune.languages import language_for_path
from fimtune.records import SourceFile
from fimtune.tokenizer import byte_tokenizer_for

FIXTURES = Path(__file__).parent / "fixtures" / "repos"


@pytest.mark.parametrize("repo", ["pyshop", "webkit"])
def test_corpus_example_and_live_request_render_identically(tmp_path: Path, repo: str) -> None:
    root = FIXTURES / repo
    cfg = CorpusConfig(repos=[str(root)], out=str(tmp_path / "c"), workers=1, test_fraction=0.0)
    build_corpus(cfg, progress=False)
    examples = open_corpus(tmp_path / "c").examples("train")
    assert examples

    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        lang = language_for_path(rel)
        if lang:
            files.append(SourceFile(repo, rel, lang, path.read_text()))
    context_cfg = ContextConfig(**vars(cfg.context))
    index = RepoIndex.build([index_file(f, context_cfg) for f in files], context_cfg)

    with_context = 0
    for name in ("fimtune", "qwen2.5-coder", "starcoder2", "codellama"):
        template = get_template(name)
        tokenizer = byte_tokenizer_for(template)
        for ex in examples:
            live_text = ex.prefix + ex.suffix  # the editor's buffer: the middle is not typed yet
            offset = len(ex.prefix.encode("utf-8"))
            context = index.retrieve(ex.path, ex.language, ex.prefix, ex.suffix)
            assert context == ex.context
            with_context += bool(context)
            live = FimRequest.at_cursor(ex.repo, ex.path, ex.language, live_text, offset, context)
            trained = render(template, ex, ex.middle, tokenizer)
            served = render(template, live, None, tokenizer)
            assert served.prompt.encode("utf-8") == trained.prompt.encode("utf-8")
            assert served.prompt_tokens == trained.prompt_tokens
    assert with_context > 0
