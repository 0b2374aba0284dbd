"""`fimtune render`: show exactly what a model sees for corpus examples, middle marked, with token counts."""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fimtune.config import setting
from fimtune.fim_format import TEMPLATES
from fimtune.records import SPLITS, FimExample


@dataclass
class RenderConfig:
    """What `fimtune render` shows (every setting is a flag)."""

    corpus: str = setting("", help="corpus folder written by `fimtune build-corpus`", flag=True)
    template: str = setting(
        "auto",
        help="template name, or auto (needs --tokenizer)",
        flag=True,
        choices=("auto", *TEMPLATES),
        metavar="NAME",
    )
    tokenizer: str = setting("", help="tokenizer folder: exact token counts and budgets", flag=True)
    split: str = setting("train", help="corpus split", flag=True, choices=SPLITS)
    n: int = setting(3, help="how many examples", flag="-n", at_least=1)
    seed: int = setting(0, help="which examples are picked", flag=True)
    max_tokens: int = setting(2048, help="prompt + target budget in tokens", flag=True, at_least=1)
    max_middle_tokens: int = setting(256, help="tokens reserved for the middle", flag=True, at_least=1)
    json: bool = setting(False, help="one JSON object per line", flag=True)


def load_tokenizer(path: str) -> Any:
    """A tokenizer folder: through transformers (training's own loader) when installed, else `tokenizers`."""
    from fimtune.console import CommandError

    p = Path(path).expanduser()
    try:
        import transformers  # noqa: F401
    except ImportError:
        import tokenizers

        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.exists():
            raise CommandError(f"--tokenizer {path}: no tokenizer.json there") from None
        return tokenizers.Tokenizer.from_file(str(file))
    from fimtune.models import ModelError
    from fimtune.models import load_tokenizer as load_model_tokenizer

    if not p.exists():
        raise CommandError(f"--tokenizer {path}: no such folder")
    try:
        return load_model_tokenizer(p)
    except ModelError as e:
        raise CommandError(f"--tokenizer {path}: {e}") from None


def pick(examples: list[FimExample], n: int, seed: int) -> list[FimExample]:
    if n >= len(examples):
        return examples
    return sorted(random.Random(seed).sample(examples, n), key=lambda e: (e.repo, e.path, len(e.prefix)))


def show(ex: FimExample, rendered: Any, out: TextIO, color: bool) -> None:
    approx = "" if rendered.exact else " (approximate counts: no --tokenizer)"
    head = (
        f"=== {ex.id}  {ex.repo}/{ex.path}  {ex.span_kind}  template={rendered.template}  "
        f"prompt={rendered.prompt_tokens} target={rendered.target_tokens} tokens{approx}"
    )
    mark_on, mark_off = ("\x1b[7m", "\x1b[0m") if color else ("⟦", "⟧")
    out.write(f"{head}\n{rendered.prompt}{mark_on}{rendered.target}{mark_off}\n\n")


def cmd_render(args: argparse.Namespace) -> int:
    from fimtune.config import check, given_flags
    from fimtune.console import CommandError
    from fimtune.corpus.read import CorpusReadError, open_corpus
    from fimtune.fim_format import Budgets, FimFormatError
    from fimtune.prompting import resolve_prompt
    from fimtune.tokenizer import as_fim_tokenizer

    cfg = RenderConfig(**given_flags(args, RenderConfig))
    check(cfg, flags=True)
    if not cfg.corpus:
        raise CommandError("--corpus: give the corpus folder to render examples of (written by `fimtune build-corpus`)")
    try:
        corpus = open_corpus(cfg.corpus)
    except CorpusReadError as e:
        raise CommandError(str(e)) from None
    tokenizer = as_fim_tokenizer(load_tokenizer(cfg.tokenizer)) if cfg.tokenizer else None
    try:
        if cfg.template == "auto" and tokenizer is None:
            raise CommandError("--template auto needs --tokenizer; or name one, e.g. --template qwen2.5-coder")
        budgets = Budgets(max_tokens=cfg.max_tokens, max_middle_tokens=cfg.max_middle_tokens)
        spec = resolve_prompt(template=cfg.template, tokenizer=tokenizer, budgets=budgets)
        examples = pick(corpus.examples(cfg.split), cfg.n, cfg.seed)
        if not examples:
            raise CommandError(f"corpus {corpus.folder} has no {cfg.split} examples")
        color = not cfg.json and sys.stdout.isatty()
        for ex in examples:
            rendered = spec.render(ex, ex.middle)
            if cfg.json:
                record: dict[str, Any] = {
                    "example_id": ex.id,
                    "repo": ex.repo,
                    "path": ex.path,
                    "span_kind": ex.span_kind,
                    "template": spec.template.name,
                    "prompt": rendered.prompt,
                    "target": rendered.target,
                    "prompt_tokens": rendered.prompt_tokens,
                    "target_tokens": rendered.target_tokens,
                    "exact_counts": rendered.exact,
                    "context_kept": rendered.context_kept,
                }
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                show(ex, rendered, sys.stdout, color)
    except (FimFormatError, CorpusReadError) as e:
        raise CommandError(str(e)) from None
    return 0


def add_render_parser(sub: Any) -> None:
    from fimtune.config import add_flags

    p = sub.add_parser(
        "render",
        help="show exactly what the model sees for corpus examples",
        description="Render corpus examples through a model family's FIM template, the same code training and "
        "serving use. The target (middle + end text) is marked.",
    )
    add_flags(p, RenderConfig)
    p.set_defaults(func=cmd_render)
