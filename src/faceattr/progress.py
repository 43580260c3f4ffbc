"""How long-running core functions report progress without printing.

Core code calls a :class:`Progress`; the CLI passes one that draws rich progress bars on
stderr, library users get :class:`NullProgress` (silence) by default.
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        """Begin a task of ``total`` units (None = unknown)."""

    def advance(self, n: int = 1, **info: Any) -> None:
        """``n`` more units done; ``info`` holds live numbers (loss, acc, img/s)."""

    def finish(self) -> None:
        """End the current task."""

    def log(self, message: str) -> None:
        """A line for the user (kept on screen above any bar)."""


class NullProgress:
    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass
