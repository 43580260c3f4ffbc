"""What a run says about its own time: the device it trains on (:func:`device_line`) and,
measured on the first steps of a session, how long the whole run takes, with the faster
choices when that is long (:class:`RunEstimate`). Both are lines for ``Progress.log``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from faceattr.config import TrainConfig
from faceattr.errors import command
from faceattr.progress import format_duration

LONG_RUN_SECONDS = 3600.0  # a run estimated longer than this gets the estimate and choices
# Steps measured after the first (warm-up: allocation, worker start): this many, or at least
# MIN_STEPS that took MEASURE_SECONDS together, whichever comes first.
MEASURE_STEPS, MIN_STEPS, MEASURE_SECONDS = 10, 3, 60.0
# A validation image costs about a third of a training one (forward only, no augmentation,
# twice the batch): the share of an epoch validation adds is estimated, not measured.
VALID_COST = 1 / 3
LIGHT_ARCHS = ("celebnet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_line(device: torch.device, world_size: int = 1) -> str:
    """ "Training on the CPU (2 cores, 2 torch threads)." or "Training on cuda:0 (NVIDIA
    H200, 140 GiB)." (``world_size``: processes of a distributed run)."""
    if device.type == "cpu":
        what = f"the CPU ({cpu_cores()} cores, {torch.get_num_threads()} torch threads)"
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        what = f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    elif device.type == "mps":
        what = "mps (the Apple GPU)"
    else:
        what = str(device)
    shared = f", one of {world_size} processes" if world_size > 1 else ""
    return f"Training on {what}{shared}."


@dataclass(frozen=True)
class RunShape:
    """What the estimate multiplies: one process's images per epoch and the epochs to run."""

    train_images: int  # trained per epoch (drop_last: steps * batch size)
    valid_images: int  # validated per epoch
    epochs: int  # epochs this session runs (all of them, or the rest of a resumed run)
    resumed: bool = False


class RunEstimate:
    """Fed every training step of a session's first epoch (:meth:`step`, then
    :meth:`finish`); says once, when the measured speed makes the whole run longer than
    :data:`LONG_RUN_SECONDS`, how long it takes and what would make it faster.

    ``clock`` (seconds) is injectable: tests drive it without sleeping.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        shape: RunShape,
        *,
        cached: bool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cfg, self.device, self.shape = cfg, device, shape
        self.cached, self.clock = cached, clock
        self.done = False
        self._start: float | None = None  # the end of the first (warm-up) step
        self._steps = self._images = 0

    def step(self, images: int) -> str | None:
        """A training step of ``images`` has ended; the message when it is time for it."""
        if self.done:
            return None
        now = self.clock()
        if self._start is None:
            self._start = now
            return None
        self._steps += 1
        self._images += images
        took = now - self._start
        if self._steps >= MEASURE_STEPS or (self._steps >= MIN_STEPS and took >= MEASURE_SECONDS):
            return self._say(self._images / took if took > 0 else math.inf)
        return None

    def finish(self, images: int, seconds: float) -> str | None:
        """The first epoch has ended (``images`` in ``seconds``, warm-up included): the
        message if the steps were too few to say it before."""
        if self.done or images <= 0 or seconds <= 0:
            return None
        if self._steps and self._start is not None and self.clock() > self._start:
            return self._say(self._images / (self.clock() - self._start))
        return self._say(images / seconds)

    def seconds(self, images_per_second: float) -> float:
        """The session's epochs at ``images_per_second`` (validation estimated)."""
        s = self.shape
        per_epoch = (s.train_images + VALID_COST * s.valid_images) / images_per_second
        return s.epochs * per_epoch

    def _say(self, images_per_second: float) -> str | None:
        self.done = True
        if not math.isfinite(images_per_second) or images_per_second <= 0:
            return None
        total = self.seconds(images_per_second)
        if total <= LONG_RUN_SECONDS:
            return None
        s = self.shape
        where = "the CPU" if self.device.type == "cpu" else str(self.device)
        epochs = f"the {s.epochs} remaining epoch(s)" if s.resumed else f"its {s.epochs} epoch(s)"
        choices = "; ".join(self.faster_choices())
        return (
            f"At {images_per_second:.1f} img/s on {where}, this run takes about "
            f"{format_duration(total)} for {epochs} ({s.train_images:,} training and "
            f"{s.valid_images:,} validation images each)."
            + (f" Faster: {choices}." if choices else "")
        )

    def faster_choices(self) -> list[str]:
        """What would shorten this run, as settings and commands (the CLI shows flags)."""
        cfg, choices = self.cfg, []
        size = cfg.data.img_size
        smaller = max(32, round(size / math.sqrt(2) / 16) * 16)
        if smaller < size:
            choices.append(f"a smaller `data.img_size={smaller}` ({(size / smaller) ** 2:.1f}x "
                           "fewer pixels)")  # fmt: skip
        if not self.cached and cfg.data.cache != "off" and cfg.data.root:
            prepare = command(
                "`faceattr data prepare {dataset} --root {root} --img-size {size}`",
                dataset=cfg.data.dataset, root=cfg.data.root, size=size,
            )  # fmt: skip
            choices.append(f"{prepare} once (images decoded once, not every epoch)")
        if cfg.model.arch not in LIGHT_ARCHS:
            choices.append("a lighter architecture (`model.arch=mobilenet_v2`, or the "
                           "small `model.arch=celebnet`)")  # fmt: skip
        if self.device.type == "cpu":
            choices.append("a GPU (`device=cuda`)")
        return choices
