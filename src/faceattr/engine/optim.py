"""What a training run optimises with: the optimizer, the learning-rate schedule, mixed precision.

Each factory reads one part of a :class:`~faceattr.config.TrainConfig`; the names they accept
are listed once, in :mod:`faceattr.config` (OPTIMIZERS, SCHEDULERS).
"""

from __future__ import annotations

import math

import torch

from faceattr.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from faceattr.errors import UsageError, unknown_name_error
from faceattr.models.head import AttributeModel

Scheduler = torch.optim.lr_scheduler.LRScheduler


def make_optimizer(cfg: TrainConfig, model: AttributeModel) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optim`` names over ``model``'s trainable parameters (the backbone at
    ``lr * backbone_lr_mult``)."""
    from faceattr.models.freeze import param_groups

    o = cfg.optim
    assert o.lr is not None  # filled in when the config is built
    groups = param_groups(model, o.lr, o.backbone_lr_mult)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise UsageError("No trainable parameters: the whole model is frozen.")
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True
        )
    raise unknown_name_error("optimizer", o.optimizer, OPTIMIZERS)


class WarmupCosine:
    """lr factor per step: linear warm-up, then cosine decay to 1% (picklable, unlike a lambda)."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = max(total, 1), warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> Scheduler | None:
    """The per-step learning-rate schedule ``cfg.optim.scheduler`` names (None for "none")."""
    o = cfg.optim
    total = steps_per_epoch * cfg.epochs
    if o.scheduler == "none":
        return None
    if o.scheduler == "cosine":
        warmup = int(o.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup))
    if o.scheduler == "cyclic":
        # Triangular cycles between lr/10 and lr, two cycles per epoch-pair, halving (seed 001).
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=[lr / 10 for lr in max_lr],
            max_lr=max_lr,
            step_size_up=max(1, steps_per_epoch // 2),
            mode="triangular2",
            cycle_momentum=o.optimizer == "sgd",
        )
    if o.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total, 1),
            pct_start=0.3 if not o.warmup_epochs else min(0.9, o.warmup_epochs / cfg.epochs),
        )
    raise unknown_name_error("scheduler", o.scheduler, SCHEDULERS)


def amp_setup(
    cfg: TrainConfig, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and gradient scaler: bf16 (no scaler) or fp16 + scaler on CUDA with
    ``cfg.amp``; (None, None), full precision, elsewhere."""
    if not (cfg.amp and device.type == "cuda"):
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")
