"""Multi-label losses with one signature: ``loss(logits, target, mask=None) -> scalar``.

* logits ``[B, A]``: raw scores (any float dtype; the loss is computed in float32 so it is
  safe under ``torch.autocast``).
* target ``[B, A]``: 1.0 / 0.0, NaN for an unknown label.
* mask ``[B, A]`` bool, True = label known. NaN targets are always treated as unknown too,
  so a missing mask cannot turn the loss into NaN.

The result is the mean over known entries (0.0, still attached to the graph, when a batch has
none), so a batch's loss does not depend on how many of its labels are missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceattr.config import LOSSES  # the names make_loss accepts
from faceattr.errors import UsageError, unknown_name_error


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 logits, NaN-free float32 targets and a float32 0/1 weight of known entries."""
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target must have the same [B, A] shape; got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    if mask is not None and mask.shape != target.shape:
        raise ValueError(
            f"mask must have the target's shape {tuple(target.shape)}; got {tuple(mask.shape)}"
        )
    logits = logits.float()
    target = target.to(device=logits.device, dtype=torch.float32)
    known = ~torch.isnan(target)
    if mask is not None:
        known = known & mask.to(device=logits.device, dtype=torch.bool)
    # Replace unknown targets *before* the loss: NaN * 0 is still NaN, in values and gradients.
    target = torch.where(known, target, torch.zeros_like(target))
    return logits, target, known.float()


def _masked_mean(per_entry: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # clamp keeps an all-unknown batch at 0 instead of 0/0; no host sync needed.
    return (per_entry * weight).sum() / weight.sum().clamp(min=1.0)


def _check_pos_weight(pos_weight: torch.Tensor | None, n_attr: int) -> None:
    if pos_weight is not None and pos_weight.shape != (n_attr,):
        raise ValueError(
            f"pos_weight must have one value per attribute, shape ({n_attr},); "
            f"got {tuple(pos_weight.shape)}"
        )


def bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy on logits ``[B, A]``, mean over known entries.

    pos_weight ``[A]`` multiplies the loss of positive labels per attribute (as in
    :class:`torch.nn.BCEWithLogitsLoss`).
    """
    logits, target, weight = _prepare(logits, target, mask)
    _check_pos_weight(pos_weight, logits.shape[-1])
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )
    return _masked_mean(per_entry, weight)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) on logits ``[B, A]``, mean over known entries.

    Each entry's cross-entropy is scaled by ``(1 - p_t) ** gamma`` so confidently right entries
    count less; ``gamma=0`` gives plain BCE. alpha in [0, 1] weights positives by ``alpha`` and
    negatives by ``1 - alpha``; pos_weight ``[A]`` weights positives per attribute.
    """
    logits, target, weight = _prepare(logits, target, mask)
    _check_pos_weight(pos_weight, logits.shape[-1])
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)  # probability given to the true label
    # The floor keeps the gradient finite for gamma < 1 when p_t rounds to exactly 1.
    per_entry = ce * (1 - p_t).clamp(min=1e-12).pow(gamma)
    if alpha is not None:
        per_entry = per_entry * (alpha * target + (1 - alpha) * (1 - target))
    if pos_weight is not None:
        pw = pos_weight.to(device=logits.device, dtype=torch.float32)
        per_entry = per_entry * (pw * target + (1 - target))
    return _masked_mean(per_entry, weight)


class BCELoss(nn.Module):
    """Masked binary cross-entropy; ``forward(logits [B, A], target [B, A], mask=None)``."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return bce_loss(logits, target, mask)


class WeightedBCELoss(nn.Module):
    """Masked BCE with per-attribute ``pos_weight [A]`` (see :func:`pos_weight_from_rates`).

    The weights are a buffer, so ``.to(device)`` moves them and checkpoints keep them.
    """

    pos_weight: torch.Tensor  # a registered buffer; declared for type checkers

    def __init__(self, pos_weight: torch.Tensor | Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return bce_loss(logits, target, mask, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Masked sigmoid focal loss; :func:`focal_loss` explains gamma, alpha and pos_weight."""

    pos_weight: torch.Tensor | None  # a registered buffer (None: unweighted)

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        pos_weight: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(gamma) and gamma >= 0):
            raise UsageError(
                f"Focal loss gamma must be a number >= 0; got {gamma}.",
                "2.0 is the usual value; 0 gives plain BCE.",
            )
        if alpha is not None and not 0 <= alpha <= 1:
            raise UsageError(
                f"Focal loss alpha must be between 0 and 1; got {alpha}.",
                "Leave it unset to weight positives and negatives equally.",
            )
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return focal_loss(
            logits, target, mask, gamma=self.gamma, alpha=self.alpha, pos_weight=self.pos_weight
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def pos_weight_from_rates(
    rates: Sequence[float] | torch.Tensor, max_weight: float = 50.0
) -> torch.Tensor:
    """Per-attribute positive weights ``(1 - p) / p`` from training positive rates ``[A]``.

    Clipped to ``[1 / max_weight, max_weight]`` so a very rare attribute cannot dominate the
    loss. A rate that is NaN (never labelled), 0 or 1 (one class only) gives weight 1: there is
    nothing to balance. Returns float32 ``[A]``.
    """
    if not (math.isfinite(max_weight) and max_weight >= 1):
        raise UsageError(
            f"The maximum positive weight must be a number >= 1; got {max_weight}.",
            "50 is the default; 1 disables weighting.",
        )
    p = torch.as_tensor(rates, dtype=torch.float64).reshape(-1)
    usable = (p > 0) & (p < 1)  # False for NaN too
    safe = torch.where(usable, p, torch.full_like(p, 0.5))
    weight = ((1 - safe) / safe).clamp(1 / max_weight, max_weight)
    return weight.float()


def make_loss(
    name: str,
    *,
    pos_weight: torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> nn.Module:
    """The loss module called ``name`` (one of :data:`LOSSES`).

    pos_weight ``[A]`` is required by "weighted-bce", optional for "focal" and refused by
    "bce" (pass "weighted-bce" to weight positives). gamma and alpha are used by "focal".
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in LOSSES:
        raise unknown_name_error("loss", str(name), LOSSES)
    if key == "bce":
        if pos_weight is not None:
            raise ValueError(
                'loss "bce" takes no pos_weight; use "weighted-bce" to weight positives'
            )
        return BCELoss()
    if key == "weighted-bce":
        if pos_weight is None:
            raise ValueError(
                'loss "weighted-bce" needs pos_weight [A]; build it with pos_weight_from_rates()'
            )
        return WeightedBCELoss(pos_weight)
    return FocalLoss(gamma=gamma, alpha=alpha, pos_weight=pos_weight)
