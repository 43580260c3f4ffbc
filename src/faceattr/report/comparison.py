"""Several runs side by side: their settings in words and what differs between them, the
paired accuracy difference of two runs on the same faces, and the per-attribute comparison.
numpy in, plain data out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from faceattr.report.analysis import (
    add_accuracy_at_half,
    attribute_rows,
    correctness,
    prefers_half,
    summary_at_half,
)
from faceattr.report.load import Predictions, RunData

# ----------------------------------------------------------------------------- configuration


def _fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def describe_augment(aug: dict[str, Any]) -> str:
    parts = []
    if aug.get("hflip"):
        parts.append("flip")
    labels = {
        "crop_scale": "crop",
        "shift": "shift",
        "rotation": "rotate",
        "brightness": "colour",
        "erasing": "erase",
    }
    for key, label in labels.items():
        v = aug.get(key)
        if v:
            parts.append(f"{label} {_fmt_num(v)}")
    return ", ".join(parts) if parts else "none"


def describe_config(cfg: dict[str, Any]) -> dict[str, str]:
    """A run's settings in words, in a fixed order (the rows of the configuration tables)."""
    data, model = cfg.get("data", {}), cfg.get("model", {})
    optim, aug = cfg.get("optim", {}), cfg.get("augment", {})
    out: dict[str, str] = {}
    out["architecture"] = str(model.get("arch", "?"))
    if cfg.get("parent"):
        init = f"fine-tuned from {cfg['parent']}"
    elif model.get("weights"):
        init = f"weights file {Path(str(model['weights'])).name}"
    elif model.get("pretrained"):
        init = "ImageNet weights"
    else:
        init = "from scratch"
    out["initialisation"] = init
    distill = cfg.get("distill")
    if isinstance(distill, dict) and distill.get("teacher"):
        out["teacher"] = (f"{distill['teacher']} (alpha {_fmt_num(distill.get('alpha'))}, "
                          f"temperature {_fmt_num(distill.get('temperature'))})")  # fmt: skip
    if cfg.get("unfreeze") is not None:
        out["backbone"] = f"fine-tuned (unfrozen: {cfg['unfreeze']})"
    elif model.get("freeze_backbone"):
        out["backbone"] = "frozen (linear probe)"
    else:
        out["backbone"] = "trained"
    nf = model.get("num_features", 0)
    head = f"{nf} hidden units" if nf else "linear"
    out["head"] = f"{head}, dropout {_fmt_num(model.get('dropout', 0))}"
    out["augmentation"] = describe_augment(aug)
    attrs = data.get("attributes")
    out["attributes"] = "all" if not attrs else (
        ", ".join(attrs) if len(attrs) <= 6 else f"{len(attrs)} selected"
    )  # fmt: skip
    out["training images"] = f"{data['sample']:,} sampled" if data.get("sample") else "all"
    out["image size"] = f"{data.get('img_size', '?')} px"
    out["epochs"] = str(cfg.get("epochs", "?")) + (
        f" (early stop after {cfg['patience']})" if cfg.get("patience") else ""
    )
    world = int(cfg.get("world_size", 1) or 1)
    batch = cfg.get("batch_size", "?")
    out["batch size"] = (
        f"{batch} x {world} processes" if world > 1 else str(batch)
    )  # per process x processes: the global batch
    opt = f"{optim.get('optimizer', '?')}, lr {_fmt_num(optim.get('lr', '?'))}"
    if optim.get("weight_decay"):
        opt += f", weight decay {_fmt_num(optim['weight_decay'])}"
    if optim.get("backbone_lr_mult", 1.0) != 1.0:
        opt += f", backbone lr x{_fmt_num(optim['backbone_lr_mult'])}"
    out["optimizer"] = opt
    out["schedule"] = str(optim.get("scheduler", "?")) + (
        f", warm-up {_fmt_num(optim['warmup_epochs'])} epochs" if optim.get("warmup_epochs") else ""
    )
    loss = str(optim.get("loss", "?"))
    if loss == "focal":
        loss += f" (gamma {_fmt_num(optim.get('focal_gamma', 2.0))})"
    out["loss"] = loss
    out["thresholds"] = (
        f"tuned for {cfg.get('threshold_metric', 'balanced_accuracy').replace('_', ' ')}"
        if cfg.get("tune_thresholds", True)
        else "0.5"
    )
    out["seed"] = str(cfg.get("seed", "?"))
    out["dataset"] = f"{data.get('dataset', '?')} ({data.get('root', '?')})"
    return out


