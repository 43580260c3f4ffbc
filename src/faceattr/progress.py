"""How long-running core functions report progress without printing.

Core code calls a :class:`Progress`; the CLI passes one that draws rich progress bars on
stderr, library users get the base class (silence) by default. Every method is a no-op here:
subclass it and override what you want to see, e.g. only :meth:`Progress.epoch_end` to follow
a training run's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpochEnd:
    """A training epoch has finished and its checkpoint is on disk."""

    epoch: int  # 1-based
    epochs: int  # the run's planned number of epochs
    row: dict[str, float]  # this epoch's history.csv row (epoch, lr, losses, accuracies, ...)
    best: bool  # the best epoch so far: its weights are now model.safetensors


class Progress:
    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        """Begin a task of ``total`` units (None = unknown)."""

    def advance(self, n: int = 1, **info: Any) -> None:
        """``n`` more units done; ``info`` holds live numbers (loss, acc, img/s)."""

    def finish(self) -> None:
        """End the current task."""

    def log(self, message: str) -> None:
        """A line for the user (kept on screen above any bar)."""

    def epoch_end(self, event: EpochEnd) -> None:
        """A training epoch is done (see :class:`EpochEnd`)."""


# The silent default, under the name core functions have always used.
NullProgress = Progress
