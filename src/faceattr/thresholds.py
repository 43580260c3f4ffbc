"""Decision thresholds: tuning them for a metric, and the policy that decides which ship.

* :func:`tune_thresholds` finds, per attribute, the threshold that maximises a metric on
  labelled (validation) data.
* :func:`choose_thresholds` is the policy a model's shipped thresholds come from (training,
  fine-tuning, ``faceattr ensemble``, ``tools/set_default_thresholds.py``): an attribute keeps
  a tuned threshold only when it beats 0.5 out of fold; every other attribute keeps 0.5.
* :func:`two_fold_tuned` and :func:`held_out_scores` are the honest estimates models are
  compared by in docs/default-model.md.

Arrays follow :mod:`faceattr.metrics`' conventions (``[N, A]`` probabilities, 0/1/NaN targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from faceattr.config import (
    THRESHOLD_DRAWS,
    THRESHOLD_FOLDS,
    THRESHOLD_METRICS,  # what thresholds can maximise
    THRESHOLD_SIGNIFICANCE,
)
from faceattr.errors import UsageError, unknown_name_error
from faceattr.metrics import _check_arrays, _label_masks, _ratio, compute_metrics, defined

# What held_out_scores returns: mean accuracies at 0.5 and with thresholds tuned two-fold.
HeldOutScores = TypedDict(
    "HeldOutScores",
    {
        "mean_accuracy_at_0.5": float,
        "mean_balanced_accuracy_at_0.5": float,
        "mean_accuracy_tuned_two_fold": float,
        "mean_balanced_accuracy_tuned_two_fold": float,
    },
)


def _best_threshold(
    probs: np.ndarray, is_pos: np.ndarray, metric: str, max_accuracy_drop: float | None = None
) -> float:
    """The threshold maximising ``metric`` for one attribute (known labels only), among the
    thresholds whose accuracy is at most ``max_accuracy_drop`` below the accuracy at 0.5 (if
    set; the cut never excludes 0.5's own decisions, so the result is never worse than 0.5 on
    ``metric`` on these data).

    Candidates sit between each pair of neighbouring distinct probabilities, plus one below the
    lowest (all positive) and one above the highest (all negative); the sort + cumsum makes
    every candidate's confusion counts O(1). Ties go to the candidate nearest 0.5.
    """
    n_pos = int(np.count_nonzero(is_pos))
    n_neg = is_pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(probs)  # ties are merged below, so an unstable sort is fine
    score = probs[order]
    pos_sorted = is_pos[order]
    # Last index of each run of equal scores; thresholds go just above these.
    last = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    distinct = score[last]
    # Rows at or below a run end are predicted negative for a threshold just above it.
    pos_below = np.cumsum(pos_sorted, dtype=np.int64)[last]
    neg_below = (last + 1) - pos_below
    # Candidate k predicts negative for runs < k; candidate 0 predicts everything positive.
    fn = np.concatenate(([0], pos_below))
    tn = np.concatenate(([0], neg_below))
    tp = n_pos - fn
    fp = n_neg - tn

    if metric == "balanced_accuracy":
        value = (tp / n_pos + tn / n_neg) / 2
    elif metric == "accuracy":
        value = (tp + tn) / (n_pos + n_neg)
    else:  # f1; the denominator is >= n_pos > 0
        value = 2 * tp / (2 * tp + fp + fn)

    # Candidate thresholds, in the scores' dtype (compute_metrics compares in it): midpoints
    # between neighbouring distinct scores, and one at each end.
    dtype = probs.dtype
    mids = ((distinct[:-1].astype(np.float64) + distinct[1:]) / 2).astype(dtype)
    # For adjacent floats the midpoint rounds onto one of the two scores; onto the lower one
    # it would count that score as positive, so use the upper score there.
    mids = np.where(mids <= distinct[:-1], distinct[1:], mids)
    low = distinct[0] / 2
    high = dtype.type((float(distinct[-1]) + 1) / 2)
    if high <= distinct[-1]:  # the top score is (almost) 1.0
        high = np.nextafter(distinct[-1], dtype.type(np.inf))
    candidates = np.concatenate(([low], mids, [high])).astype(np.float64)
    if candidates[-1] > 1:
        # Predicting "all negative" would need a threshold above 1; leave that option out.
        value[-1] = -np.inf
    if max_accuracy_drop is not None and metric != "accuracy":
        # The cost is measured against 0.5's accuracy, not the best accuracy: for a weak
        # model the best is often "always the majority", and a limit measured from there would
        # leave only thresholds worse than 0.5 on the metric itself.
        accuracy = (tp + tn) / (n_pos + n_neg)
        if candidates[-1] > 1:
            accuracy[-1] = -np.inf
        half = probs >= dtype.type(0.5)
        at_half = np.count_nonzero(half == is_pos) / is_pos.size
        value = np.where(accuracy >= at_half - max_accuracy_drop - 1e-12, value, -np.inf)

    best = np.flatnonzero(value >= value.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def tune_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    metric: str = "balanced_accuracy",
    max_accuracy_drop: float | None = None,
) -> np.ndarray:
    """One decision threshold per attribute maximising ``metric`` on these (validation) data.

    ``max_accuracy_drop`` (e.g. 0.01) only allows thresholds whose accuracy is at most that
    far below the attribute's accuracy at 0.5: balanced accuracy without flooding rare
    attributes with false positives.

    probs: ``[N, A]``; targets: ``[N, A]`` 0/1 with NaN unknown (ignored). metric: one of
    :data:`THRESHOLD_METRICS`. Returns float64 ``[A]``; attributes whose known labels hold a
    single class (or none) keep 0.5. Use the result as ``compute_metrics(thresholds=...)`` on a
    *different* split, or the scores will be optimistic. This is the raw, in-sample tuner:
    what a model ships is decided by :func:`choose_thresholds`, which keeps 0.5 wherever tuning
    does not win under cross-validation.
    """
    if metric not in THRESHOLD_METRICS:
        raise unknown_name_error("threshold metric", str(metric), THRESHOLD_METRICS)
    probs, targets = _check_arrays(probs, targets)
    pos, neg = _label_masks(targets)
    out = np.full(probs.shape[1], 0.5)
    probs_t, pos_t, known_t = (np.ascontiguousarray(x.T) for x in (probs, pos, pos | neg))
    for a in range(probs.shape[1]):
        known = known_t[a]
        out[a] = _best_threshold(probs_t[a][known], pos_t[a][known], metric, max_accuracy_drop)
    return out


# ----------------------------------------------------------------------------- threshold policy
#
# What "present" means for a model is decided here, once, for training, ensembles and the
# tools: per attribute, a tuned threshold ships only when it beats 0.5 on the chosen metric
# under cross-validation on the images it is tuned on (each fold scored with thresholds tuned
# on the other folds); everywhere else the attribute keeps 0.5.


# The record of a decision, kept in a model file's metadata (``extra["threshold_policy"]``)
# and reported by training and `faceattr ensemble`. ``out_of_fold`` holds, per attribute,
# the metric of the tuned thresholds out of fold (``tuned``) and at 0.5 on the same images.
class ThresholdPolicy(TypedDict, total=False):
    policy: str  # "cross-validated" (tuned where it wins) or "0.5" (never tuned)
    metric: str
    max_accuracy_drop: float | None
    folds: int
    folds_by: str  # "label" (stratified per attribute) or "identity" (groups)
    seed: int
    images: int
    split: str  # where the thresholds were chosen (set by the caller)
    tuned: list[str]  # attributes whose tuned threshold won; the others keep 0.5
    out_of_fold: dict[str, dict[str, float | None]]


def _score(tp: Any, fp: Any, tn: Any, fn: Any, metric: str) -> Any:
    """``metric`` of one attribute's confusion counts (numbers or arrays of them); NaN where
    undefined."""
    pos, neg = np.asarray(tp + fn), np.asarray(tn + fp)
    if metric == "accuracy":
        return _ratio(tp + tn, pos + neg)
    if metric == "balanced_accuracy":
        return (_ratio(tp, pos) + _ratio(tn, neg)) / 2
    return _ratio(2 * tp, 2 * tp + fp + fn)  # f1


def _score_of(pred: np.ndarray, is_pos: np.ndarray, metric: str) -> float:
    tp = int(np.count_nonzero(pred & is_pos))
    fp = int(np.count_nonzero(pred & ~is_pos))
    fn = int(np.count_nonzero(is_pos)) - tp
    return float(_score(tp, fp, is_pos.size - tp - fp - fn, fn, metric))


def _folds(
    n: int,
    folds: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """A fold number in ``[0, folds)`` for each of ``n`` rows, dealt round-robin after a
    seeded shuffle: rows of one ``groups`` value (a person) stay in one fold; otherwise each
    ``strata`` value (a label) is spread evenly over the folds."""
    out = np.empty(n, dtype=np.int64)
    if groups is not None:
        unique, inverse = np.unique(groups, return_inverse=True)
        dealt = np.empty(len(unique), dtype=np.int64)
        dealt[rng.permutation(len(unique))] = np.arange(len(unique)) % folds
        return dealt[inverse]
    offset = 0
    for value in [None] if strata is None else np.unique(strata):
        rows = np.arange(n) if value is None else np.flatnonzero(strata == value)
        rows = rows[rng.permutation(len(rows))]
        out[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)  # the next stratum starts where this one ended
    return out


def _wins(
    tuned: np.ndarray, half: np.ndarray, is_pos: np.ndarray, metric: str, rng: np.random.Generator
) -> bool:
    """Whether the out-of-fold decisions ``tuned`` beat 0.5's decisions ``half`` on
    ``metric``, by more than chance: a paired sign-flip test over the images where the two
    disagree (each such image's two decisions swapped at random, THRESHOLD_DRAWS times) must
    put the observed gain in the top THRESHOLD_SIGNIFICANCE of the draws. Without it, some
    of 40 attributes would "win" by a few lucky images and ship a threshold no better than
    0.5 on new data."""
    observed = _score_of(tuned, is_pos, metric) - _score_of(half, is_pos, metric)
    if not observed > 1e-12:  # NaN (undefined) never wins either
        return False
    differ = tuned != half
    same_tuned = tuned[~differ]
    same_pos = is_pos[~differ]
    # Confusion counts of the images both agree on, then the disagreements.
    tp0 = np.count_nonzero(same_tuned & same_pos)
    fp0 = np.count_nonzero(same_tuned & ~same_pos)
    fn0 = np.count_nonzero(~same_tuned & same_pos)
    tn0 = same_pos.size - tp0 - fp0 - fn0
    d_tuned, d_pos = tuned[differ], is_pos[differ]
    swap = rng.random((THRESHOLD_DRAWS, d_tuned.size)) < 0.5
    a = d_tuned ^ swap  # one side's decisions in each draw; the other side has ~a
    scores = []
    for side in (a, ~a):
        tp = tp0 + np.count_nonzero(side & d_pos, axis=1)
        fp = fp0 + np.count_nonzero(side & ~d_pos, axis=1)
        fn = fn0 + np.count_nonzero(~side & d_pos, axis=1)
        tn = tn0 + np.count_nonzero(~side & ~d_pos, axis=1)
        scores.append(_score(tp, fp, tn, fn, metric))
    drawn = scores[0] - scores[1]
    p_value = (1 + np.count_nonzero(drawn >= observed - 1e-12)) / (1 + THRESHOLD_DRAWS)
    return bool(p_value <= THRESHOLD_SIGNIFICANCE)


def _check_policy(metric: str, folds: int) -> None:
    if metric not in THRESHOLD_METRICS:
        raise unknown_name_error("threshold metric", str(metric), THRESHOLD_METRICS)
    if int(folds) != folds or folds < 2:
        raise UsageError(f"Cross-validation needs at least 2 folds; got {folds}.")


def _choose_one(
    probs: np.ndarray,
    is_pos: np.ndarray,
    metric: str,
    max_accuracy_drop: float | None,
    folds: int,
    rng: np.random.Generator,
    groups: np.ndarray | None,
) -> tuple[float, bool, float, float]:
    """One attribute's decision (known labels only): (threshold, tuned, out-of-fold score
    of tuning, score at 0.5 on the same images)."""
    half = probs >= probs.dtype.type(0.5)
    at_half = _score_of(half, is_pos, metric)
    n_pos = int(np.count_nonzero(is_pos))
    if n_pos == 0 or n_pos == is_pos.size or is_pos.size < folds:
        return 0.5, False, np.nan, at_half
    fold = _folds(is_pos.size, folds, rng, groups=groups, strata=None if groups is not None
                  else is_pos)  # fmt: skip
    pred = np.zeros_like(half)
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        train = ~test
        thr = _best_threshold(probs[train], is_pos[train], metric, max_accuracy_drop)
        pred[test] = probs[test] >= probs.dtype.type(thr)
    tuned_score = _score_of(pred, is_pos, metric)
    if not _wins(pred, half, is_pos, metric, rng):  # nor does an undefined (NaN) score
        return 0.5, False, tuned_score, at_half
    return _best_threshold(probs, is_pos, metric, max_accuracy_drop), True, tuned_score, at_half


def choose_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    *,
    metric: str = "accuracy",
    max_accuracy_drop: float | None = None,
    folds: int = THRESHOLD_FOLDS,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[np.ndarray, ThresholdPolicy]:
    """The thresholds a model ships, and the record of how they were chosen.

    For each attribute, thresholds are tuned for ``metric`` (:func:`tune_thresholds`, with
    ``max_accuracy_drop``) on ``folds - 1`` folds of these images and applied to the fold
    left out; the pooled out-of-fold score is compared with 0.5's on the same images. Only an
    attribute whose tuning scores strictly better keeps its tuned threshold (tuned on all the
    images); every other attribute keeps 0.5. Folds are stratified by the attribute's label,
    or follow ``groups`` (``[N]``, e.g. identities: one person's images in one fold). Seeded,
    so the same inputs always give the same answer.

    probs: ``[N, A]``; targets: ``[N, A]`` 0/1 with NaN unknown. Returns (float64 ``[A]``
    thresholds, :data:`ThresholdPolicy`).
    """
    _check_policy(metric, folds)
    probs, targets = _check_arrays(probs, targets)
    attributes = list(attributes)
    if len(attributes) != probs.shape[1]:
        raise ValueError(f"got {len(attributes)} attribute names for {probs.shape[1]} columns")
    group_ids = None if groups is None else np.asarray(groups).reshape(-1)
    if group_ids is not None and len(group_ids) != len(probs):
        raise ValueError(f"got {len(group_ids)} groups for {len(probs)} images")
    pos, neg = _label_masks(targets)
    thresholds = np.full(probs.shape[1], 0.5)
    tuned: list[str] = []
    out_of_fold: dict[str, dict[str, float | None]] = {}
    for a, name in enumerate(attributes):
        known = pos[:, a] | neg[:, a]
        rng = np.random.default_rng([seed, a])  # one stream per attribute: order-independent
        thr, won, tuned_score, at_half = _choose_one(
            probs[known, a], pos[known, a], metric, max_accuracy_drop, folds, rng,
            None if group_ids is None else group_ids[known],
        )  # fmt: skip
        thresholds[a] = thr
        if won:
            tuned.append(name)
        out_of_fold[name] = {
            "tuned": None if np.isnan(tuned_score) else round(float(tuned_score), 4),
            "at_0.5": None if np.isnan(at_half) else round(float(at_half), 4),
        }
    policy: ThresholdPolicy = {
        "policy": "cross-validated",
        "metric": metric,
        "max_accuracy_drop": None if metric == "accuracy" else max_accuracy_drop,
        "folds": int(folds),
        "folds_by": "label" if group_ids is None else "identity",
        "seed": int(seed),
        "images": int(len(probs)),
        "tuned": tuned,
        "out_of_fold": out_of_fold,
    }
    return thresholds, policy


def untuned_policy() -> ThresholdPolicy:
    """The record of a model that decides every attribute at 0.5 (tuning switched off)."""
    return {"policy": "0.5", "tuned": []}


def policy_out_of_fold(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    *,
    metric: str = "accuracy",
    max_accuracy_drop: float | None = None,
    folds: int = THRESHOLD_FOLDS,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> np.ndarray:
    """An honest estimate of :func:`choose_thresholds` itself: ``[N, A]`` bool decisions in
    which each image is decided by thresholds chosen (cross-validation included) on the other
    ``folds - 1`` folds of images (``groups``: one group's images in one fold). Score them
    with ``compute_metrics(decisions.astype(float), targets, attributes)`` (at 0.5) for
    accuracy, balanced and strict accuracy."""
    _check_policy(metric, folds)
    probs, targets = _check_arrays(probs, targets)
    group_ids = None if groups is None else np.asarray(groups).reshape(-1)
    rng = np.random.default_rng([seed, 1_000_003])
    fold = _folds(len(probs), folds, rng, groups=group_ids)
    out = np.zeros(probs.shape, dtype=bool)
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        train = ~test
        thr, _ = choose_thresholds(
            probs[train], targets[train], attributes, metric=metric,
            max_accuracy_drop=max_accuracy_drop, folds=folds, seed=seed,
            groups=None if group_ids is None else group_ids[train],
        )  # fmt: skip
        out[test] = probs[test] >= thr.astype(probs.dtype)
    return out


def two_fold_tuned(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    *,
    max_accuracy_drop: float | None,
    seed: int = 0,
) -> dict[str, float]:
    """An honest estimate of tuned thresholds: tune them on one random half of the images,
    measure on the other, both ways round, and average. Returns
    ``mean_accuracy_tuned_two_fold`` and ``mean_balanced_accuracy_tuned_two_fold``."""
    probs, targets = _check_arrays(probs, targets)
    order = np.random.default_rng(seed).permutation(len(probs))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    accuracy, balanced = [], []
    for tune_on, test_on in (halves, halves[::-1]):
        thr = tune_thresholds(probs[tune_on], targets[tune_on], max_accuracy_drop=max_accuracy_drop)
        m = compute_metrics(probs[test_on], targets[test_on], attributes, thresholds=thr)
        accuracy.append(defined(m["mean_accuracy"], "mean accuracy"))
        balanced.append(defined(m["mean_balanced_accuracy"], "mean balanced accuracy"))
    return {
        "mean_accuracy_tuned_two_fold": round(float(np.mean(accuracy)), 4),
        "mean_balanced_accuracy_tuned_two_fold": round(float(np.mean(balanced)), 4),
    }


def held_out_scores(
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: Sequence[str],
    *,
    max_accuracy_drop: float | None,
) -> HeldOutScores:
    """Mean accuracy and mean balanced accuracy at 0.5 (``..._at_0.5``) and with thresholds
    tuned two-fold (:func:`two_fold_tuned`): how models are compared in docs/default-model.md."""
    at_half = compute_metrics(probs, targets, attributes, thresholds=0.5)
    tuned = two_fold_tuned(probs, targets, attributes, max_accuracy_drop=max_accuracy_drop)
    return {
        "mean_accuracy_at_0.5": round(defined(at_half["mean_accuracy"], "mean accuracy"), 4),
        "mean_balanced_accuracy_at_0.5": round(
            defined(at_half["mean_balanced_accuracy"], "mean balanced accuracy"), 4
        ),
        "mean_accuracy_tuned_two_fold": tuned["mean_accuracy_tuned_two_fold"],
        "mean_balanced_accuracy_tuned_two_fold": tuned["mean_balanced_accuracy_tuned_two_fold"],
    }
