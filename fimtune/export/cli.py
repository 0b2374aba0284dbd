"""`fimtune export`: its settings (flags derived from them) and the command function."""

from __future__ import annotations

import argparse

from fimtune.console import say
from fimtune.export.run import ExportConfig


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from fimtune.config import add_flags

    p = sub.add_parser(
        "export",
        help="hand a run to llama.cpp (GGUF), Ollama or vLLM with its exact template",
        description="Export a `fimtune train` run (or a base model such as nano) for a serving stack: a GGUF "
        "converted with llama.cpp's own converter (adapter merged, FIM tokens in the metadata), an Ollama "
        "Modelfile with the template's stop strings, or the exact `vllm serve` command; each folder gets a README "
        "saying how to serve it and point `fimtune serve` and `fimtune eval` at it.",
    )
    p.add_argument("model", metavar="RUN", help="a `fimtune train` run folder, or a base model (nano, a folder)")
    add_flags(p, ExportConfig)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fimtune.config import check, given_flags
    from fimtune.console import CommandError
    from fimtune.export.llamacpp import LlamaCppError
    from fimtune.export.run import ExportError, export

    cfg = ExportConfig(**given_flags(args, ExportConfig))
    check(cfg, flags=True)
    source = Path(args.model).expanduser()
    out = Path(cfg.out).expanduser() if cfg.out else (source if source.is_dir() else Path.cwd()) / f"export-{cfg.to}"
    try:
        readme = export(args.model, cfg.to, out, cfg.quant, cfg.name, say=say)
    except (ExportError, LlamaCppError) as e:
        raise CommandError(str(e)) from None
    say(f"wrote {out} for {cfg.to}; how to serve it: {readme}")
    return 0
