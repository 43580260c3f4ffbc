"""Errors a user can fix.

Every message says what failed, the offending value, and how to fix it. The CLI turns a
:class:`FaceAttrError` into a red message and exit code 1 (2 for :class:`UsageError`); any other
exception is a bug and keeps its traceback.

Messages and hints are read by library callers and by command-line users alike, so they name
a setting as the Python keyword that sets it, in backticks: ```root=DIR```, ```no_detect=True```,
```model="default"```, or a TrainConfig field (```optim.lr=0.01```). The CLI shows each as its
flag (``--root DIR``, ``--no-detect``, ``--model default``, ``--lr 0.01``) in one place,
:func:`faceattr.cli.common.as_flags`. A whole command to run is written as one, in backticks
(```faceattr data fetch celeba --root DIR```): both kinds of user can run it in a shell.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FaceAttrError(Exception):
    """Base class: a failure the user can fix. ``hint`` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UsageError(FaceAttrError):
    """A bad option value or combination (exit code 2)."""

    exit_code = 2


class DeviceUnavailableError(UsageError):
    """A valid device (``cuda``, ``mps``) this machine or install does not have (exit code 1:
    the option is right, the machine is not)."""

    exit_code = 1


class DataError(FaceAttrError):
    """A dataset is missing, incomplete or malformed."""


class ImageReadError(FaceAttrError):
    """An image file cannot be decoded."""


class VideoReadError(FaceAttrError):
    """A video file, camera or stream cannot be opened or holds no video."""


class ModelError(FaceAttrError):
    """A model file or run directory is missing or unusable."""


class DownloadError(FaceAttrError):
    """A download failed or a file did not verify."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` valid names closest to ``name`` (case-insensitive)."""
    choices = list(choices)
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    if not found:  # substring fallback, e.g. "hair" -> Black_Hair, Blond_Hair ...
        found = [c for c in by_lower if name.lower() in c][:n]
    return [by_lower[f] for f in found]


def unknown_name_error(kind: str, name: str, choices: Iterable[str], cls=UsageError):
    """An error for an unknown ``kind`` named ``name`` listing close valid names."""
    choices = list(choices)
    near = close_matches(name, choices)
    msg = f"Unknown {kind} {name!r}."
    if near:
        msg += f" Did you mean: {', '.join(near)}?"
    if len(choices) <= 60:
        hint = f"Available {kind}s: {', '.join(choices)}"
    else:
        hint = f"There are {len(choices)} valid {kind}s; see `faceattr --help`."
    return cls(msg, hint)


def command(template: str, **values: object) -> str:
    """A whole command to run, for a message: ``template``, the command in backticks, with
    each ``{name}`` filled in from ``values``, quoted for the shell::

        command("`faceattr train --resume {run}`", run=path)

    The command stays one string where it is written, so it reads (and is checked) whole.
    """
    import os
    import shlex

    def word(value: object) -> str:
        return shlex.quote(os.fspath(value) if isinstance(value, os.PathLike) else str(value))

    return template.format(**{name: word(value) for name, value in values.items()})


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a ``hint`` saying what was kept and how to continue (the CLI prints it)."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint
