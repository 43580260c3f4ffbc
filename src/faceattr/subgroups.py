"""Subgroups: an attribute looked at within the groups that other attributes make.

One spec, ``"Male|Heavy_Makeup,Wearing_Lipstick"``, says "the attribute ``Male``, within each
combination of ``Heavy_Makeup`` x ``Wearing_Lipstick``" (4 groups: both absent, ..., both
present). Several specs are separated by ``;``. ``eval``/``report --subgroups`` measure the
target within each group; ``train --balance-groups`` weighs the groups equally in the
target's loss. This module owns the syntax and the grouping of labels; both use it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faceattr.attributes import resolve_attributes
from faceattr.errors import UsageError

SYNTAX = "TARGET|BY[,BY...][;TARGET|BY...]"
EXAMPLE = "Male|Heavy_Makeup,Wearing_Lipstick"
MAX_BY = 4  # 2**4 = 16 groups per spec: more leaves most groups empty on CelebA-sized data
MAX_SPECS = 40


@dataclass(frozen=True)
class SubgroupSpec:
    """The attribute ``target`` within each combination of the attributes ``by``."""

    target: str
    by: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.target}|{','.join(self.by)}"

    def combinations(self) -> list[tuple[bool, ...]]:
        """Every combination of present (True) / absent (False) of ``by``, absent first."""
        return list(itertools.product((False, True), repeat=len(self.by)))

    def group_name(self, combination: Sequence[bool]) -> str:
        """``"Heavy_Makeup=no, Wearing_Lipstick=yes"`` for a combination of ``by``."""
        return ", ".join(
            f"{b}={'yes' if on else 'no'}" for b, on in zip(self.by, combination, strict=True)
        )

    def group_masks(
        self, targets: np.ndarray, attributes: Sequence[str]
    ) -> list[tuple[tuple[bool, ...], np.ndarray]]:
        """For each combination, the rows of ``targets`` (``[N, A]`` 0/1/NaN) in that group.

        A row whose label of any ``by`` attribute is unknown (NaN) is in no group."""
        cols = [list(attributes).index(b) for b in self.by]
        labels = targets[:, cols]
        known = ~np.isnan(labels).any(axis=1)
        on = labels == 1
        out = []
        for combo in self.combinations():
            mask = known & np.all(on == np.array(combo, dtype=bool), axis=1)
            out.append((combo, mask))
        return out


def parse_subgroups(
    text: str | Sequence[str] | None, attributes: Sequence[str]
) -> list[SubgroupSpec]:
    """Parse ``"Male|Heavy_Makeup,Wearing_Lipstick; Young|Male"`` against ``attributes``.

    Names match case-insensitively (as everywhere in faceattr) and come back in the model's
    spelling. Raises :class:`UsageError` with the syntax for anything malformed: a missing
    ``|``, no grouping attribute, the target among its own groups, more than
    :data:`MAX_BY` grouping attributes, an unknown name. ``None`` or empty gives ``[]``."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    raw = [p.strip() for part in parts for p in part.split(";") if p.strip()]
    if len(raw) > MAX_SPECS:
        raise UsageError(
            f"{len(raw)} subgroup specs given; at most {MAX_SPECS}.",
            f"Give fewer specs ({SYNTAX}).",
        )
    hint = f"Write each as {SYNTAX}, for example {EXAMPLE!r}."
    specs: list[SubgroupSpec] = []
    for item in raw:
        target_text, bar, by_text = item.partition("|")
        by_names = [b.strip() for b in by_text.split(",") if b.strip()]
        if not bar or not target_text.strip() or not by_names:
            raise UsageError(
                f"Subgroup spec {item!r} needs an attribute, '|' and at least one attribute "
                "to group by.",
                hint,
            )
        try:
            (target,) = resolve_attributes([target_text.strip()], attributes)
            by = resolve_attributes(by_names, attributes)
        except UsageError as exc:  # an unknown name: say which spec, and the syntax
            raise UsageError(
                f"Subgroup spec {item!r}: {exc.message}", f"{exc.hint}. {hint}"
            ) from exc
        if target in by:
            raise UsageError(
                f"Subgroup spec {item!r} groups {target} by itself.",
                f"Group {target} by other attributes. {hint}",
            )
        if len(by) > MAX_BY:
            raise UsageError(
                f"Subgroup spec {item!r} groups by {len(by)} attributes: {2 ** len(by)} groups.",
                f"Group by at most {MAX_BY} attributes ({2**MAX_BY} groups).",
            )
        spec = SubgroupSpec(target, tuple(by))
        if spec not in specs:
            specs.append(spec)
    return specs


# ----------------------------------------------------------------------------- accuracy

MIN_IMAGES = 30  # a group with fewer labelled images is marked "few" and is never the worst
Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n`` (95% by default).

    Unlike ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and is honest for small ``n`` and
    for proportions near 0 or 1: 12 of 12 right gives [0.757, 1.0], not [1.0, 1.0]. None
    when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


