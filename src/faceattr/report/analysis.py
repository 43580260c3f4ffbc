"""The numbers behind one run's report: per-attribute rows, subgroup gaps, correlations,
calibration and error ranking, gathered by :func:`analyze_run`. numpy in, plain data out.
(Several runs: :mod:`.comparison`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from faceattr.report.document import literal
from faceattr.report.load import Predictions, RunData, row_identities
from faceattr.report.options import ReportOptions

if TYPE_CHECKING:
    from faceattr.data.table import AttributeTable
    from faceattr.metrics import SavedMetrics, SummaryAtHalf

# Friendly names of the two sides of common grouping attributes.
GROUP_NAMES: dict[str, tuple[str, str]] = {
    "Male": ("Male", "Female"),
    "Young": ("Young", "Not young"),
}


# ----------------------------------------------------------------------------- per attribute


@dataclass
class AttributeRow:
    """One attribute's metrics (fractions in [0, 1]; None where undefined)."""

    name: str
    accuracy: float | None
    majority: float | None
    balanced: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    ap: float | None
    positives: int
    support: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    note: str | None = None
    accuracy_half: float | None = None  # at threshold 0.5, when the thresholds were tuned

    @property
    def lift_accuracy(self) -> float | None:
        """The accuracy compared with the majority baseline: at 0.5 when known.

        Thresholds tuned for balanced accuracy or F1 give up accuracy on rare attributes to
        find their positives, so only the 0.5 decision is a fair match for "always answer the
        majority"."""
        return self.accuracy_half if self.accuracy_half is not None else self.accuracy

    @property
    def lift(self) -> float | None:
        """:attr:`lift_accuracy` minus the majority baseline's accuracy."""
        if self.lift_accuracy is None or self.majority is None:
            return None
        return self.lift_accuracy - self.majority

    @property
    def positive_rate(self) -> float | None:
        return self.positives / self.support if self.support else None

    @property
    def difficulty(self) -> float:
        """Sort key, low = hard: balanced accuracy, else accuracy (undefined sorts last)."""
        for v in (self.balanced, self.accuracy):
            if v is not None:
                return v
        return math.inf


def attribute_rows(run: RunData) -> list[AttributeRow]:
    """Per-attribute rows from the run's metrics JSON, in the model's attribute order."""
    rows = []
    for name, a in run.per_attribute.items():
        rows.append(
            AttributeRow(
                name=name,
                accuracy=a.get("accuracy"),
                majority=a.get("majority_accuracy"),
                balanced=a.get("balanced_accuracy"),
                precision=a.get("precision"),
                recall=a.get("recall"),
                f1=a.get("f1"),
                ap=a.get("average_precision"),
                positives=int(a.get("positives", 0)),
                support=int(a.get("support", 0)),
                threshold=float(a.get("threshold", 0.5)),
                tp=int(a.get("tp", 0)),
                fp=int(a.get("fp", 0)),
                tn=int(a.get("tn", 0)),
                fn=int(a.get("fn", 0)),
                note=a.get("note"),
            )
        )
    return rows


def thresholds_tuned(run: RunData) -> bool:
    """True when the run's metrics use thresholds other than a plain 0.5."""
    return bool(np.any(np.abs(run.thresholds - 0.5) > 1e-9))


def prefers_half(run: RunData) -> bool:
    """True when accuracy-based views should decide at 0.5 rather than at the run's thresholds.

    That is when the thresholds were tuned for balanced accuracy or F1: those thresholds give
    up accuracy on rare attributes to find their positives, so accuracy, the majority
    baseline, subgroup accuracy gaps and "wrong attributes" are read at a plain 0.5.
    """
    metric = run.config.get("threshold_metric") or "balanced_accuracy"
    return thresholds_tuned(run) and metric != "accuracy"


def decision_thresholds(run: RunData) -> np.ndarray:
    """``[A]`` thresholds of the report's accuracy-based views (see :func:`prefers_half`)."""
    return np.full(len(run.attributes), 0.5) if prefers_half(run) else run.thresholds


