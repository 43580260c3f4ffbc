"""Multi-label losses with one signature: ``loss(logits, target, mask=None) -> scalar``.

* logits ``[B, A]``: raw scores (any float dtype; the loss is computed in float32 so it is
  safe under ``torch.autocast``).
* target ``[B, A]``: 1.0 / 0.0, NaN for an unknown label.
* mask ``[B, A]`` bool, True = label known. NaN targets are always treated as unknown too,
  so a missing mask cannot turn the loss into NaN.

The result is the mean over known entries (0.0, still attached to the graph, when a batch has
none), so a batch's loss does not depend on how many of its labels are missing.

Loss weights have one owner, this module: ``pos_weight [A]`` (``weighted-bce``: positives per
attribute, :func:`pos_weight_from_rates`) and :class:`GroupBalance` (``balance_groups``: each
combination of an attribute's label and other attributes' labels weighs the same in that
attribute's loss, each class keeping its total). Both are per-entry multipliers of the loss;
:func:`make_loss` combines them (their product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceattr.config import LOSSES  # the names make_loss accepts
from faceattr.errors import UsageError, unknown_name_error
from faceattr.subgroups import SubgroupSpec


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


def _masked_mean(
    per_entry: torch.Tensor, known: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the known entries (each times ``weight``, when given) / the number known."""
    if weight is not None:
        if weight.shape != per_entry.shape:
            raise ValueError(
                f"weight must have the target's shape {tuple(per_entry.shape)}; "
                f"got {tuple(weight.shape)}"
            )
        per_entry = per_entry * weight.to(device=per_entry.device, dtype=torch.float32)
    # clamp keeps an all-unknown batch at 0 instead of 0/0; no host sync needed.
    return (per_entry * known).sum() / known.sum().clamp(min=1.0)


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
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy on logits ``[B, A]``, mean over known entries.

    pos_weight ``[A]`` multiplies the loss of positive labels per attribute (as in
    :class:`torch.nn.BCEWithLogitsLoss`); weight ``[B, A]`` multiplies each entry's loss (e.g.
    :class:`GroupBalance`'s). The mean still divides by the number of known entries.
    """
    logits, target, known = _prepare(logits, target, mask)
    _check_pos_weight(pos_weight, logits.shape[-1])
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )
    return _masked_mean(per_entry, known, weight)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) on logits ``[B, A]``, mean over known entries.

    Each entry's cross-entropy is scaled by ``(1 - p_t) ** gamma`` so confidently right entries
    count less; ``gamma=0`` gives plain BCE. alpha in [0, 1] weights positives by ``alpha`` and
    negatives by ``1 - alpha``; pos_weight ``[A]`` weights positives per attribute; weight
    ``[B, A]`` multiplies each entry's loss.
    """
    logits, target, known = _prepare(logits, target, mask)
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
    return _masked_mean(per_entry, known, weight)


@dataclass(frozen=True)
class GroupCell:
    """One cell of a balanced spec: the target's label and a combination of the ``by`` labels,
    its training images and the weight each gets in the target's loss (empty: weight 0)."""

    target_value: bool
    combination: tuple[bool, ...]
    count: int
    weight: float


@dataclass(frozen=True)
class BalancedSpec:
    """The weights :func:`balance_weights` found for one :class:`SubgroupSpec`."""

    spec: SubgroupSpec
    cells: tuple[GroupCell, ...]  # target no first, combinations in spec.combinations() order
    grouped: int  # training images with known target and grouping labels
    max_weight: float

    def describe(self) -> list[str]:
        """Lines for the training log: the spec, then each cell's images and weight."""
        capped = sum(1 for c in self.cells if c.count and c.weight >= self.max_weight)
        cap = f"; {capped} cell(s) capped at {self.max_weight:g} per image" if capped else ""
        lines = [
            f"Balancing {self.spec.target} over {' x '.join((self.spec.target, *self.spec.by))}"
            f" ({self.grouped:,} training images with these labels known{cap}):"
        ]
        for c in self.cells:
            name = f"{self.spec.target}={'yes' if c.target_value else 'no'}, "
            name += self.spec.group_name(c.combination)
            weight = f"weight {c.weight:.3g}" if c.count else "empty, left out"
            lines.append(f"  {name}: {c.count:,} images, {weight}")
        return lines


