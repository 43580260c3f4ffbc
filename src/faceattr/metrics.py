"""Multi-label metrics for attribute predictions: numpy arrays in, JSON-ready Python out.

Conventions used throughout:

* ``probs`` is ``[N, A]`` (probability that attribute ``a`` is present in image ``n``) and
  ``targets`` is ``[N, A]`` with 1.0 / 0.0 for known labels and NaN for unknown ones. Unknown
  labels are left out of every count, so they never change a metric.
* An image is predicted positive for an attribute when ``prob >= threshold``.
* A metric that is undefined for an attribute (for example balanced accuracy when the known
  labels hold a single class) is ``None`` and the attribute's ``note`` says why. Means over
  attributes use only the attributes where the metric is defined.

Everything here is vectorised over attributes; nothing calls sklearn, so nothing can warn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from faceattr.errors import DataError, ModelError, UsageError

# ----------------------------------------------------------------------------- what comes out


class AttributeMetrics(TypedDict):
    """One attribute of a report's ``per_attribute``. A rate is None where it is undefined
    (``note`` says why)."""

    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    balanced_accuracy: float | None
    average_precision: float | None
    positives: int  # known positive labels
    negatives: int  # known negative labels
    support: int  # known labels
    tp: int
    fp: int
    tn: int
    fn: int
    threshold: float  # the decision threshold the counts are at
    majority_accuracy: float | None  # of always answering the majority side
    note: str | None


class SummaryAtHalf(TypedDict):
    """A report's summary again at threshold 0.5 (``at_threshold_0.5``)."""

    mean_accuracy: float | None
    mean_balanced_accuracy: float | None
    strict_accuracy: float | None
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None


class _Report(TypedDict):
    n_images: int
    n_attributes: int
    mean_accuracy: float | None  # means over the attributes where the metric is defined
    mean_balanced_accuracy: float | None
    strict_accuracy: float | None  # images whose every known label is right
    majority_accuracy: float | None  # the no-model baseline
    majority_source: str  # "train" (training positive rates) or "evaluated"
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    mean_average_precision: float | None
    thresholds: list[float]
    per_attribute: dict[str, AttributeMetrics]


# What metrics_report adds: always threshold_source; at_threshold_0.5 with tuned thresholds.
_ReportAdditions = TypedDict(
    "_ReportAdditions",
    {"threshold_source": str, "at_threshold_0.5": SummaryAtHalf},
    total=False,
)


class MetricsReport(_Report, _ReportAdditions):
    """What :func:`compute_metrics` and :func:`metrics_report` return (docs/formats.md):
    summary metrics, ``per_attribute``, and from ``metrics_report`` ``threshold_source``
    ("tuned" or "fixed") and, for tuned thresholds, ``at_threshold_0.5``."""


class SavedMetrics(MetricsReport, total=False):
    """A ``metrics-<split>.json`` file: the report and what was measured (training writes
    ``split`` and ``model``, ``faceattr eval`` every key)."""

    split: str
    model: str
    backend: str
    dataset: str
    root: str
    tta: str
    skipped_images: int
    notes: list[str]


# ----------------------------------------------------------------------------- input checks


