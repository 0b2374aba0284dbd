"""`fimtune eval`: its flags and the command function (torch and the engines are imported inside the command)."""

from __future__ import annotations

import argparse

from fimtune.console import say as _say


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    from fimtune.config import add_flags
    from fimtune.eval.run import EvalConfig

    p = sub.add_parser(
        "eval",
        help="complete held-out corpus examples with a model (or base vs tuned) and score them",
        description="Complete the examples of a corpus split with a base model, a tuned run, or both (--compare), "
        "through the prompt layout the run was trained with, apply the stop rules, and score exact match and "
        "edit similarity overall, per span kind and per language. Writes report.json, report.md and report.png.",
    )
    add_flags(p, EvalConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from fimtune.config import given_flags
    from fimtune.console import CommandError
    from fimtune.eval.run import EvalConfig, EvalError, run_eval
    from fimtune.models import default_base_model

    settings = given_flags(args, EvalConfig)
    if "base_model" not in settings and not settings.get("run") and settings.get("engine", "local") == "local":
        settings["base_model"] = default_base_model()
    try:
        result = run_eval(EvalConfig(**settings), progress=not args.quiet)
    except EvalError as e:
        raise CommandError(str(e)) from None
    for line in result.summary():
        _say(line)
    return 0