class _Configured(Protocol):
    @property
    def config(self) -> dict[str, Any]: ...


def config_differences(runs: Sequence[_Configured]) -> list[tuple[str, list[str]]]:
    """Settings whose value differs between runs: [(setting, [value per run])]."""
    described = [describe_config(r.config) for r in runs]
    keys = list(dict.fromkeys(k for d in described for k in d))
    rows = []
    for k in keys:
        values = [d.get(k, "-") for d in described]
        if len(set(values)) > 1:
            rows.append((k, values))
    return rows


# ----------------------------------------------------------------------------- comparison


@dataclass
class PairedDifference:
    """Mean-accuracy difference of two runs on the same faces, with a 95% interval.

    ``n_images`` counts the evaluated rows both runs share: images, or faces where a photo
    holds several (``unit`` says which).
    """

    delta: float
    half_width: float
    n_images: int
    unit: str = "images"

    @property
    def significant(self) -> bool:
        return abs(self.delta) > self.half_width


def paired_difference(
    a: RunData, b: RunData, threshold: float | None = None
) -> PairedDifference | None:
    """How much better ``a`` is than ``b`` in per-face accuracy, on faces both evaluated.

    Faces are paired by their row identity (:meth:`Predictions.identities`: image name and face
    box), so every face of a multi-face photo counts. Each face's accuracy is the fraction of
    its known labels (over attributes both runs predict) that are right; the interval is
    mean +- 1.96 standard errors of the paired differences. Decisions use each run's
    thresholds, or ``threshold`` for both. None when the runs share no faces or attributes.
    """
    pa, pb = a.predictions, b.predictions
    if pa is None or pb is None:
        return None
    common = [x for x in pa.attributes if x in pb.attributes]
    if not common:
        return None
    # Boxes only where both files have them (an older file has none): keys must be alike.
    with_boxes = pa.boxes is not None and pb.boxes is not None
    keys_a, keys_b = pa.identities(with_boxes), pb.identities(with_boxes)
    _, ia, ib = np.intersect1d(keys_a, keys_b, assume_unique=True, return_indices=True)
    if len(ia) < 2:
        return None

    def per_face(run: RunData, p: Predictions, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cols = [p.attributes.index(x) for x in common]
        thr = run.thresholds if threshold is None else np.full(len(p.attributes), threshold)
        right, known = correctness(p, thr)
        return right[rows][:, cols], known[rows][:, cols]

    ra, ka = per_face(a, pa, ia)
    rb, kb = per_face(b, pb, ib)
    known = ka & kb
    n = known.sum(axis=1)
    ok = n > 0
    if ok.sum() < 2:
        return None
    fa = (ra & known).sum(axis=1)[ok] / n[ok]
    fb = (rb & known).sum(axis=1)[ok] / n[ok]
    d = fa - fb
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    several = len(set(pa.images[ia].tolist())) < len(ia)  # some photo holds several faces
    return PairedDifference(float(d.mean()), 1.96 * se, int(ok.sum()),
                            "faces" if several else "images")  # fmt: skip


@dataclass
class Comparison:
    """Several runs side by side; ``runs[0]`` is the reference for deltas."""

    runs: list[RunData]
    ranking: list[int]  # run indices, best mean accuracy first
    differences: list[tuple[str, list[str]]]
    attributes: list[str]  # union, in first-seen order
    accuracy: dict[str, list[float | None]]  # attribute -> accuracy per run
    balanced: dict[str, list[float | None]]
    paired: dict[int, PairedDifference | None] = field(default_factory=dict)  # best vs run i
    rank_label: str = "mean accuracy"  # what ``ranking`` sorts by
    scores: list[float] = field(default_factory=list)  # that metric, per run
    accuracy_label: str = "accuracy"  # what ``accuracy`` holds: at 0.5 or the runs' thresholds

    @property
    def best(self) -> RunData:
        return self.runs[self.ranking[0]]

    def _pairs(self, i: int, j: int) -> list[tuple[str, float, float]]:
        """(attribute, accuracy of run i, of run j) where both are defined."""
        return [
            (a, ai, aj)
            for a, accs in self.accuracy.items()
            if (ai := accs[i]) is not None and (aj := accs[j]) is not None
        ]

    def wins(self, i: int, j: int) -> tuple[int, int]:
        """(attributes where run i is more accurate than run j, attributes compared)."""
        pairs = self._pairs(i, j)
        return sum(ai > aj + 1e-12 for _, ai, aj in pairs), len(pairs)

    def deltas(self, i: int, j: int) -> list[tuple[str, float]]:
        """(attribute, accuracy of run i minus run j), largest gain first."""
        out = [(a, ai - aj) for a, ai, aj in self._pairs(i, j)]
        return sorted(out, key=lambda t: -t[1])


def _per_attribute(
    runs: Sequence[RunData], attributes: list[str], metric: Literal["accuracy", "balanced_accuracy"]
) -> dict[str, list[float | None]]:
    """Each attribute's ``metric`` in each run (None where a run lacks it)."""
    return {a: [r.per_attribute[a].get(metric) if a in r.per_attribute else None for r in runs]
            for a in attributes}  # fmt: skip


def compare_runs(runs: Sequence[RunData]) -> Comparison:
    """``runs`` side by side, ranked by mean accuracy (at 0.5 when every run has it)."""
    runs = list(runs)
    attributes = list(dict.fromkeys(a for r in runs for a in r.attributes))
    acc = _per_attribute(runs, attributes, "accuracy")
    accuracy_label = "accuracy"
    preds = [r.predictions for r in runs]
    if any(prefers_half(r) for r in runs) and all(p is not None for p in preds):
        # Per-attribute accuracy at 0.5 for every run, so tuned and untuned runs compare fairly.
        for i, (r, p) in enumerate(zip(runs, preds, strict=True)):
            assert p is not None
            rows = attribute_rows(r)
            add_accuracy_at_half(rows, p)
            for row in rows:
                acc[row.name][i] = row.accuracy_half
        accuracy_label = "accuracy at 0.5"
    bal = _per_attribute(runs, attributes, "balanced_accuracy")
    # Rank by mean accuracy at 0.5 when every run has it: independent of how (or whether)
    # each run tuned its thresholds, and the number CelebA papers report.
    halves = [h.get("mean_accuracy") if (h := summary_at_half(r.metrics)) else None for r in runs]
    at_half = all(h is not None for h in halves)
    score: list[float]
    if at_half:
        score = [float(h) for h in halves if h is not None]
        label = "mean accuracy at threshold 0.5"
    else:
        score = [r.metrics.get("mean_accuracy") or 0.0 for r in runs]
        label = "mean accuracy"
    ranking = sorted(range(len(runs)), key=lambda i: -score[i])
    comp = Comparison(runs, ranking, config_differences(runs), attributes, acc, bal,
                      rank_label=label, accuracy_label=accuracy_label)  # fmt: skip
    comp.scores = score
    best = ranking[0]
    for i in range(len(runs)):
        if i != best:
            comp.paired[i] = paired_difference(runs[best], runs[i], 0.5 if at_half else None)
    return comp