def _check_arrays(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``probs`` / ``targets`` to 2-D float arrays of equal shape."""
    probs = np.asarray(probs)
    targets = np.asarray(targets)
    if probs.ndim != 2 or targets.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(
            f"probs and targets must both be [N, A] arrays of the same shape; got "
            f"{probs.shape} and {targets.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    if not np.issubdtype(targets.dtype, np.floating):
        targets = targets.astype(np.float64)
    if probs.size and not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).sum())
        raise ModelError(
            f"The model produced {bad} non-finite probabilities (NaN or inf) out of {probs.size}.",
            "Training probably diverged: lower the learning rate, or evaluate an earlier "
            "checkpoint.",
        )
    known = ~np.isnan(targets)
    if not np.isin(targets[known], (0.0, 1.0)).all():
        bad_values = np.unique(targets[known & (targets != 0) & (targets != 1)])[:5]
        raise ValueError(
            f"targets must be 0, 1 or NaN (unknown); found values such as {bad_values.tolist()}"
        )
    return probs, targets


def _check_thresholds(thresholds: float | Sequence[float] | np.ndarray, n_attr: int) -> np.ndarray:
    """Broadcast ``thresholds`` (a float or ``[A]`` values in [0, 1]) to a float64 ``[A]`` array."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_attr, float(t))
    if t.shape != (n_attr,):
        raise UsageError(
            f"Got {t.size} thresholds for {n_attr} attributes.",
            "Give one threshold for all attributes, or exactly one per attribute.",
        )
    if not (np.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()):
        raise UsageError(
            f"Thresholds must be numbers between 0 and 1; got {t[~((t >= 0) & (t <= 1))][:5]}.",
            "Pass a probability such as 0.5.",
        )
    return t


def _check_rates(rates: Sequence[float] | np.ndarray | None, n_attr: int) -> np.ndarray | None:
    if rates is None:
        return None
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    if r.shape != (n_attr,):
        raise ValueError(
            f"train_positive_rates must have {n_attr} values (one per attribute); got {r.size}"
        )
    return r


# ----------------------------------------------------------------------------- small helpers


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64 with NaN where ``den == 0`` (no division warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _opt(x: float) -> float | None:
    """A plain float, or ``None`` for NaN (JSON has no NaN)."""
    x = float(x)
    return None if np.isnan(x) else x


def _nanmean(values: np.ndarray) -> float | None:
    """Mean of the defined (non-NaN) values, ``None`` if there are none; never warns."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else None


def defined(value: float | None, what: str) -> float:
    """A summary mean that has to exist to go on: ``value``, or a DataError when it is None
    (undefined for every attribute on the images scored)."""
    if value is None:
        raise DataError(
            f"The {what} is undefined on these images: no attribute has the labels it needs.",
            "Score on more images, with known positive and negative labels.",
        )
    return value


def _label_masks(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``[N, A]`` masks of known-positive and known-negative labels (NaN is neither)."""
    return targets == 1, targets == 0


def _majority_accuracy(
    positives: np.ndarray, negatives: np.ndarray, rates: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute accuracy of always predicting the majority side, and where it came from.

    The side is "positive" when the rate is above one half. ``rates`` are training-set positive
    rates; where one is None/NaN (attribute never labelled in training) the evaluated labels
    decide instead. Returns (accuracy ``[A]`` with NaN for attributes with no known labels,
    ``[A]`` bool "side chosen from the evaluated labels").
    """
    support = positives + negatives
    eval_rate = _ratio(positives, support)
    if rates is None:
        rate, from_eval = eval_rate, np.ones(len(support), dtype=bool)
    else:
        from_eval = np.isnan(rates)
        rate = np.where(from_eval, eval_rate, rates)
    majority_count = np.where(rate > 0.5, positives, negatives)
    return _ratio(majority_count, support), from_eval


# ----------------------------------------------------------------------------- average precision


def _average_precision(probs: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision per attribute, ``[A]``, NaN where there is no known positive.

    Same definition as sklearn's ``average_precision_score``: sum over distinct score
    thresholds (high to low) of ``(R_k - R_{k-1}) * P_k``. Tied scores form one threshold, so
    each positive contributes ``P / n_pos`` where P is the precision at the *end* of its tie
    group. Unknown labels count as neither positive nor negative, so they change nothing.
    One column at a time keeps memory at O(N) while each step is a vectorised sort + cumsum.
    """
    n, n_attr = probs.shape
    ap = np.full(n_attr, np.nan)
    if n == 0:
        return ap
    idx = np.arange(n)
    # Rows of the transposes are contiguous, which makes the per-attribute sorts faster.
    probs_t, pos_t, neg_t = (np.ascontiguousarray(x.T) for x in (probs, pos, neg))
    for a in range(n_attr):
        n_pos = int(np.count_nonzero(pos_t[a]))
        if n_pos == 0 or not neg_t[a].any():
            continue
        # Order inside a tie group does not matter (only group ends are read), so the fast
        # unstable sort is fine.
        order = np.argsort(-probs_t[a])
        score = probs_t[a][order]
        is_pos = pos_t[a][order]
        tp = np.cumsum(is_pos, dtype=np.int64)
        fp = np.cumsum(neg_t[a][order], dtype=np.int64)
        # A tie group ends where the next score differs (or at the last row).
        group_end = np.empty(n, dtype=bool)
        group_end[:-1] = score[:-1] != score[1:]
        group_end[-1] = True
        # Index of the end of each row's tie group: the next group end at or after it.
        end_idx = np.minimum.accumulate(np.where(group_end, idx, n - 1)[::-1])[::-1]
        tp_end, fp_end = tp[end_idx[is_pos]], fp[end_idx[is_pos]]
        # Every positive row has tp_end >= 1, so the precision below is always defined.
        ap[a] = float((tp_end / (tp_end + fp_end)).sum() / n_pos)
    return ap


# ----------------------------------------------------------------------------- public API


def majority_baseline(
    targets: np.ndarray, train_positive_rates: Sequence[float] | np.ndarray | None = None
) -> float | None:
    """Mean over attributes of the accuracy of always predicting each attribute's majority side.

    targets: ``[N, A]`` with 0/1 and NaN for unknown. The side comes from
    ``train_positive_rates`` (``[A]``, the training split's positive rates) when given, so the
    baseline is an honest "no model" reference; otherwise from ``targets`` itself (an upper
    bound for any constant predictor). Attributes with no known label are skipped; ``None`` if
    no attribute has one.
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2:
        raise ValueError(f"targets must be an [N, A] array; got shape {targets.shape}")
    pos, neg = _label_masks(targets)
    rates = _check_rates(train_positive_rates, targets.shape[1])
    acc, _ = _majority_accuracy(pos.sum(axis=0), neg.sum(axis=0), rates)
    return _nanmean(acc)


def compute_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    *,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    train_positive_rates: Sequence[float] | np.ndarray | None = None,
) -> MetricsReport:
    """Per-attribute and summary metrics for ``[N, A]`` probabilities against 0/1/NaN targets.

    probs: ``[N, A]`` probabilities; targets: ``[N, A]`` 0/1 with NaN for unknown labels (left
    out of everything); attributes: ``A`` names; thresholds: one float or ``[A]`` values;
    train_positive_rates: ``[A]`` training positive rates for the majority baseline.

    Returns a :class:`MetricsReport` (plain floats/ints/None). Summary keys: ``n_images``,
    ``n_attributes``, ``mean_accuracy``, ``mean_balanced_accuracy``, ``strict_accuracy``
    (images whose every known label is right, over images with at least one known label),
    ``majority_accuracy`` and ``majority_source`` ("train" or "evaluated"),
    ``macro_precision``, ``macro_recall``, ``macro_f1``, ``mean_average_precision``,
    ``thresholds``; plus ``per_attribute`` mapping each name to its accuracy, precision,
    recall, f1, balanced_accuracy, average_precision, positives, negatives, support, tp, fp, tn,
    fn, threshold, majority_accuracy and note (None or why some metric is undefined).
    """
    probs, targets = _check_arrays(probs, targets)
    n_images, n_attr = probs.shape
    attributes = list(attributes)
    if len(attributes) != n_attr:
        raise ValueError(f"got {len(attributes)} attribute names for {n_attr} prediction columns")
    thr = _check_thresholds(thresholds, n_attr)
    rates = _check_rates(train_positive_rates, n_attr)

    pos, neg = _label_masks(targets)
    # Compare in the probabilities' own dtype, so a float32 score of 0.7 counts as >= 0.7
    # (in float64 it is 0.699999988...). Tuned thresholds are chosen in that dtype too.
    pred = probs >= thr.astype(probs.dtype)  # [N, A]; broadcast over rows

    # Confusion counts per attribute. count_nonzero on bool arrays is much faster than sum.
    tp = np.count_nonzero(pred & pos, axis=0)
    fp = np.count_nonzero(pred & neg, axis=0)
    positives = np.count_nonzero(pos, axis=0)
    negatives = np.count_nonzero(neg, axis=0)
    fn = positives - tp
    tn = negatives - fp
    support = positives + negatives

    accuracy = _ratio(tp + tn, support)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, positives)
    specificity = _ratio(tn, negatives)
    # F1 from counts: defined whenever there is anything to get right or wrong, so a model
    # that predicts no positives on an attribute that has some scores 0 rather than None.
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    balanced = (recall + specificity) / 2  # NaN unless both classes are present
    ap = _average_precision(probs, pos, neg)
    majority, from_eval = _majority_accuracy(positives, negatives, rates)

    # Strict accuracy: an image counts if no known label is wrong; images without any known
    # label are left out (there is nothing to be right about).
    wrong = (pred & neg) | (~pred & pos)
    has_label = (pos | neg).any(axis=1)
    n_strict = int(np.count_nonzero(has_label))
    strict = (
        float(np.count_nonzero(~wrong.any(axis=1) & has_label) / n_strict) if n_strict else None
    )

    per_attribute: dict[str, AttributeMetrics] = {}
    for a, name in enumerate(attributes):
        notes: list[str] = []
        if support[a] == 0:
            notes.append("no known labels; every metric is undefined")
        elif positives[a] == 0 or negatives[a] == 0:
            only = "positive" if negatives[a] == 0 else "negative"
            notes.append(
                f"all {int(support[a])} known labels are {only}; balanced accuracy and "
                "average precision are undefined" + ("" if positives[a] else ", and so is recall")
            )
        if support[a] and tp[a] + fp[a] == 0:
            notes.append(
                f"no image predicted positive at threshold {thr[a]:g}; precision undefined"
            )
        if rates is not None and from_eval[a] and support[a]:
            notes.append("no training positive rate; majority side taken from these labels")
        per_attribute[name] = {
            "accuracy": _opt(accuracy[a]),
            "precision": _opt(precision[a]),
            "recall": _opt(recall[a]),
            "f1": _opt(f1[a]),
            "balanced_accuracy": _opt(balanced[a]),
            "average_precision": _opt(ap[a]),
            "positives": int(positives[a]),
            "negatives": int(negatives[a]),
            "support": int(support[a]),
            "tp": int(tp[a]),
            "fp": int(fp[a]),
            "tn": int(tn[a]),
            "fn": int(fn[a]),
            "threshold": float(thr[a]),
            "majority_accuracy": _opt(majority[a]),
            "note": "; ".join(notes) if notes else None,
        }

    return {
        "n_images": int(n_images),
        "n_attributes": int(n_attr),
        "mean_accuracy": _nanmean(accuracy),
        "mean_balanced_accuracy": _nanmean(balanced),
        "strict_accuracy": strict,
        "majority_accuracy": _nanmean(majority),
        "majority_source": "evaluated" if rates is None else "train",
        "macro_precision": _nanmean(precision),
        "macro_recall": _nanmean(recall),
        "macro_f1": _nanmean(f1),
        "mean_average_precision": _nanmean(ap),
        "thresholds": [float(t) for t in thr],
        "per_attribute": per_attribute,
    }


def metrics_report(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: list[str],
    thresholds: np.ndarray | list[float] | float | None,
    train_rates: np.ndarray | list[float] | None,
) -> MetricsReport:
    """Metrics at ``thresholds`` (0.5 when None), plus a summary at 0.5 when they differ."""
    used = 0.5 if thresholds is None else thresholds
    metrics = compute_metrics(
        probs, targets, attributes, thresholds=used, train_positive_rates=train_rates
    )
    metrics["threshold_source"] = "fixed" if np.isscalar(used) else "tuned"
    if not np.isscalar(used):
        at_half = compute_metrics(
            probs, targets, attributes, thresholds=0.5, train_positive_rates=train_rates
        )
        metrics["at_threshold_0.5"] = {
            "mean_accuracy": at_half["mean_accuracy"],
            "mean_balanced_accuracy": at_half["mean_balanced_accuracy"],
            "strict_accuracy": at_half["strict_accuracy"],
            "macro_precision": at_half["macro_precision"],
            "macro_recall": at_half["macro_recall"],
            "macro_f1": at_half["macro_f1"],
        }
    return metrics
