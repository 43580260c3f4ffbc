"""How long-running core functions report progress without printing.

Core code calls a :class:`Progress`; the CLI passes one that draws rich progress bars on
stderr, library users get the base class (silence) by default. Every method is a no-op here:
subclass it and override what you want to see, e.g. only :meth:`Progress.epoch_end` to follow
a training run's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def format_duration(seconds: float) -> str:
    """``seconds`` for a person: "45 s", "4 min 05 s", "1 h 10 min", "38 h 15 min", "5 d 3 h"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 100 * 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


PLAIN_INTERVAL = 30.0  # seconds between two plain progress lines of a task


class PlainLines:
    """Progress as plain text lines, for a stderr that is no terminal (a log file, nohup, CI,
    a notebook), where a live bar shows nothing: one line every ``interval`` seconds of a task
    (done, share, live numbers, elapsed time and ETA) and one when it ends.

    ``emit`` writes a line; ``describe`` turns :meth:`Progress.advance`'s ``info`` into text;
    ``clock`` (seconds, monotonic) is injectable so tests need no sleeping.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        describe: Callable[[dict[str, Any]], str] = lambda info: "",
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.describe, self.interval, self.clock = emit, describe, interval, clock
        self._task: dict[str, Any] | None = None

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        now = self.clock()
        self._task = {"desc": description, "total": total, "done": 0, "start": now,
                      "next": now + self.interval, "info": {}}  # fmt: skip

    def advance(self, n: int = 1, **info: Any) -> None:
        task = self._task
        if task is None:
            return
        task["done"] += n
        task["info"] = info or task["info"]
        now = self.clock()
        if now >= task["next"]:
            task["next"] = now + self.interval
            self.emit(self._line(task, now, end=False))

    def finish(self) -> None:
        task, self._task = self._task, None
        if task is not None and task["done"]:
            self.emit(self._line(task, self.clock(), end=True))

    def _line(self, task: dict[str, Any], now: float, *, end: bool) -> str:
        done, total = task["done"], task["total"]
        elapsed = now - task["start"]
        if total:
            count = f"{min(100, round(100 * done / total))}% ({done:,}/{total:,})"
        else:
            count = f"{done:,}"
        parts = [f"{task['desc']}: {count}"]
        numbers = self.describe(task["info"])
        if numbers:
            parts.append(numbers)
        if end:
            parts.append(f"done in {format_duration(elapsed)}")
        else:
            parts.append(f"elapsed {format_duration(elapsed)}")
            if total and 0 < done < total and elapsed > 0:
                parts.append(f"eta {format_duration((total - done) * elapsed / done)}")
        return "  ".join(parts)
