"""One pass over data: a training epoch or inference. No files, no printing.

Batches arrive as uint8 images (see :mod:`faceattr.data.dataset`); augmentation and
normalisation run here, batched, on the training device.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from faceattr.data.dataset import Batch
from faceattr.data.transforms import BatchAugment, Preprocessing
from faceattr.engine.ema import ModelEma

SYNC_EVERY = 10  # training steps between reads of the running loss and accuracy


@dataclass
class EpochStats:
    loss: float = 0.0  # mean training loss over known labels
    accuracy: float = 0.0  # running mean per-label accuracy at 0.5 on augmented batches
    images: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # unreadable files
    # The learning rate of the first parameter group (the head's: --lr as the schedule
    # scales it) that the epoch's optimizer steps used: mean, lowest and highest.
    lr_mean: float = 0.0
    lr_min: float = 0.0
    lr_max: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    """Mixed precision on CUDA when ``dtype`` is set; a no-op elsewhere."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _read_sums(stats: EpochStats, sums: torch.Tensor) -> None:
    loss_sum, correct, known = (float(v) for v in sums.tolist())
    stats.loss = loss_sum / max(known, 1.0)
    stats.accuracy = correct / max(known, 1.0)


def _to_device(
    batch: Batch, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch.images.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    loss_fn: Callable[..., torch.Tensor],  # (logits, targets, mask[, teacher logits])
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    preprocessing: Preprocessing,
    augment: BatchAugment | None = None,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    ema: ModelEma | None = None,
    on_batch: Callable[[int, EpochStats], None] | None = None,
    soft_targets: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EpochStats:
    """Train for one pass over ``batches``; the scheduler (and ``ema``) step once per batch.

    ``soft_targets`` (distillation): the teacher's logits ``[B, A]`` of a batch's table rows
    (``Batch.index``), passed to ``loss_fn`` as its fourth argument.

    ``preprocessing`` (the model's, :meth:`Preprocessing.from_info`) normalises the
    augmented batches.
    """
    model.train()
    stats = EpochStats()
    # Running sums stay on the device: reading them (a host sync) happens only every
    # SYNC_EVERY steps, for the progress line, so the GPU is never waited for per step.
    sums = torch.zeros(3, device=device)  # loss * known labels, correct, known labels
    start = time.perf_counter()
    step = 0
    lrs: list[float] = []  # the rate each step used (a schedule changes it per step)
    for batch in batches:
        stats.skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        images, targets = _to_device(batch, device, channels_last)
        x = images.float().div_(255.0)
        if augment is not None:
            x = augment(x, generator)
        x = preprocessing.normalize(x)
        mask = ~torch.isnan(targets)
        with autocast_context(device, amp_dtype):
            logits = model(x)
        if soft_targets is None:
            loss = loss_fn(logits.float(), targets, mask)
        else:
            teacher = soft_targets(batch.index).to(device, non_blocking=True)
            loss = loss_fn(logits.float(), targets, mask, teacher)
        optimizer.zero_grad(set_to_none=True)
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            inner = getattr(model, "_orig_mod", model)  # unwrap torch.compile
            ema.update(getattr(inner, "module", inner))  # and DistributedDataParallel

        with torch.no_grad():
            known = mask.sum()
            correct = (((logits.detach() > 0) == (targets > 0.5)) & mask).sum()
            sums += torch.stack([loss.detach() * known, correct, known]).float()
        stats.images += len(batch)
        step += 1
        if on_batch is not None:
            if step % SYNC_EVERY == 1 or SYNC_EVERY == 1:
                _read_sums(stats, sums)
            stats.seconds = time.perf_counter() - start
            on_batch(len(batch), stats)
    _read_sums(stats, sums)
    stats.seconds = time.perf_counter() - start
    if lrs:
        stats.lr_mean, stats.lr_min, stats.lr_max = sum(lrs) / len(lrs), min(lrs), max(lrs)
    return stats


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device,
    preprocessing: Preprocessing,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Probabilities for every readable image.

    Returns ``(probs [N, A], targets [N, A], index [N], skipped)`` where ``index`` gives each
    row's position in the dataset and ``skipped`` the unreadable files. ``preprocessing``
    (the model's) normalises the uint8 batches.
    """
    model.eval()
    probs, targets, index, skipped = [], [], [], []
    for batch in batches:
        skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        images, t = _to_device(batch, device, channels_last)
        with autocast_context(device, amp_dtype):
            logits = model(preprocessing.normalize(images))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(t.cpu().numpy())
        index.append(batch.index.numpy())
        if on_batch is not None:
            on_batch(len(batch))
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, int), skipped
    return np.concatenate(probs), np.concatenate(targets), np.concatenate(index), skipped