def balance_weights(
    labels: np.ndarray, attributes: Sequence[str], spec: SubgroupSpec, max_weight: float
) -> BalancedSpec:
    """Weights that make every group of ``spec.by`` labels weigh the same within each class
    of the target, in the target's loss, from the training labels ``[N, A]`` (0/1/NaN).

    The cells are the target's label x each combination of the ``by`` labels. Only rows whose
    target and grouping labels are all known take part (the others keep weight 1). Within a
    class (target no, target yes) of ``n`` such rows in ``K`` non-empty cells, each cell's
    images share ``n / K``: the class keeps its total, so the target's positive rate (and
    what 0.5 means) is unchanged, the mean weight stays 1 and the loss keeps its scale, while
    the groups become equally likely in both classes, so they no longer predict the target.
    A cell so small that its images would weigh more than ``max_weight`` each gets
    ``max_weight`` per image and the class's other cells share the rest equally (repeated
    until none is over). An empty cell gets nothing (no division by zero); the class's other
    cells share its part.
    """
    if not (math.isfinite(max_weight) and max_weight >= 1):
        raise UsageError(
            f"The maximum group weight must be a number >= 1; got {max_weight}.",
            "10 is the default; 1 turns balancing off.",
        )
    names = list(attributes)
    target = labels[:, names.index(spec.target)]
    cells: list[tuple[bool, tuple[bool, ...], int]] = []
    for value in (False, True):
        for combination, in_group in spec.group_masks(labels, names):
            rows = in_group & ~np.isnan(target) & ((target == 1) == value)
            cells.append((value, combination, int(rows.sum())))
    counts = np.array([n for _, _, n in cells], dtype=np.float64)
    per_class = len(counts) // 2
    weights = np.concatenate(
        [
            _share_equally(counts[:per_class], max_weight),
            _share_equally(counts[per_class:], max_weight),
        ]
    )
    return BalancedSpec(
        spec=spec,
        cells=tuple(
            GroupCell(value, combination, n, float(w))
            for (value, combination, n), w in zip(cells, weights, strict=True)
        ),
        grouped=int(counts.sum()),
        max_weight=float(max_weight),
    )


