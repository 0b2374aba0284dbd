"""`fimtune eval`: its flags and the command function (torch and the engines are imported inside the command)."""

from __future__ import annotations

import argparse
from typing import Any

from fimtune.console import say as _say


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="complete held-out corpus examples with a model (or base vs tuned) and score them",
        description="Complete the examples of a corpus split with a base model, a tuned run, or both (--compare), "
        "through the prompt layout the run was trained with, apply the stop rules, and score exact match and "
        "edit similarity overall, per span kind and per language. Writes report.json, report.md and report.png.",
    )
    p.add_argument("--corpus", required=True, help="corpus folder written by `fimtune build-corpus`")
    p.add_argument(
        "--base-model",
        help="model folder, Hugging Face model id, or a built-in model (`nano`, `pico`, `tiny`); default: the "
        "run's base, or without --run the best built-in model installed",
    )
    p.add_argument("--run", help="a `fimtune train` run folder (adapter + fimtune.json)")
    p.add_argument("--compare", action="store_true", help="also evaluate the run's base model; report the difference")
    p.add_argument(
        "--engine",
        default="local",
        help="local (transformers, default), openai (vLLM), llamacpp or ollama: where completions come from",
    )
    p.add_argument("--endpoint", default="", help="HTTP engines: base URL of the server")
    p.add_argument("--model", default="", help="HTTP engines: the model (or served adapter) name")
    p.add_argument(
        "--template", default="auto", help="FIM template of a base model (default: detected; a run's is fixed)"
    )
    p.add_argument("--split", default="test", help="corpus split to evaluate (default: test)")
    p.add_argument("--limit", type=int, default=0, help="evaluate a seeded sample of N examples (default: all)")
    p.add_argument("--max-tokens", type=int, default=0, help="tokens per completion (default: the middle budget)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample and of the bootstrap")
    p.add_argument("--device", default="auto", help="local engine: auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="local engine: auto (default) is bf16 where torch reports bf16 matrix support on the device, else fp32",
    )
    p.add_argument("--out", default="report.json", help="report path; report.md and report.png go beside it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fixed-text", default=None, help=argparse.SUPPRESS)  # engine `fixed`: tests and wiring checks
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from fimtune.console import CommandError
    from fimtune.eval.run import EvalConfig, EvalError, run_eval
    from fimtune.models import default_base_model

    settings: dict[str, Any] = {
        "corpus": args.corpus,
        "base_model": args.base_model or ("" if args.run or args.engine != "local" else default_base_model()),
        "run": args.run or "",
        "compare": args.compare,
        "engine": args.engine,
        "endpoint": args.endpoint,
        "model": args.model,
        "template": args.template,
        "split": args.split,
        "limit": args.limit,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
        "out": args.out,
    }
    if args.fixed_text is not None:
        settings["fixed_text"] = args.fixed_text
    try:
        result = run_eval(EvalConfig(**settings), progress=not args.quiet)
    except EvalError as e:
        raise CommandError(str(e)) from None
    for line in result.summary():
        _say(line)
    return 0
