"""Where fimtune may write: an absent or empty folder, or one fimtune wrote itself; never a protected place."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path


class OutputRefused(Exception):
    """Writing to the given output would touch something that is not fimtune's; the message says what to do."""


def refuse_protected(out: Path, inputs: Iterable[Path] = (), setting: str = "--out") -> None:
    """Refuse the filesystem root, the home folder, a repository root (a folder with .git), an input, and a folder
    that holds an input: replacing any of them would delete the user's own files."""
    real = out.expanduser().resolve()
    if real == Path(real.anchor):
        raise OutputRefused(f"{setting} {out}: fimtune does not write into the filesystem root; give a new folder")
    if real == Path.home().resolve():
        raise OutputRefused(f"{setting} {out} is the home folder; give a new folder inside it")
    if (real / ".git").exists():
        raise OutputRefused(f"{setting} {out} is the root of a repository; give a new folder (e.g. {out}/fimtune-out)")
    for given in inputs:
        inp = given.expanduser().resolve()
        if real == inp or real in inp.parents:
            raise OutputRefused(f"{setting} {out} holds the input {given}; give a folder outside the inputs")


def check_output_folder(
    out: Path,
    is_own: Callable[[Path], bool],
    what: str,
    *,
    inputs: Iterable[Path] = (),
    setting: str = "--out",
) -> None:
    """`out` may be written: absent, an empty folder, or a folder `is_own` recognises as fimtune's `what`
    (a corpus, a run). Anything else is refused with one line naming the folder; nothing is touched."""
    refuse_protected(out, inputs, setting)
    path = out.expanduser()
    if path.exists() and not path.is_dir():
        raise OutputRefused(f"{setting} {out} is a file; give a folder for the {what}")
    if path.is_dir() and any(path.iterdir()) and not is_own(path):
        raise OutputRefused(
            f"{setting} {out} is not empty and holds no {what}; fimtune writes only into a new or empty folder or "
            f"one holding its own {what}, so choose another {setting}"
        )


def check_output_files(paths: Iterable[Path], is_own: Callable[[Path], bool], what: str, setting: str) -> None:
    """Files about to be (re)written: each is absent or one fimtune wrote (`is_own`), never a folder or a file
    of the user's."""
    for path in paths:
        refuse_protected(path, (), setting)
        if path.is_dir():
            raise OutputRefused(f"{setting}: {path} is a folder; give a file path such as {path / 'report.json'}")
        if path.exists() and not is_own(path):
            raise OutputRefused(
                f"{setting}: {path} exists and is not a {what} fimtune wrote; choose another {setting} path"
            )
