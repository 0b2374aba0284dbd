"""The `fimtune` command: one subcommand per stage; heavy imports stay inside the command that needs them."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fimtune import __version__
from fimtune.config import ConfigError
from fimtune.console import CommandError

log = logging.getLogger("fimtune")


def _recipe_relative(value: str | None, recipe: str | None) -> str | None:
    """Paths inside a recipe are relative to the recipe's folder; flags are relative to the working folder."""
    if value is None or recipe is None or Path(value).expanduser().is_absolute():
        return value
    return str(Path(recipe).parent / value)


def cmd_build_corpus(args: argparse.Namespace) -> int:
    from fimtune.config import CorpusConfig, given_flags, load_config, load_yaml
    from fimtune.corpus.pipeline import CorpusError, build_corpus
    from fimtune.corpus.walk import FOLDER_REASONS

    flags = given_flags(args, CorpusConfig)
    if args.paths:
        flags["repos"] = args.paths
    cfg = load_config(CorpusConfig, args.config, flags)
    if args.config:
        recipe = load_yaml(args.config)
        if not args.paths:
            cfg.repos = [_recipe_relative(r, args.config) or r for r in cfg.repos]
        if "out" not in flags and "out" in recipe:
            cfg.out = _recipe_relative(cfg.out, args.config) or cfg.out
    try:
        manifest = build_corpus(cfg, overwrite=args.overwrite, progress=None if not args.quiet else False)
    except CorpusError as e:
        raise CommandError(str(e)) from None
    counts = manifest["counts"]
    ex = counts["examples"]
    pruned = sum(n for reason, n in manifest["dropped"].items() if reason in FOLDER_REASONS)
    skipped = sum(manifest["dropped"].values()) - pruned
    print(
        f"wrote {ex['train']} train and {ex['test']} test examples from {counts['files_kept']} of "
        f"{counts['files_seen']} files ({skipped} files skipped, {pruned} folders not entered, see manifest.json) "
        f"to {cfg.out} in {manifest['elapsed_s']:.1f}s",
        file=sys.stderr,
    )
    for split, other in (("train", "test"), ("test", "train")):
        if ex[split] == 0 and ex[other] > 0:
            print(
                f"warning: every example landed in the {other} split, none in {split} (one repository, or too few "
                f"files for the split); give more repositories, use --split file, or change --test-fraction",
                file=sys.stderr,
            )
    for name in counts.get("empty_repos", []):
        print(f"warning: repository {name} had no supported source files", file=sys.stderr)
    return 0


def _add_build_corpus(sub: argparse._SubParsersAction) -> None:
    from fimtune.config import CorpusConfig, add_flags

    p = sub.add_parser(
        "build-corpus",
        help="cut repositories into fill-in-the-middle examples",
        description="Cut repositories into fill-in-the-middle examples at syntax boundaries. "
        "Each PATH is one repository. Settings come from --config (a recipe YAML; paths in it are relative "
        "to the recipe), and flags override them.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="repository folders (default: the recipe's `repos`)")
    p.add_argument("--config", help="recipe YAML with defaults for every setting (see corpora/)")
    add_flags(p, CorpusConfig)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a different fimtune corpus in --out (nothing else)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_corpus)


# Each command's parser, in --help order: (module, function). A module is imported only to add its parser, so
# torch, transformers and pygls load only in the command that runs.
COMMANDS: list[tuple[str, str]] = [
    (__name__, "_add_build_corpus"),
    ("fimtune.train.cli", "add_train_parser"),
    ("fimtune.eval.cli", "add_eval_parser"),
    ("fimtune.render_cmd", "add_render_parser"),
    ("fimtune.serve_cmd", "add_serve_parser"),
    ("fimtune.export.cli", "add_export_parser"),
    ("fimtune.pretrain.cli", "add_pretrain_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fimtune", description="Repositories in, a code completion model out.")
    parser.add_argument("--version", action="version", version=f"fimtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module, name in COMMANDS:
        add: Callable[[argparse._SubParsersAction], None] = getattr(importlib.import_module(module), name)
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (CommandError, ConfigError) as e:
        print(f"fimtune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fimtune {args.command}: interrupted; nothing partial was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
