"""What every command shares with its user: the one-line failure and the command's own output."""

from __future__ import annotations

import sys


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def say(message: str) -> None:
    """A command's own output (not library logging): to stderr, so stdout stays free for pipes."""
    print(message, file=sys.stderr)