def _share_equally(counts: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-image weights giving each non-empty cell of ``counts`` the same total, the whole
    keeping ``counts.sum()``, no image over ``max_weight`` (>= 1, so it always adds up)."""
    total = counts.sum()
    weights = np.zeros_like(counts)
    free = counts > 0  # cells that share what the capped ones leave
    capped = np.zeros_like(free)
    while free.any():
        share = (total - max_weight * counts[capped].sum()) / free.sum()
        over = free & (counts * max_weight < share)  # these would get more than the cap
        if not over.any():
            weights[free] = share / counts[free]
            break
        capped |= over
        free &= ~over
    weights[capped] = max_weight
    return weights


class GroupBalance(nn.Module):
    """Per-entry loss weights ``[B, A]`` from a batch's labels: for each balanced spec, the
    target's column gets its cell's weight (:func:`balance_weights`); every other entry, and
    a row with an unknown grouping label, weighs 1. The tables are buffers (``.to(device)``).

    Built from the training split's labels only (:meth:`from_labels`); the same labels give
    the same weights, so a resumed or distributed run weighs exactly as the first process.
    """

    def __init__(self, balanced: Sequence[BalancedSpec], attributes: Sequence[str]) -> None:
        super().__init__()
        names = list(attributes)
        self.balanced = tuple(balanced)
        self.n_attributes = len(names)
        self.columns = [names.index(b.spec.target) for b in self.balanced]
        self.by_columns = [[names.index(a) for a in b.spec.by] for b in self.balanced]
        for i, b in enumerate(self.balanced):
            # An empty cell has no training image; should a row ever fall there it weighs 1.
            table = [c.weight if c.count else 1.0 for c in b.cells]
            self.register_buffer(f"table{i}", torch.tensor(table, dtype=torch.float32))

    @classmethod
    def from_labels(
        cls,
        labels: np.ndarray,
        attributes: Sequence[str],
        specs: Sequence[SubgroupSpec],
        max_weight: float,
    ) -> GroupBalance:
        """The balance of ``specs`` on the training labels ``[N, A]``. One spec per target:
        two specs for the same attribute would each undo the other's weights."""
        seen: dict[str, SubgroupSpec] = {}
        for spec in specs:
            if spec.target in seen:
                raise UsageError(
                    f"{spec.target} is balanced twice ({seen[spec.target]} and {spec}).",
                    "Give one spec per attribute, grouping by all its attributes at once: "
                    f"'{spec.target}|{','.join(dict.fromkeys(seen[spec.target].by + spec.by))}'.",
                )
            seen[spec.target] = spec
        return cls([balance_weights(labels, attributes, s, max_weight) for s in specs], attributes)

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` weights for the labels ``target`` (1/0/NaN)."""
        if target.dim() != 2 or target.shape[1] != self.n_attributes:
            raise ValueError(f"target must be [B, {self.n_attributes}]; got {tuple(target.shape)}")
        weight = torch.ones(target.shape, dtype=torch.float32, device=target.device)
        for i, (col, by) in enumerate(zip(self.columns, self.by_columns, strict=True)):
            labels = target[:, [col, *by]]
            known = ~torch.isnan(labels[:, 1:]).any(dim=1)
            bits = (labels > 0.5).long()  # NaN compares False; such rows are not `known`
            code = torch.zeros(len(target), dtype=torch.long, device=target.device)
            for j in range(bits.shape[1]):  # target first, then by in order: cells' order
                code = code * 2 + bits[:, j]
            table: torch.Tensor = getattr(self, f"table{i}")
            weight[:, col] = torch.where(known, table.to(target.device)[code], weight[:, col])
        return weight

    def extra_repr(self) -> str:
        return ", ".join(str(b.spec) for b in self.balanced)


class BCELoss(nn.Module):
    """Masked binary cross-entropy; ``forward(logits [B, A], target [B, A], mask=None)``;
    ``groups`` (a :class:`GroupBalance`) weighs each entry."""

    def __init__(self, groups: GroupBalance | None = None) -> None:
        super().__init__()
        self.groups = groups

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return bce_loss(logits, target, mask, weight=_entry_weight(self.groups, target))


class WeightedBCELoss(nn.Module):
    """Masked BCE with per-attribute ``pos_weight [A]`` (see :func:`pos_weight_from_rates`).

    The weights are a buffer, so ``.to(device)`` moves them and checkpoints keep them.
    """

    pos_weight: torch.Tensor  # a registered buffer; declared for type checkers

    def __init__(
        self, pos_weight: torch.Tensor | Sequence[float], groups: GroupBalance | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.as_tensor(pos_weight, dtype=torch.float32))
        self.groups = groups

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return bce_loss(
            logits,
            target,
            mask,
            pos_weight=self.pos_weight,
            weight=_entry_weight(self.groups, target),
        )


class FocalLoss(nn.Module):
    """Masked sigmoid focal loss; :func:`focal_loss` explains gamma, alpha and pos_weight."""

    pos_weight: torch.Tensor | None  # a registered buffer (None: unweighted)

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        pos_weight: torch.Tensor | Sequence[float] | None = None,
        groups: GroupBalance | None = None,
    ) -> None:
        super().__init__()
        self.groups = groups
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
            logits,
            target,
            mask,
            gamma=self.gamma,
            alpha=self.alpha,
            pos_weight=self.pos_weight,
            weight=_entry_weight(self.groups, target),
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def _entry_weight(groups: GroupBalance | None, target: torch.Tensor) -> torch.Tensor | None:
    return None if groups is None else groups(target)


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
    groups: GroupBalance | None = None,
) -> nn.Module:
    """The loss module called ``name`` (one of :data:`LOSSES`).

    pos_weight ``[A]`` is required by "weighted-bce", optional for "focal" and refused by
    "bce" (pass "weighted-bce" to weight positives). gamma and alpha are used by "focal".
    groups (:class:`GroupBalance`) works with every loss and composes with pos_weight by
    multiplication: it keeps each class's total, so pos_weight still sets how much positives
    weigh against negatives, and groups how a class's weight is shared among its groups.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in LOSSES:
        raise unknown_name_error("loss", str(name), LOSSES)
    if key == "bce":
        if pos_weight is not None:
            raise ValueError(
                'loss "bce" takes no pos_weight; use "weighted-bce" to weight positives'
            )
        return BCELoss(groups)
    if key == "weighted-bce":
        if pos_weight is None:
            raise ValueError(
                'loss "weighted-bce" needs pos_weight [A]; build it with pos_weight_from_rates()'
            )
        return WeightedBCELoss(pos_weight, groups)
    return FocalLoss(gamma=gamma, alpha=alpha, pos_weight=pos_weight, groups=groups)


class DistillLoss(nn.Module):
    """Knowledge distillation for independent binary attributes (``faceattr distill``).

    ``alpha * label_loss(logits, target, mask) + (1 - alpha) * T^2 * KL``, where KL is the
    binary Kullback-Leibler divergence from the teacher's tempered probability
    ``sigmoid(teacher / T)`` to the student's ``sigmoid(logits / T)``, averaged over the
    entries whose teacher logit is known (finite). KL is the binary cross-entropy with the
    teacher's probability as the target minus that target's entropy: the same gradient as
    BCE, but 0 when the student matches the teacher, so the logged loss says how far it is.
    ``T^2`` keeps the soft term's gradient about the same size for any temperature (Hinton
    et al., 2015). The label loss's group weights (``--balance-groups``) weigh both terms.
    Rows without labels (``--unlabeled``) have an all-NaN target: the label loss skips them
    and only the teacher teaches them.
    """

    def __init__(self, label_loss: nn.Module, *, alpha: float, temperature: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.label_loss = label_loss
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def soft_loss(
        self, logits: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``T^2`` times the mean binary KL(teacher_T || student_T) over finite teacher
        logits (0.0, attached, when there is none); ``weight`` ``[B, A]`` multiplies each
        entry's KL (the mean still divides by the number of entries)."""
        t = self.temperature
        known = torch.isfinite(teacher)
        p = torch.sigmoid(torch.where(known, teacher.float(), 0.0) / t)
        z = logits.float() / t
        bce = F.binary_cross_entropy_with_logits(z, p, reduction="none")
        entropy = F.binary_cross_entropy(p, p, reduction="none")  # the minimum of bce
        kl = (bce - entropy) * known
        if weight is not None:
            kl = kl * weight
        return (t * t) * kl.sum() / known.sum().clamp(min=1)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if teacher is None:
            raise ValueError("DistillLoss needs the teacher's logits of the batch")
        if teacher.shape != logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher.shape)} do not match {tuple(logits.shape)}"
            )
        # --balance-groups weighs the teacher's term as it weighs the labels' (an entry whose
        # labels are unknown weighs 1), so the teacher's own bias on a group is not taught
        # at full weight while the labels are balanced.
        weight = _entry_weight(getattr(self.label_loss, "groups", None), target)
        if weight is not None:
            weight = torch.where(torch.isnan(target), 1.0, weight)
        soft = self.soft_loss(logits, teacher, weight)
        if self.alpha == 0.0:
            return soft
        return self.alpha * self.label_loss(logits, target, mask) + (1 - self.alpha) * soft

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"