def summary_at_half(metrics: SavedMetrics) -> SummaryAtHalf | None:
    """Summary metrics at threshold 0.5: the metrics themselves when they were computed at
    0.5, else their ``at_threshold_0.5`` block (None when neither)."""
    thr = metrics.get("thresholds") or []
    if thr and all(abs(t - 0.5) < 1e-9 for t in thr):
        return metrics
    return metrics.get("at_threshold_0.5")


def add_accuracy_at_half(rows: Sequence[AttributeRow], pred: Predictions) -> None:
    """Fill ``accuracy_half`` of each row from per-image probabilities."""
    right, known = correctness(pred, np.full(len(pred.attributes), 0.5))
    for r in rows:
        if r.name in pred.attributes:
            j = pred.attributes.index(r.name)
            r.accuracy_half = _acc(right[:, j], known[:, j])


def hardest(rows: Sequence[AttributeRow], k: int = 5) -> list[AttributeRow]:
    """The ``k`` attributes with the lowest balanced accuracy (the hard ones)."""
    return sorted((r for r in rows if r.difficulty != math.inf), key=lambda r: r.difficulty)[:k]


def predicted(pred: Predictions, thresholds: np.ndarray) -> np.ndarray:
    """Boolean ``[N, A]`` decisions at ``thresholds`` (``[A]``)."""
    return pred.probs >= thresholds.astype(pred.probs.dtype)


def correctness(pred: Predictions, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``[N, A]`` bool right, ``[N, A]`` bool label known)."""
    known = ~np.isnan(pred.targets)
    right = predicted(pred, thresholds) == (pred.targets == 1)
    return right & known, known


# ----------------------------------------------------------------------------- subgroups


@dataclass
class SubgroupRow:
    attribute: str
    acc_yes: float | None
    acc_no: float | None
    n_yes: int
    n_no: int
    rate_yes: float | None  # positive rate of ``attribute`` within each side
    rate_no: float | None
    flagged: bool = False

    @property
    def gap(self) -> float | None:
        """Accuracy on the "yes" side minus the "no" side."""
        if self.acc_yes is None or self.acc_no is None:
            return None
        return self.acc_yes - self.acc_no

    @property
    def majority_yes(self) -> float | None:
        """Accuracy of always giving the "yes" side's most common answer."""
        return None if self.rate_yes is None else max(self.rate_yes, 1 - self.rate_yes)

    @property
    def majority_no(self) -> float | None:
        return None if self.rate_no is None else max(self.rate_no, 1 - self.rate_no)

    @property
    def excess_gap(self) -> float | None:
        """The gap beyond base rates: lift over each side's own majority answer, yes minus no.

        Women are almost never labelled Goatee, so "no" is right for nearly all of them: a
        raw accuracy gap on Goatee says little. This difference of lifts says whether the
        model *learned* the attribute better on one side.
        """
        acc_yes, acc_no, maj_yes, maj_no = (
            self.acc_yes,
            self.acc_no,
            self.majority_yes,
            self.majority_no,
        )
        if acc_yes is None or acc_no is None or maj_yes is None or maj_no is None:
            return None
        return (acc_yes - maj_yes) - (acc_no - maj_no)


@dataclass
class SubgroupResult:
    """Per-attribute accuracy split by one grouping attribute (e.g. Male)."""

    group: str
    label_yes: str
    label_no: str
    n_yes: int
    n_no: int
    mean_yes: float | None
    mean_no: float | None
    strict_yes: float | None
    strict_no: float | None
    rows: list[SubgroupRow]
    source: str  # where the group labels came from
    gap_threshold: float

    @property
    def flagged(self) -> list[SubgroupRow]:
        return [r for r in self.by_gap() if r.flagged]

    def by_gap(self) -> list[SubgroupRow]:
        """Rows with a defined gap, largest gap beyond base rates first."""
        return sorted(
            (r for r in self.rows if r.excess_gap is not None),
            key=lambda r: -abs(r.excess_gap or 0.0),
        )


