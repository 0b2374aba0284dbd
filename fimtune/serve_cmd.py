"""`fimtune serve`: start the language server over stdio (or TCP); its flags give defaults clients override."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fimtune.config import add_flags, given_flags
from lsp_server.settings import Settings


def _tcp_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--tcp takes HOST:PORT, e.g. 127.0.0.1:2087, not {value!r}")
    return host or "127.0.0.1", int(port)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", type=_tcp_address, metavar="HOST:PORT", help="listen on TCP instead (for debugging)")
    add_flags(p, Settings)


def defaults_from(args: argparse.Namespace) -> Any:
    """Settings from the flags given (recorded as explicit, like a client's settings)."""
    from fimtune.config import check
    from fimtune.console import CommandError
    from lsp_server.settings import camel, parse_settings

    flags = given_flags(args, Settings)  # the flags are top-level settings
    check(Settings(**flags), flags=True)  # a bad flag is an error (a client's bad setting is a warning)
    settings, warnings = parse_settings({camel(k): v for k, v in flags.items()})
    if warnings:
        raise CommandError("; ".join(w.removeprefix("fimtune: ") for w in warnings))
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from lsp_server.server import serve

    serve(defaults_from(args), tcp=args.tcp)
    return 0


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="language server: inline completions in VS Code and Neovim over LSP",
        description="Serve completions over the Language Server Protocol (stdio by default). Flags give the "
        "defaults; the editor's settings (initializationOptions, workspace/didChangeConfiguration) override them.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lsp_server [flags]`: the same as `fimtune serve [flags]`."""
    from fimtune.config import ConfigError
    from fimtune.console import CommandError

    parser = argparse.ArgumentParser(prog="python -m lsp_server", description="fimtune's language server")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_serve(args)
    except (CommandError, ConfigError) as e:
        sys.stderr.write(f"fimtune serve: error: {e}\n")
        return 1
