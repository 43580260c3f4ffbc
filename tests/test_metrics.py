"""Tests for faceattr.metrics: agreement with sklearn, masking, undefined cases, thresholds."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
)

from faceattr.config import THRESHOLD_FOLDS
from faceattr.errors import ModelError, UsageError
from faceattr.metrics import compute_metrics, majority_baseline
from faceattr.thresholds import (
    THRESHOLD_METRICS,
    choose_thresholds,
    policy_out_of_fold,
    tune_thresholds,
    two_fold_tuned,
)


def _random_data(n: int = 500, n_attr: int = 6, seed: int = 0, unknown: float = 0.1):
    """Informative probabilities with ties (rounded) and some NaN (unknown) targets."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.1, 0.7, n_attr)
    targets = (rng.random((n, n_attr)) < rates).astype(np.float32)
    probs = np.clip(0.35 * targets + 0.65 * rng.random((n, n_attr)), 0, 1)
    probs = np.round(probs, 2).astype(np.float32)  # ties exercise the AP tie handling
    targets[rng.random((n, n_attr)) < unknown] = np.nan
    return probs, targets, [f"attr{i}" for i in range(n_attr)]


def test_per_attribute_metrics_match_sklearn():
    probs, targets, names = _random_data()
    thresholds = [0.3, 0.4, 0.5, 0.5, 0.6, 0.7]
    result = compute_metrics(probs, targets, names, thresholds=thresholds)
    for a, name in enumerate(names):
        known = ~np.isnan(targets[:, a])
        y, p = targets[known, a].astype(int), probs[known, a]
        pred = (p >= thresholds[a]).astype(int)
        got = result["per_attribute"][name]
        assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert got["precision"] == pytest.approx(precision_score(y, pred))
        assert got["recall"] == pytest.approx(recall_score(y, pred))
        assert got["f1"] == pytest.approx(f1_score(y, pred))
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert got["average_precision"] == pytest.approx(average_precision_score(y, p))
        assert got["support"] == known.sum()
        assert got["positives"] == y.sum()
        assert got["tp"] + got["fp"] + got["tn"] + got["fn"] == got["support"]
        assert got["threshold"] == pytest.approx(thresholds[a])
        assert got["note"] is None
    per = result["per_attribute"].values()
    assert result["mean_accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in per]))
    assert result["macro_f1"] == pytest.approx(np.mean([m["f1"] for m in per]))
    assert result["mean_average_precision"] == pytest.approx(
        np.mean([m["average_precision"] for m in per])
    )
    assert result["thresholds"] == pytest.approx(thresholds)
    assert result["n_images"] == 500 and result["n_attributes"] == 6


def test_result_is_plain_json():
    probs, targets, names = _random_data(n=50, n_attr=3)
    result = compute_metrics(probs, targets, names, train_positive_rates=[0.2, 0.5, 0.9])

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert value is None or type(value) in (int, float, str), type(value)

    walk(result)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_strict_accuracy_hand_made():
    probs = np.array(
        [
            [0.9, 0.1, 0.8],  # all right
            [0.9, 0.6, 0.8],  # second wrong
            [0.2, 0.9, 0.1],  # the only wrong one (first) is unknown -> right
            [0.5, 0.5, 0.5],  # no known label -> left out
        ]
    )
    targets = np.array(
        [
            [1, 0, 1],
            [1, 0, 1],
            [np.nan, 1, 0],
            [np.nan, np.nan, np.nan],
        ]
    )
    result = compute_metrics(probs, targets, ["a", "b", "c"])
    assert result["strict_accuracy"] == pytest.approx(2 / 3)
    assert result["per_attribute"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert result["per_attribute"]["a"]["support"] == 2


def test_unknown_label_changes_nothing():
    probs, targets, names = _random_data(n=300, n_attr=4, unknown=0.0)
    base = compute_metrics(probs, targets, names)
    # Add rows whose labels are all unknown, with predictions that would be wrong.
    extra_probs = np.vstack([probs, 1 - probs[:40]])
    extra_targets = np.vstack([targets, np.full((40, 4), np.nan, dtype=np.float32)])
    masked = compute_metrics(extra_probs, extra_targets, names)
    assert masked["n_images"] == base["n_images"] + 40
    for key in ("per_attribute", "strict_accuracy", "mean_average_precision", "macro_f1"):
        assert masked[key] == base[key]


def test_single_class_attribute_gives_none_and_note_without_warnings():
    probs = np.array([[0.9, 0.2, 0.7], [0.8, 0.3, 0.4], [0.6, 0.1, 0.2]])
    targets = np.array([[1, 0, np.nan], [1, 0, np.nan], [1, 0, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics(probs, targets, ["all_pos", "all_neg", "unknown"])
        assert tune_thresholds(probs, targets).tolist() == [0.5, 0.5, 0.5]
        assert majority_baseline(targets) == pytest.approx(1.0)

    all_pos = result["per_attribute"]["all_pos"]
    assert all_pos["accuracy"] == 1.0 and all_pos["precision"] == 1.0 and all_pos["recall"] == 1.0
    assert all_pos["balanced_accuracy"] is None and all_pos["average_precision"] is None
    assert "positive" in all_pos["note"] and "balanced accuracy" in all_pos["note"]

    all_neg = result["per_attribute"]["all_neg"]
    assert all_neg["accuracy"] == 1.0
    for key in ("recall", "precision", "f1", "balanced_accuracy", "average_precision"):
        assert all_neg[key] is None, key
    assert "negative" in all_neg["note"] and "precision undefined" in all_neg["note"]

    unknown = result["per_attribute"]["unknown"]
    assert unknown["support"] == 0 and unknown["accuracy"] is None
    assert unknown["majority_accuracy"] is None
    assert "no known labels" in unknown["note"]

    # Means skip undefined values instead of becoming None or NaN.
    assert result["mean_accuracy"] == 1.0
    assert result["mean_balanced_accuracy"] is None
    assert result["macro_precision"] == 1.0


def test_per_attribute_thresholds_change_predictions():
    probs = np.array([[0.6, 0.6], [0.4, 0.4]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = compute_metrics(probs, targets, ["a", "b"], thresholds=[0.5, 0.3])
    a, b = result["per_attribute"]["a"], result["per_attribute"]["b"]
    assert (a["tp"], a["tn"], a["accuracy"]) == (1, 1, 1.0)
    assert (b["tp"], b["fp"], b["accuracy"]) == (1, 1, 0.5)
    assert result["thresholds"] == [0.5, 0.3]


@pytest.mark.parametrize("bad", [[0.5, 0.5, 0.5], [0.5, 1.5], float("nan")])
def test_bad_thresholds_are_usage_errors(bad):
    with pytest.raises(UsageError):
        compute_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["a", "b"], thresholds=bad)


def test_non_finite_probabilities_are_reported():
    with pytest.raises(ModelError, match="non-finite"):
        compute_metrics(np.array([[np.nan]]), np.array([[1.0]]), ["a"])


def test_majority_baseline_uses_train_rates():
    # Evaluated labels: attribute 0 is 75% positive, attribute 1 is 25% positive.
    targets = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=float)
    assert majority_baseline(targets) == pytest.approx(0.75)
    # Training says attribute 0 is rare, so the baseline predicts "absent": 25% right.
    assert majority_baseline(targets, [0.1, 0.1]) == pytest.approx((0.25 + 0.75) / 2)
    result = compute_metrics(
        np.full((4, 2), 0.5), targets, ["a", "b"], train_positive_rates=[0.1, 0.1]
    )
    assert result["majority_source"] == "train"
    assert result["majority_accuracy"] == pytest.approx(0.5)
    assert result["per_attribute"]["a"]["majority_accuracy"] == pytest.approx(0.25)
    assert compute_metrics(np.full((4, 2), 0.5), targets, ["a", "b"])["majority_source"] == (
        "evaluated"
    )


def test_majority_baseline_nan_train_rate_falls_back_to_evaluated():
    targets = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=float)
    assert majority_baseline(targets, [float("nan"), 0.9]) == pytest.approx((0.75 + 0.25) / 2)


def test_tune_thresholds_beats_half_on_imbalanced_data():
    rng = np.random.default_rng(1)
    n, n_attr = 2000, 3
    targets = (rng.random((n, n_attr)) < [0.05, 0.1, 0.2]).astype(np.float32)
    # A calibrated-looking model for rare attributes: positives score higher, but mostly < 0.5.
    probs = np.clip(0.1 + 0.2 * targets + 0.15 * rng.standard_normal((n, n_attr)), 0, 1)
    half = compute_metrics(probs, targets, list("abc"))
    thr = tune_thresholds(probs, targets, metric="balanced_accuracy")
    assert thr.shape == (n_attr,) and thr.dtype == np.float64
    assert ((thr > 0) & (thr < 0.5)).all()
    tuned = compute_metrics(probs, targets, list("abc"), thresholds=thr)
    assert tuned["mean_balanced_accuracy"] > half["mean_balanced_accuracy"] + 0.1


@pytest.mark.parametrize("metric", THRESHOLD_METRICS)
def test_tuned_threshold_is_optimal_among_all_candidates(metric):
    probs, targets, names = _random_data(n=200, n_attr=3, seed=3)
    thr = tune_thresholds(probs, targets, metric=metric)
    best = compute_metrics(probs, targets, names, thresholds=thr)["per_attribute"]
    for t in np.linspace(0, 1, 101):
        other = compute_metrics(probs, targets, names, thresholds=t)["per_attribute"]
        for name in names:
            if other[name][metric] is not None:
                assert best[name][metric] >= other[name][metric] - 1e-12


def test_tune_thresholds_separable_data_uses_midpoint():
    probs = np.array([[0.2], [0.3], [0.7], [0.8]])
    targets = np.array([[0.0], [0.0], [1.0], [1.0]])
    assert tune_thresholds(probs, targets, metric="accuracy")[0] == pytest.approx(0.5)
    probs = np.array([[0.1], [0.2], [0.3], [0.4]])
    assert tune_thresholds(probs, targets, metric="f1")[0] == pytest.approx(0.25)


def test_tune_thresholds_unknown_metric():
    with pytest.raises(UsageError) as err:
        tune_thresholds(np.zeros((2, 1)), np.zeros((2, 1)), metric="balanced-acc")
    text = str(err.value)
    assert "balanced-acc" in text and "balanced_accuracy" in text and "f1" in text


def test_threshold_compared_in_probability_dtype():
    # float32(0.7) is 0.69999999 in float64; it must still count as >= 0.7.
    probs = np.array([[0.7], [0.2]], dtype=np.float32)
    result = compute_metrics(probs, np.array([[1.0], [0.0]]), ["a"], thresholds=0.7)
    assert result["per_attribute"]["a"]["tp"] == 1


def test_tuned_thresholds_stay_valid_at_extremes():
    # Adjacent float32 scores, and a top score of exactly 1.0 on a negative label.
    lo = np.float32(0.3)
    hi = np.nextafter(lo, np.float32(1))
    probs = np.array([[lo], [hi], [1.0]], dtype=np.float32)
    targets = np.array([[0.0], [1.0], [0.0]])
    for metric in THRESHOLD_METRICS:
        thr = tune_thresholds(probs, targets, metric=metric)
        assert 0 <= thr[0] <= 1
        per = compute_metrics(probs, targets, ["a"], thresholds=thr)["per_attribute"]["a"]
        assert per["tp"] == 1 and per["fp"] <= 1  # hi is positive, lo is not
        assert per["tn"] >= 1


def test_tune_thresholds_accuracy_drop_limits_the_cost():
    rng = np.random.default_rng(3)
    n, a = 4000, 6
    targets = (rng.random((n, a)) < np.linspace(0.03, 0.3, a)).astype(float)
    probs = np.clip(0.25 * targets + rng.normal(0.2, 0.15, (n, a)), 0, 1)
    free = tune_thresholds(probs, targets, metric="balanced_accuracy")
    capped = tune_thresholds(probs, targets, metric="balanced_accuracy", max_accuracy_drop=0.01)
    best_acc = tune_thresholds(probs, targets, metric="accuracy")
    attrs = [f"a{i}" for i in range(a)]
    m_free = compute_metrics(probs, targets, attrs, thresholds=free)
    m_cap = compute_metrics(probs, targets, attrs, thresholds=capped)
    m_best = compute_metrics(probs, targets, attrs, thresholds=best_acc)
    m_half = compute_metrics(probs, targets, attrs, thresholds=0.5)
    for name in attrs:
        # The cost is measured against the accuracy at 0.5.
        acc_cap = m_cap["per_attribute"][name]["accuracy"]
        assert acc_cap >= m_half["per_attribute"][name]["accuracy"] - 0.01 - 1e-12
    # (the cap matters on this data: unlimited tuning costs more than that somewhere)
    assert any(
        m_free["per_attribute"][n]["accuracy"] < m_half["per_attribute"][n]["accuracy"] - 0.01
        for n in attrs
    )
    # The cap trades some balanced accuracy for accuracy, and sits between the extremes.
    assert m_cap["mean_accuracy"] > m_free["mean_accuracy"]
    assert m_cap["mean_balanced_accuracy"] >= m_best["mean_balanced_accuracy"]


def test_two_fold_tuned_is_measured_on_the_other_half():
    rng = np.random.default_rng(4)
    n, a = 2000, 3
    targets = (rng.random((n, a)) < [0.05, 0.1, 0.2]).astype(np.float32)
    probs = np.clip(0.1 + 0.2 * targets + 0.15 * rng.standard_normal((n, a)), 0, 1)
    attrs = list("abc")
    out = two_fold_tuned(probs, targets, attrs, max_accuracy_drop=None)
    assert set(out) == {"mean_accuracy_tuned_two_fold", "mean_balanced_accuracy_tuned_two_fold"}
    assert out == two_fold_tuned(probs, targets, attrs, max_accuracy_drop=None)  # seeded
    # Tuning helps on unseen halves of this data (the rare attributes sit below 0.5) ...
    half = compute_metrics(probs, targets, attrs)
    assert out["mean_balanced_accuracy_tuned_two_fold"] > half["mean_balanced_accuracy"] + 0.1
    # ... but less than tuning on all images and measuring on the same ones (optimistic).
    same = compute_metrics(probs, targets, attrs, thresholds=tune_thresholds(probs, targets))
    assert out["mean_balanced_accuracy_tuned_two_fold"] < same["mean_balanced_accuracy"]
    # On labels unrelated to the scores, tuning cannot find anything real to exploit.
    noise = two_fold_tuned(rng.random((n, a)), targets, attrs, max_accuracy_drop=None)
    assert abs(noise["mean_balanced_accuracy_tuned_two_fold"] - 0.5) < 0.05


# ----------------------------------------------------------------------------- threshold policy


def _rare_below_half(n: int, seed: int):
    """Rare attributes whose positives score higher but mostly below 0.5: tuning clearly
    finds them (balanced accuracy), 0.5 almost never does."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.05, 0.1, 0.2]).astype(np.float32)
    probs = np.clip(0.1 + 0.2 * targets + 0.15 * rng.standard_normal((n, 3)), 0, 1)
    return probs.astype(np.float32), targets, list("abc")


def test_choose_thresholds_ships_tuning_that_wins_out_of_fold():
    probs, targets, names = _rare_below_half(2000, seed=1)
    thr, policy = choose_thresholds(probs, targets, names, metric="balanced_accuracy")
    # Every attribute's tuning beat 0.5 out of fold, so each ships its tuned threshold,
    # which is the in-sample tuned one.
    assert policy["tuned"] == names
    np.testing.assert_array_equal(thr, tune_thresholds(probs, targets, metric="balanced_accuracy"))
    assert ((thr > 0) & (thr < 0.5)).all()
    for name in names:
        oof = policy["out_of_fold"][name]
        assert oof["tuned"] > oof["at_0.5"] + 0.1
    assert policy["policy"] == "cross-validated" and policy["metric"] == "balanced_accuracy"
    assert policy["folds"] == THRESHOLD_FOLDS and policy["folds_by"] == "label"
    assert policy["images"] == 2000
    json.dumps(policy)  # the record goes into model metadata as it is
    # Seeded: the same inputs, the same decision.
    again, policy_again = choose_thresholds(probs, targets, names, metric="balanced_accuracy")
    np.testing.assert_array_equal(thr, again)
    assert policy == policy_again


def test_choose_thresholds_keeps_half_where_tuning_does_not_win():
    rng = np.random.default_rng(2)
    n = 3000
    # Calibrated probabilities: the label is drawn with exactly that probability, so 0.5 is
    # the accuracy-optimal threshold and any tuned one only fits noise.
    probs = rng.random((n, 4)).astype(np.float32)
    targets = (rng.random((n, 4)) < probs).astype(np.float32)
    names = list("abcd")
    thr, policy = choose_thresholds(probs, targets, names, metric="accuracy")
    assert policy["tuned"] == [] and thr.tolist() == [0.5] * 4
    # In-sample tuning does move the thresholds (and "gains" a little there) ...
    raw = tune_thresholds(probs, targets, metric="accuracy")
    assert (raw != 0.5).all()
    tuned_in_sample = compute_metrics(probs, targets, names, thresholds=raw)["mean_accuracy"]
    assert tuned_in_sample > compute_metrics(probs, targets, names)["mean_accuracy"]
    # ... and on labels unrelated to the scores no metric's tuning wins either.
    noise = rng.random((n, 4)).astype(np.float32)
    for metric in THRESHOLD_METRICS:
        thr, policy = choose_thresholds(noise, targets, names, metric=metric)
        if metric != "f1":  # f1 is maximised by calling everything positive: a real win
            assert policy["tuned"] == [] and thr.tolist() == [0.5] * 4, metric


def _weak_model(n: int, seed: int):
    """A weakly trained model with a class-weighted loss: on an attribute with 10% positives
    its 0.5 is a balanced cut (far below the accuracy of "always negative"), and its scores
    separate the classes only a little."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 2)) < 0.1).astype(np.float32)
    probs = np.clip(0.42 + 0.16 * targets + 0.12 * rng.standard_normal((n, 2)), 0, 1)
    return probs.astype(np.float32), targets, ["a", "b"]


def test_weak_model_never_ships_thresholds_worse_than_half():
    probs, targets, names = _weak_model(3000, seed=5)
    at_half = compute_metrics(probs, targets, names)
    # The accuracy limit is measured against 0.5's accuracy, not the best accuracy
    # ("always negative" here): in-sample tuning is never worse than 0.5 on its metric.
    raw = tune_thresholds(probs, targets, metric="balanced_accuracy", max_accuracy_drop=0.02)
    tuned = compute_metrics(probs, targets, names, thresholds=raw)
    for name in names:
        assert (
            tuned["per_attribute"][name]["balanced_accuracy"]
            >= at_half["per_attribute"][name]["balanced_accuracy"]
        )
    # What ships keeps that on new images from the same model.
    thr, policy = choose_thresholds(
        probs, targets, names, metric="balanced_accuracy", max_accuracy_drop=0.02
    )
    new_probs, new_targets, _ = _weak_model(20000, seed=6)
    shipped = compute_metrics(new_probs, new_targets, names, thresholds=thr)
    fresh_half = compute_metrics(new_probs, new_targets, names)
    for name in names:
        assert (
            shipped["per_attribute"][name]["balanced_accuracy"]
            >= fresh_half["per_attribute"][name]["balanced_accuracy"] - 0.005
        )
        oof = policy["out_of_fold"][name]
        assert (name in policy["tuned"]) == (thr[names.index(name)] != 0.5)
        if name in policy["tuned"]:
            assert oof["tuned"] > oof["at_0.5"]


def test_choose_thresholds_keeps_a_persons_images_in_one_fold():
    from faceattr.thresholds import _folds

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 300)
    fold = _folds(300, 5, np.random.default_rng(1), groups=groups)
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1
    assert set(fold.tolist()) == set(range(5))
    # Stratified without groups: each label spread evenly over the folds.
    labels = np.arange(300) < 30
    fold = _folds(300, 5, np.random.default_rng(1), strata=labels)
    assert np.bincount(fold[labels], minlength=5).tolist() == [6] * 5
    probs, targets, names = _rare_below_half(600, seed=3)
    _, policy = choose_thresholds(probs, targets, names, groups=np.arange(600) // 3)
    assert policy["folds_by"] == "identity"
    with pytest.raises(ValueError, match="groups"):
        choose_thresholds(probs, targets, names, groups=np.arange(5))


def test_choose_thresholds_rejects_bad_settings():
    probs, targets, names = _rare_below_half(50, seed=0)
    with pytest.raises(UsageError, match="balanced-acc"):
        choose_thresholds(probs, targets, names, metric="balanced-acc")
    with pytest.raises(UsageError, match="2 folds"):
        choose_thresholds(probs, targets, names, folds=1)
    # Attributes with a single class (or no label) keep 0.5.
    targets[:, 0] = 0
    targets[:, 1] = np.nan
    thr, policy = choose_thresholds(probs, targets, names, metric="balanced_accuracy")
    assert thr[:2].tolist() == [0.5, 0.5] and "a" not in policy["tuned"]
    assert policy["out_of_fold"]["b"] == {"tuned": None, "at_0.5": None}


def test_policy_out_of_fold_decides_each_image_without_it():
    probs, targets, names = _rare_below_half(2000, seed=4)
    decisions = policy_out_of_fold(probs, targets, names, metric="balanced_accuracy")
    assert decisions.shape == probs.shape and decisions.dtype == bool
    oof = compute_metrics(decisions.astype(float), targets, names)
    thr, _ = choose_thresholds(probs, targets, names, metric="balanced_accuracy")
    in_sample = compute_metrics(probs, targets, names, thresholds=thr)
    half = compute_metrics(probs, targets, names)
    # Honest: a clear gain over 0.5, a little below the in-sample score.
    assert oof["mean_balanced_accuracy"] > half["mean_balanced_accuracy"] + 0.1
    assert oof["mean_balanced_accuracy"] < in_sample["mean_balanced_accuracy"]
    # An image's decisions do not depend on its own label: flipping the labels of the images
    # of one outer fold leaves that fold's decisions as they were.
    from faceattr.thresholds import _folds

    fold = _folds(2000, THRESHOLD_FOLDS, np.random.default_rng([0, 1_000_003]))
    flipped = targets.copy()
    flipped[fold == 0] = 1 - flipped[fold == 0]
    again = policy_out_of_fold(probs, flipped, names, metric="balanced_accuracy")
    np.testing.assert_array_equal(again[fold == 0], decisions[fold == 0])