def group_labels(
    run: RunData, groups: Sequence[str]
) -> tuple[dict[str, tuple[np.ndarray, str]], list[str]]:
    """``[N]`` 0/1/NaN labels of each grouping attribute for the run's evaluated faces.

    From the predictions' own targets when the model has the attribute, else from the
    dataset's label file (matched by row identity: image name, and face box where the
    predictions have one). Returns ({group: (labels, source)}, notes).
    """
    pred = run.predictions
    assert pred is not None
    found: dict[str, tuple[np.ndarray, str]] = {}
    notes: list[str] = []
    need = []
    for g in groups:
        if g in pred.attributes:
            found[g] = (pred.column(g).astype(np.float64), "the evaluation labels")
        else:
            need.append(g)
    if not need:
        return found, notes
    table, why = _dataset_table(run)
    if table is None:
        notes.append(
            f"Subgroups by {', '.join(map(literal, need))} skipped: the model does not predict "
            f"{'it' if len(need) == 1 else 'them'} and the dataset labels could not be read "
            f"({why})."
        )
        return found, notes
    from faceattr.data import table_boxes

    # The same identities on both sides: with boxes only where the predictions have them.
    boxes = table_boxes(table) if pred.boxes is not None else None
    index = {k: i for i, k in enumerate(row_identities(table.frame["image"].to_numpy(), boxes))}
    rows = np.array([index.get(k, -1) for k in pred.identities()], dtype=np.int64)
    for g in need:
        if g not in table.attributes:
            notes.append(
                f"Subgroups by {literal(g)} skipped: the dataset has no {literal(g)} labels."
            )
            continue
        col = table.labels[:, table.attributes.index(g)].astype(np.float64)
        labels = np.where(rows >= 0, col[np.maximum(rows, 0)], np.nan)
        if np.isnan(labels).all():
            notes.append(f"Subgroups by {literal(g)} skipped: no evaluated image is in the dataset "
                         "labels.")  # fmt: skip
            continue
        found[g] = (labels, "the dataset's label file")
    return found, notes


def _dataset_table(run: RunData) -> tuple[AttributeTable | None, str]:
    from faceattr.config import TrainConfig
    from faceattr.data import read_dataset
    from faceattr.errors import FaceAttrError

    try:
        cfg = TrainConfig.from_dict(run.config).data
        return read_dataset(cfg), ""
    except FaceAttrError as exc:
        return None, exc.message
    except (OSError, ValueError, TypeError) as exc:
        return None, str(exc)


def subgroup_analysis(
    pred: Predictions,
    thresholds: np.ndarray,
    group: str,
    labels: np.ndarray,
    *,
    source: str = "",
    gap_threshold: float = 0.05,
    min_count: int = 20,
) -> SubgroupResult | None:
    """Accuracy of every attribute on images with ``group`` = 1 vs = 0 (``labels`` ``[N]``).

    A row is flagged when the gap beyond base rates (:attr:`SubgroupRow.excess_gap`) is at
    least ``gap_threshold`` and each side has at least ``min_count`` known labels. None when
    one side has no image.
    """
    right, known = correctness(pred, thresholds)
    yes, no = labels == 1, labels == 0
    if not yes.any() or not no.any():
        return None
    rows = []
    keep = [j for j, a in enumerate(pred.attributes) if a != group]
    for j in keep:
        k_yes, k_no = known[yes, j], known[no, j]
        n_yes, n_no = int(k_yes.sum()), int(k_no.sum())
        acc_yes = float(right[yes, j].sum() / n_yes) if n_yes else None
        acc_no = float(right[no, j].sum() / n_no) if n_no else None
        t = pred.targets[:, j]
        rate_yes = float(np.nanmean(t[yes])) if n_yes else None
        rate_no = float(np.nanmean(t[no])) if n_no else None
        row = SubgroupRow(pred.attributes[j], acc_yes, acc_no, n_yes, n_no, rate_yes, rate_no)
        excess = row.excess_gap
        row.flagged = (
            excess is not None and abs(excess) >= gap_threshold and min(n_yes, n_no) >= min_count
        )
        rows.append(row)

    def mean_acc(mask: np.ndarray) -> float | None:
        accs = [r for r in (_acc(right[mask, j], known[mask, j]) for j in keep) if r is not None]
        return float(np.mean(accs)) if accs else None

    def strict(mask: np.ndarray) -> float | None:
        k = known[mask][:, keep]
        wrong = (k & ~right[mask][:, keep]).any(axis=1)
        has = k.any(axis=1)
        return float((~wrong & has).sum() / has.sum()) if has.any() else None

    label_yes, label_no = GROUP_NAMES.get(group, (group, f"not {group}"))
    return SubgroupResult(
        group=group,
        label_yes=label_yes,
        label_no=label_no,
        n_yes=int(yes.sum()),
        n_no=int(no.sum()),
        mean_yes=mean_acc(yes),
        mean_no=mean_acc(no),
        strict_yes=strict(yes),
        strict_no=strict(no),
        rows=rows,
        source=source,
        gap_threshold=gap_threshold,
    )