@dataclass
class GroupAccuracy:
    """The target's decisions within one group (or ``all``): counts, accuracy with its 95%
    Wilson interval, and the error rates that explain it. Rates are None for an empty
    denominator."""

    group: str  # "Heavy_Makeup=no, Wearing_Lipstick=yes", or "all"
    where: dict[str, bool]  # the grouping attributes' values ({} for "all")
    images: int  # images in the group whose target label is known
    positives: int  # ... labelled positive for the target
    errors: int  # wrong decisions
    false_positives: int
    false_negatives: int
    accuracy: float | None
    accuracy_low: float | None  # 95% Wilson interval of the accuracy
    accuracy_high: float | None
    false_positive_rate: float | None  # false_positives / negatives
    false_negative_rate: float | None  # false_negatives / positives
    few: bool  # fewer than ``min_images`` images: its accuracy says little

    def to_json(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class SubgroupAccuracy:
    """One spec's numbers: the target overall and within each group of its ``by`` attributes
    (every combination, empty ones included), at the target's decision ``threshold``."""

    spec: str  # "Male|Heavy_Makeup,Wearing_Lipstick"
    target: str
    by: list[str]
    threshold: float
    overall: GroupAccuracy  # every image with a known target label
    groups: list[GroupAccuracy]  # in SubgroupSpec.combinations() order
    ungrouped: int  # images with a known target label but an unknown label of a ``by``
    worst_group: str | None  # the lowest accuracy among groups of at least min_images
    gap: float | None  # overall accuracy minus the worst group's (points lost there)
    min_images: int

    @property
    def worst(self) -> GroupAccuracy | None:
        return next((g for g in self.groups if g.group == self.worst_group), None)

    def to_json(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "target": self.target,
            "by": list(self.by),
            "threshold": self.threshold,
            "overall": self.overall.to_json(),
            "groups": [g.to_json() for g in self.groups],
            "ungrouped": self.ungrouped,
            "worst_group": self.worst_group,
            "gap": self.gap,
            "min_images": self.min_images,
        }


def _group_accuracy(
    name: str, where: dict[str, bool], decided: np.ndarray, truth: np.ndarray, min_images: int
) -> GroupAccuracy:
    """``decided`` / ``truth``: bool ``[n]`` decisions and labels of the group's images."""
    n = int(truth.size)
    positives = int(truth.sum())
    fp = int((decided & ~truth).sum())
    fn = int((~decided & truth).sum())
    errors = fp + fn
    interval = wilson_interval(n - errors, n)
    low, high = (None, None) if interval is None else (round(interval[0], 6), round(interval[1], 6))
    return GroupAccuracy(
        group=name,
        where=where,
        images=n,
        positives=positives,
        errors=errors,
        false_positives=fp,
        false_negatives=fn,
        accuracy=_rate(n - errors, n),
        accuracy_low=low,
        accuracy_high=high,
        false_positive_rate=_rate(fp, n - positives),
        false_negative_rate=_rate(fn, positives),
        few=n < min_images,
    )


def subgroup_accuracy(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    specs: Sequence[SubgroupSpec],
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    *,
    min_images: int = MIN_IMAGES,
) -> list[SubgroupAccuracy]:
    """Each spec's target, decided at its threshold (``prob >= threshold``), overall and within
    every group of its ``by`` attributes: one :class:`SubgroupAccuracy` per spec.

    ``probs`` ``[N, A]``, ``targets`` ``[N, A]`` 0/1 with NaN unknown, ``attributes`` their
    ``A`` names, ``thresholds`` one number or ``[A]``. Images whose target label is unknown
    are left out everywhere; the ``worst_group`` (and ``gap``) is chosen among groups of at
    least ``min_images`` images, so a handful of images never makes the headline."""
    probs = np.asarray(probs)
    targets = np.asarray(targets, dtype=np.float64)
    names = list(attributes)
    if probs.shape != targets.shape or probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(
            f"probs {probs.shape} and targets {targets.shape} must both be [N, {len(names)}]"
        )
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),))
    out = []
    for spec in specs:
        j = names.index(spec.target)
        known = ~np.isnan(targets[:, j])
        decided = probs[:, j] >= thr[j]
        truth = targets[:, j] == 1
        overall = _group_accuracy("all", {}, decided[known], truth[known], min_images)
        groups, grouped = [], np.zeros(len(known), dtype=bool)
        for combo, mask in spec.group_masks(targets, names):
            rows = mask & known
            grouped |= rows
            where = dict(zip(spec.by, combo, strict=True))
            groups.append(
                _group_accuracy(
                    spec.group_name(combo), where, decided[rows], truth[rows], min_images
                )
            )
        ranked = [g for g in groups if not g.few and g.accuracy is not None]
        worst = min(ranked, key=lambda g: g.accuracy or 0.0) if ranked else None
        gap = None
        if worst is not None and overall.images:  # from the counts, not rounded accuracies
            right = overall.images - overall.errors, worst.images - worst.errors
            gap = round(right[0] / overall.images - right[1] / worst.images, 6)
        out.append(
            SubgroupAccuracy(
                spec=str(spec),
                target=spec.target,
                by=list(spec.by),
                threshold=round(float(thr[j]), 6),
                overall=overall,
                groups=groups,
                ungrouped=int((known & ~grouped).sum()),
                worst_group=None if worst is None else worst.group,
                gap=gap,
                min_images=min_images,
            )
        )
    return out