def _acc(right: np.ndarray, known: np.ndarray) -> float | None:
    n = int(known.sum())
    return float(right.sum() / n) if n else None


# ----------------------------------------------------------------------------- correlations


def correlation_matrix(values: np.ndarray) -> np.ndarray:
    """Pearson correlation ``[A, A]`` of the columns of ``values`` ``[N, A]`` (NaN = unknown).

    Unknown entries are replaced by the column mean (they add no covariance); a column that is
    constant gets NaN correlations.
    """
    x = np.asarray(values, dtype=np.float64)
    known = ~np.isnan(x)
    count = known.sum(axis=0)
    mean = np.where(known, x, 0).sum(axis=0) / np.maximum(count, 1)
    x = np.where(known, x, mean) - mean
    std = np.sqrt((x**2).mean(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = x / std
        corr = (z.T @ z) / max(len(x), 1)
    corr[:, std == 0] = np.nan
    corr[std == 0, :] = np.nan
    return np.clip(corr, -1, 1)


@dataclass
class CoupledPair:
    a: str
    b: str
    label_corr: float
    pred_corr: float

    @property
    def difference(self) -> float:
        return self.pred_corr - self.label_corr


def coupled_pairs(
    attributes: Sequence[str], label_corr: np.ndarray, pred_corr: np.ndarray, k: int = 6
) -> list[CoupledPair]:
    """Attribute pairs whose predictions are correlated most differently from their labels."""
    diff = pred_corr - label_corr
    iu = np.triu_indices(len(attributes), 1)
    d = diff[iu]
    ok = ~np.isnan(d)
    order = np.argsort(-np.abs(np.where(ok, d, 0)))[:k]
    return [
        CoupledPair(attributes[iu[0][i]], attributes[iu[1][i]], float(label_corr[iu][i]),
                    float(pred_corr[iu][i]))
        for i in order
        if ok[i]
    ]  # fmt: skip


# ----------------------------------------------------------------------------- calibration


@dataclass
class Reliability:
    """Pooled reliability curve over every known (image, attribute) label."""

    mean_prob: np.ndarray  # [bins] mean predicted probability (NaN for empty bins)
    frac_pos: np.ndarray  # [bins] fraction of positive labels
    counts: np.ndarray  # [bins]
    ece: float  # expected calibration error: count-weighted |frac_pos - mean_prob|


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> Reliability:
    """Bin every known label by its predicted probability (``bins`` equal-width bins)."""
    known = ~np.isnan(targets)
    p = probs[known].astype(np.float64)
    t = targets[known].astype(np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_t = np.bincount(idx, weights=t, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = sum_p / counts
        frac_pos = sum_t / counts
    ok = counts > 0
    ece = float((np.abs(frac_pos[ok] - mean_prob[ok]) * counts[ok]).sum() / max(counts.sum(), 1))
    return Reliability(mean_prob, frac_pos, counts, ece)


def threshold_curve(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Balanced accuracy of one attribute (``[N]`` probs/targets) at each threshold in ``grid``.

    None when the known labels hold a single class.
    """
    known = ~np.isnan(targets)
    p, t = probs[known], targets[known] == 1
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    pred = p[None, :] >= grid[:, None]  # [G, N]
    tpr = (pred & t).sum(axis=1) / n_pos
    tnr = (~pred & ~t).sum(axis=1) / n_neg
    return (tpr + tnr) / 2


# ----------------------------------------------------------------------------- gallery


@dataclass
class ImageResult:
    """One evaluated image: which attributes were wrong (worst first) and right."""

    index: int
    image: str
    wrong: list[tuple[str, float, int]]  # (attribute, probability, label)
    right_positive: list[tuple[str, float]]  # correctly predicted present attributes
    n_known: int


def rank_errors(pred: Predictions, thresholds: np.ndarray, k: int) -> list[ImageResult]:
    """The ``k`` images with the most wrong attributes (most confident mistakes break ties)."""
    right, known = correctness(pred, thresholds)
    wrong = known & ~right
    confidence = np.abs(pred.probs - thresholds[None, :].astype(np.float32))
    n_wrong = wrong.sum(axis=1)
    conf = np.where(wrong, confidence, 0).sum(axis=1)
    order = np.lexsort((-conf, -n_wrong))[:k]
    decided = predicted(pred, thresholds)
    out = []
    for i in order:
        w = np.flatnonzero(wrong[i])
        w = w[np.argsort(-confidence[i, w])]
        rp = np.flatnonzero(right[i] & decided[i])
        rp = rp[np.argsort(-pred.probs[i, rp])]
        out.append(
            ImageResult(
                index=int(i),
                image=str(pred.images[i]),
                wrong=[(pred.attributes[j], float(pred.probs[i, j]), int(pred.targets[i, j]))
                       for j in w],
                right_positive=[(pred.attributes[j], float(pred.probs[i, j])) for j in rp],
                n_known=int(known[i].sum()),
            )
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- one run


@dataclass
class RunAnalysis:
    """Everything computed for one run (no plots): used by the report and the CLI summary."""

    run: RunData
    rows: list[AttributeRow]
    subgroups: list[SubgroupResult] = field(default_factory=list)
    reliability: Reliability | None = None
    label_corr: np.ndarray | None = None
    pred_corr: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def hardest(self) -> list[AttributeRow]:
        return hardest(self.rows, 5)


def analyze_run(run: RunData, options: ReportOptions | None = None) -> RunAnalysis:
    """Per-attribute rows, subgroup gaps, calibration and correlations of one run."""
    options = options or ReportOptions()
    result = RunAnalysis(run, attribute_rows(run), notes=list(run.notes))
    pred = run.predictions
    if pred is None or len(pred) == 0:
        return result
    if prefers_half(run):
        add_accuracy_at_half(result.rows, pred)
    thr = decision_thresholds(run)
    groups = [g for g in options.groups if g]
    labels, notes = group_labels(run, groups)
    result.notes.extend(notes)
    for g in groups:
        if g not in labels:
            continue
        values, source = labels[g]
        sub = subgroup_analysis(
            pred, thr, g, values, source=source, gap_threshold=options.gap_threshold,
            min_count=options.min_group_count,
        )  # fmt: skip
        if sub is None:
            result.notes.append(f"Subgroups by {literal(g)} skipped: every evaluated image has "
                                f"the same {literal(g)} label.")  # fmt: skip
        else:
            result.subgroups.append(sub)
    result.reliability = reliability(pred.probs, pred.targets)
    result.label_corr = correlation_matrix(pred.targets)
    # Probabilities rather than decisions: an attribute the model never says yes to at the
    # threshold would otherwise have no correlation at all.
    result.pred_corr = correlation_matrix(pred.probs.astype(np.float64))
    return result


# Moved to .comparison; still importable from here until every caller imports from there.
