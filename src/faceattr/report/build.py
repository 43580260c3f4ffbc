"""Build a :class:`~faceattr.report.document.Report` from loaded runs.

One run: overview, training curves, per-attribute table and chart, subgroup error analysis,
calibration and thresholds, correlations of labels vs predictions, a gallery of the worst
errors and Grad-CAM heat maps. Several runs: a comparison (what differs, which is better, by
how much, where) first, then each run's own report in collapsible sections.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceattr import __version__
from faceattr.data.registry import DATASETS
from faceattr.errors import FaceAttrError
from faceattr.progress import NullProgress, Progress
from faceattr.report import analysis as an
from faceattr.report import plots
from faceattr.report.document import (
    Card,
    Cell,
    Columns,
    Details,
    Figure,
    Gallery,
    Note,
    Paragraph,
    Report,
    Section,
    Table,
    Tile,
    Tiles,
)
from faceattr.report.load import RunData

# Attributes whose evidence sits in one face region: the most telling Grad-CAM targets.
GRADCAM_PREFERRED = (
    "Eyeglasses", "Smiling", "Wearing_Hat", "Bangs", "Mustache", "Goatee", "Blond_Hair",
    "Mouth_Slightly_Open", "Wearing_Lipstick", "Bald", "Male",
)  # fmt: skip
MAX_GRADCAM_IMAGES = 12
MAX_GRADCAM_ATTRIBUTES = 4
MAX_GALLERY = 48
SUBGROUP_ROWS = 12  # rows of the subgroup chart and its table (the full table is collapsed)
GALLERY_LINES = 6  # wrong (and right) attributes listed per gallery image


@dataclass(frozen=True)
class ReportOptions:
    """What to include and the caps that keep report generation fast on a CPU."""

    groups: tuple[str, ...] = ("Male", "Young")  # subgroup attributes
    gap_threshold: float = 0.05  # flag subgroup accuracy gaps of this size (fraction)
    min_group_count: int = 20  # ... when each side has at least this many labels
    gallery: int = 12  # images in the error gallery (0 = none)
    gradcam_images: int = 6  # images with Grad-CAM maps (0 = none)
    gradcam_attributes: tuple[str, ...] | None = None  # None = picked automatically
    device: str = "cpu"  # where Grad-CAM runs


@dataclass
class RunAnalysis:
    """Everything computed for one run (no plots): used by the report and the CLI summary."""

    run: RunData
    rows: list[an.AttributeRow]
    subgroups: list[an.SubgroupResult] = field(default_factory=list)
    reliability: an.Reliability | None = None
    label_corr: np.ndarray | None = None
    pred_corr: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def hardest(self) -> list[an.AttributeRow]:
        return an.hardest(self.rows, 5)


def analyze_run(run: RunData, options: ReportOptions | None = None) -> RunAnalysis:
    """Per-attribute rows, subgroup gaps, calibration and correlations of one run."""
    options = options or ReportOptions()
    result = RunAnalysis(run, an.attribute_rows(run), notes=list(run.notes))
    pred = run.predictions
    if pred is None or len(pred) == 0:
        return result
    if an.prefers_half(run):
        an.add_accuracy_at_half(result.rows, pred)
    thr = an.decision_thresholds(run)
    groups = [g for g in options.groups if g]
    labels, notes = an.group_labels(run, groups)
    result.notes.extend(notes)
    for g in groups:
        if g not in labels:
            continue
        values, source = labels[g]
        sub = an.subgroup_analysis(
            pred, thr, g, values, source=source, gap_threshold=options.gap_threshold,
            min_count=options.min_group_count,
        )  # fmt: skip
        if sub is None:
            result.notes.append(f"Subgroups by {g} skipped: every evaluated image has the same {g}"
                                " label.")  # fmt: skip
        else:
            result.subgroups.append(sub)
    result.reliability = an.reliability(pred.probs, pred.targets)
    result.label_corr = an.correlation_matrix(pred.targets)
    # Probabilities rather than decisions: an attribute the model never says yes to at the
    # threshold would otherwise have no correlation at all.
    result.pred_corr = an.correlation_matrix(pred.probs.astype(np.float64))
    return result


# ----------------------------------------------------------------------------- formatting


def pct(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits}f}%"


def points(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or math.isnan(v) else f"{100 * v:+.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def count(n: int | None) -> str:
    if n is None:
        return "–"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def heat(v: float | None, low: float = 0.5, high: float = 1.0) -> str | None:
    """A light background from red (``low``) through amber to green (``high``)."""
    if v is None or math.isnan(v):
        return None
    t = min(1.0, max(0.0, (v - low) / (high - low)))
    return f"hsl({int(120 * t)}, 65%, 88%)"


def lift_heat(d: float | None, scale: float = 0.15) -> str | None:
    """Red (``d`` <= -``scale``) through amber (0) to green (``d`` >= ``scale``)."""
    if d is None or math.isnan(d):
        return None
    t = min(1.0, max(-1.0, d / scale))
    return f"hsl({int(60 + 60 * t)}, 65%, 88%)"


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pcell(v: float | None, bg: str | None = None) -> Cell:
    return Cell(pct(v), _num(v), background=bg)


# ----------------------------------------------------------------------------- single run


def _tuned_for(run: RunData) -> str:
    metric = run.config.get("threshold_metric") or "balanced_accuracy"
    return metric.replace("_", " ")


def single_run_findings(a: RunAnalysis) -> list[str]:
    """The "at a glance" sentences for one run (``**bold**`` marks the lead words)."""
    m, rows, run = a.run.metrics, a.rows, a.run
    out = []
    half = an.summary_at_half(m) if an.prefers_half(run) else None
    maj = m.get("majority_accuracy")
    mean = (half or m).get("mean_accuracy")
    where = " at threshold 0.5" if half else ""
    text = f"**Mean accuracy {pct(mean)}**{where} on {m.get('n_images', 0):,} {run.split} images"
    if mean is not None and maj is not None:
        side = "above" if mean >= maj else "below"
        text += (
            f", {abs(100 * (mean - maj)):.1f} points {side} always predicting the majority "
            f"({pct(maj)})"
        )
    if half:
        text += (
            f"; with thresholds tuned for {_tuned_for(run)}: balanced accuracy "
            f"{pct(m.get('mean_balanced_accuracy'))} (vs {pct(half.get('mean_balanced_accuracy'))}"
            f" at 0.5) and accuracy {pct(m.get('mean_accuracy'))}"
        )
    else:
        text += f"; balanced accuracy {pct(m.get('mean_balanced_accuracy'))}"
    strict = (half or m).get("strict_accuracy")
    text += f"; {pct(strict)} of images have every attribute right{where}."
    out.append(text)
    hard = a.hardest
    if hard:
        out.append(
            "**Hardest attributes** (lowest balanced accuracy): "
            + ", ".join(f"{r.name} {pct(r.difficulty, 0)}" for r in hard)
            + "."
        )
    lifts = [r for r in rows if r.lift is not None and (r.positive_rate or 0) > 0]
    below = sorted((r for r in lifts if (r.lift or 0) < 0), key=lambda r: r.lift or 0)
    barely = sorted((r for r in lifts if 0 <= (r.lift or 0) < 0.01), key=lambda r: r.lift or 0)
    if below:
        out.append(f"**Less accurate than the majority baseline**{where}: {_lift_list(below)}.")
    if barely:
        out.append(
            f"**Barely above the majority baseline**{where} (under 1 point): {_lift_list(barely)}."
        )
    for sub in a.subgroups:
        out.append(_subgroup_sentence(sub))
    if a.reliability is not None:
        ece = a.reliability.ece
        verdict = (
            "the probabilities can be read as frequencies"
            if ece < 0.03
            else "the probabilities are only roughly calibrated"
            if ece < 0.08
            else "the probabilities are poorly calibrated"
        )
        out.append(f"**Calibration**: expected calibration error {pct(ece)}; {verdict}.")
    return out


def _lift_list(rows: Sequence[an.AttributeRow], k: int = 6) -> str:
    text = ", ".join(f"{r.name} ({points(r.lift)})" for r in rows[:k])
    return text + (f" and {len(rows) - k} more" if len(rows) > k else "")


def _subgroup_sentence(sub: an.SubgroupResult) -> str:
    gap = None if sub.mean_yes is None or sub.mean_no is None else sub.mean_yes - sub.mean_no
    text = (
        f"**By {sub.group}**: mean accuracy {pct(sub.mean_yes)} on {sub.label_yes} vs "
        f"{pct(sub.mean_no)} on {sub.label_no} images ({points(gap)} points); all attributes "
        f"right on {pct(sub.strict_yes)} vs {pct(sub.strict_no)}."
    )
    flagged = sub.flagged
    size = f"{100 * sub.gap_threshold:.0f}+ points"
    if flagged:
        shown = ", ".join(
            f"{r.attribute} (better on {sub.label_yes if (r.excess_gap or 0) > 0 else sub.label_no}"
            f" by {abs(100 * (r.excess_gap or 0)):.0f}; raw {pct(r.acc_yes, 0)} vs "
            f"{pct(r.acc_no, 0)})"
            for r in flagged[:3]
        )
        text += (
            f" {len(flagged)} attribute(s) are learned {size} better on one side once base "
            f"rates are accounted for: {shown}{', ...' if len(flagged) > 3 else ''}."
        )
    else:
        text += f" No attribute is learned {size} better on one side beyond base rates."
    return text


def _overview(a: RunAnalysis, anchor: str) -> Section:
    run, m = a.run, a.run.metrics
    maj = m.get("majority_accuracy")
    half = an.summary_at_half(m) if an.prefers_half(run) else None
    mean = (half or m).get("mean_accuracy")
    lift = None if maj is None or mean is None else mean - maj
    if half:
        acc_detail = f"at 0.5, {points(lift)} vs majority; {pct(m.get('mean_accuracy'))} tuned"
        bal_detail = f"tuned thresholds; {pct(half.get('mean_balanced_accuracy'))} at 0.5"
        strict_detail = f"all attributes right, at 0.5; {pct(m.get('strict_accuracy'))} tuned"
    else:
        acc_detail = f"{points(lift)} points vs majority"
        bal_detail = "mean of recall on positives and negatives"
        strict_detail = "images with all attributes right"
    good = lift is not None and lift > 0
    tiles = Tiles([
        Tile("mean accuracy", pct(mean), acc_detail, "good" if good else "bad"),
        Tile("balanced accuracy", pct(m.get("mean_balanced_accuracy")), bal_detail),
        Tile("strict accuracy", pct((half or m).get("strict_accuracy")), strict_detail),
        Tile("majority baseline", pct(maj), "always the most common answer", "muted"),
        Tile("macro F1", pct(m.get("macro_f1")), f"mAP {pct(m.get('mean_average_precision'))}"),
        Tile("images", f"{m.get('n_images', 0):,}", f"{run.split} split, "
             f"{len(run.attributes)} attributes"),
    ])  # fmt: skip
    cfg = an.describe_config(run.config)
    rows = [[Cell(k), Cell(v)] for k, v in cfg.items()]
    rows += [
        [Cell("best epoch"), Cell(f"{run.best_epoch or '–'} of {len(run.history)}")],
        [Cell("training time"), Cell(duration(run.train_seconds))],
        [Cell("training speed"), Cell(_ips(run.images_per_second))],
        [Cell("parameters"), Cell(_params(run))],
    ]
    config = Table(["setting", "value"], rows, caption="Configuration", sortable=False, wrap=True)
    sec = Section(f"{anchor}overview", "Overview", lead=f"Run directory `{run.path}`.")
    sec.add(tiles, *[Note(n, "warn") for n in a.notes])
    sec.add(Details("Configuration", [config], open=False))
    return sec


def _ips(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} img/s"


def _params(run: RunData) -> str:
    if run.parameters is None:
        return "–"
    text = count(run.parameters)
    if run.trainable_parameters is not None and run.trainable_parameters != run.parameters:
        text += f" ({count(run.trainable_parameters)} trained)"
    return text


def _history_table(run: RunData) -> Table:
    cols = ["epoch", "lr", "train loss", "val loss", "val mean acc", "val strict acc", "img/s",
            "seconds"]  # fmt: skip
    keys = ["epoch", "lr", "train_loss", "val_loss", "val_mean_accuracy", "val_strict_accuracy",
            "images_per_second", "seconds"]  # fmt: skip
    rows = []
    for r in run.history:
        cells = []
        for k in keys:
            v = r.get(k)
            if v is None:
                cells.append(Cell("–"))
            elif k == "epoch":
                cells.append(Cell(str(int(v)), v))
            elif k in ("val_mean_accuracy", "val_strict_accuracy"):
                cells.append(Cell(pct(v, 2), v))
            elif k == "lr":
                cells.append(Cell(f"{v:.2g}", v))
            elif k in ("images_per_second", "seconds"):
                cells.append(Cell(f"{v:,.0f}", v))
            else:
                cells.append(Cell(f"{v:.4f}", v))
        rows.append(cells)
    return Table(cols, rows, caption="Per-epoch history (history.csv)")


ATTRIBUTE_TIPS = {
    "acc": "accuracy at the run's decision threshold",
    "majority": "accuracy of always predicting the training majority",
    "lift": "accuracy minus majority baseline, in points",
    "bal acc": "balanced accuracy: mean of recall on positives and on negatives",
    "prec": "precision",
    "F1": "F1 score of the positive class",
    "AP": "average precision (threshold-free)",
    "pos rate": "share of evaluated images with the attribute",
    "thr": "decision threshold",
    "TP": "true positives", "FP": "false positives", "TN": "true negatives",
    "FN": "false negatives",
}  # fmt: skip


def attribute_table(rows: Sequence[an.AttributeRow]) -> Table:
    half = any(r.accuracy_half is not None for r in rows)
    cols = ["attribute", "acc", *(["acc @0.5"] if half else []), "majority", "lift", "bal acc",
            "prec", "recall", "F1", "AP", "pos rate", "thr", "TP", "FP", "TN", "FN"]  # fmt: skip
    out = []
    for r in rows:
        out.append([
            Cell(r.name, title=r.note),
            _pcell(r.accuracy),
            *([_pcell(r.accuracy_half)] if half else []),
            Cell(pct(r.majority), _num(r.majority), tone="muted"),
            Cell(points(r.lift), _num(r.lift), background=lift_heat(r.lift)),
            _pcell(r.balanced, heat(r.balanced)),
            _pcell(r.precision),
            _pcell(r.recall),
            _pcell(r.f1),
            _pcell(r.ap),
            Cell(pct(r.positive_rate), _num(r.positive_rate), title=f"{r.positives:,} positives"),
            Cell(f"{r.threshold:.2f}", r.threshold),
            Cell(f"{r.tp:,}", r.tp), Cell(f"{r.fp:,}", r.fp), Cell(f"{r.tn:,}", r.tn),
            Cell(f"{r.fn:,}", r.fn),
        ])  # fmt: skip
    tips = dict(ATTRIBUTE_TIPS)
    if half:
        tips["acc"] = "accuracy at the run's tuned thresholds"
        tips["lift"] = "accuracy at 0.5 minus the majority baseline, in points"
    return Table(cols, out, caption="Per-attribute metrics at the run's thresholds (click a "
                 "column to sort)", groups=[("", 1), ("accuracy", 5 if half else 4),
                 ("positive class", 4), ("", 2), ("confusion counts", 4)], tips=tips)  # fmt: skip


def _attributes_section(a: RunAnalysis, anchor: str) -> Section:
    sec = Section(f"{anchor}attributes", "Attributes: which are hard",
                  lead="Balanced accuracy is the fairest single number for rare attributes: "
                  "always answering no scores 50% on it, whatever the base rate.")  # fmt: skip
    sec.add(plots.accuracy_bars(a.rows, name=f"{anchor}accuracy"), attribute_table(a.rows))
    return sec


def _decision_note(run: RunData) -> str:
    if not an.prefers_half(run):
        return ""
    return (
        f" Decisions at threshold 0.5, like the headline accuracy (the run's thresholds are "
        f"tuned for {_tuned_for(run)})."
    )


def _subgroup_section(a: RunAnalysis, anchor: str) -> Section | None:
    sec = Section(f"{anchor}subgroups", "Subgroups: for whom it fails",
                  lead="Per-attribute accuracy split by another attribute. A raw gap often "
                  "just mirrors base rates (almost no woman is labelled Goatee, so \"no\" is "
                  "nearly always right for them); the gap beyond base rates compares each "
                  "side's lift over its own majority answer, and flags (⚑) are set on it."
                  + _decision_note(a.run))  # fmt: skip
    if not a.subgroups:
        if a.run.predictions is None:
            return None
        why = " ".join(n for n in a.notes if n.startswith("Subgroups")) or "no grouping attribute."
        sec.add(Note(f"No subgroup could be analysed. {why}", "warn"))
        return sec
    for sub in a.subgroups:
        sec.add(Paragraph(_subgroup_sentence(sub) + f" Group labels from {sub.source}."))
        rows = []
        ordered = sub.by_gap()
        for r in ordered:
            rows.append([
                Cell(("⚑ " if r.flagged else "") + r.attribute, tone="bad" if r.flagged else None),
                _pcell(r.acc_yes, heat(r.acc_yes, 0.6)),
                _pcell(r.acc_no, heat(r.acc_no, 0.6)),
                Cell(points(r.gap), _num(r.gap)),
                Cell(points(r.excess_gap), _num(r.excess_gap),
                     tone="bad" if r.flagged else None),
                Cell(pct(r.rate_yes), _num(r.rate_yes), tone="muted"),
                Cell(pct(r.rate_no), _num(r.rate_no), tone="muted"),
                Cell(f"{r.n_yes:,}", r.n_yes), Cell(f"{r.n_no:,}", r.n_no),
            ])  # fmt: skip
        cols = ["attribute", f"acc {sub.label_yes}", f"acc {sub.label_no}", "gap",
                "beyond base rates", f"pos rate {sub.label_yes}", f"pos rate {sub.label_no}",
                f"n {sub.label_yes}", f"n {sub.label_no}"]  # fmt: skip
        top = Table(cols[:5], [r[:5] for r in rows[:SUBGROUP_ROWS]],
                    caption=f"Largest gaps by {sub.group} beyond base rates (⚑ = "
                    f"{100 * sub.gap_threshold:.0f}+ points, enough images on both sides)",
                    tips={"gap": "accuracy difference, in points",
                          "beyond base rates": "difference of each side's accuracy minus "
                          "that side's majority-answer accuracy"})  # fmt: skip
        full = Table(cols, rows, caption=f"Accuracy by {sub.group}, every attribute")
        fig = plots.subgroup_plot(sub, k=SUBGROUP_ROWS, name=f"{anchor}subgroup-{sub.group}")
        sec.add(Columns([fig, top]) if fig is not None else top)
        sec.add(Details(f"All attributes by {sub.group}, with positive rates and counts", [full]))
    return sec


def _calibration_section(a: RunAnalysis, anchor: str) -> Section | None:
    pred = a.run.predictions
    if pred is None or a.reliability is None:
        return None
    sec = Section(f"{anchor}calibration", "Thresholds and calibration",
                  lead="Whether the probabilities mean what they say, and how much the "
                  "decision threshold matters for the hard attributes.")  # fmt: skip
    grid = np.linspace(0.01, 0.99, 99)
    curves = {}
    for r in a.hardest[:5]:
        j = pred.attributes.index(r.name)
        values = an.threshold_curve(pred.probs[:, j], pred.targets[:, j], grid)
        if values is not None:
            curves[r.name] = (grid, values, r.threshold)
    figs = [plots.reliability_plot(a.reliability, name=f"{anchor}reliability"),
            plots.threshold_plot(curves, name=f"{anchor}thresholds")]  # fmt: skip
    sec.add(Columns([f for f in figs if f is not None]))
    half = a.run.metrics.get("at_threshold_0.5")
    if half:
        m = a.run.metrics
        sec.add(Paragraph(
            f"With the tuned thresholds: mean accuracy {pct(m.get('mean_accuracy'))}, balanced "
            f"{pct(m.get('mean_balanced_accuracy'))}, macro F1 {pct(m.get('macro_f1'))}; at a "
            f"plain 0.5: {pct(half.get('mean_accuracy'))}, "
            f"{pct(half.get('mean_balanced_accuracy'))}, {pct(half.get('macro_f1'))}."
        ))  # fmt: skip
    return sec


def _correlation_section(a: RunAnalysis, anchor: str) -> Section | None:
    pred = a.run.predictions
    if pred is None or a.label_corr is None or a.pred_corr is None or len(pred.attributes) < 2:
        return None
    sec = Section(f"{anchor}correlations", "Data view: attribute correlations",
                  lead="Which attributes go together in the labels, and whether the model "
                  "reproduces, exaggerates or misses those links.")  # fmt: skip
    sec.add(plots.correlation_plot(pred.attributes, a.label_corr, a.pred_corr,
                                   name=f"{anchor}correlation"))  # fmt: skip
    pairs = an.coupled_pairs(pred.attributes, a.label_corr, a.pred_corr, k=8)
    if pairs:
        rows = [
            [Cell(f"{p.a} – {p.b}"), Cell(f"{p.label_corr:+.2f}", p.label_corr),
             Cell(f"{p.pred_corr:+.2f}", p.pred_corr),
             Cell(f"{p.difference:+.2f}", p.difference,
                  tone="bad" if abs(p.difference) >= 0.15 else None)]
            for p in pairs
        ]  # fmt: skip
        sec.add(Table(["pair", "labels", "predictions", "difference"], rows,
                      caption="Pairs the model links most differently from the data"))  # fmt: skip
    return sec


def _image_dirs(run: RunData) -> list[Path]:
    """Folders that may hold the evaluated images: the one eval saved, then the config's."""
    dirs = []
    pred = run.predictions
    if pred is not None and pred.image_dir is not None:
        dirs.append(pred.image_dir)
    root = run.dataset_root
    spec = DATASETS.get(run.config.get("data", {}).get("dataset", "celeba"))
    if root and spec is not None:
        dirs += spec.image_dirs(Path(root).expanduser())
    return dirs


def _image_path(run: RunData, name: str) -> Path | None:
    for d in _image_dirs(run):
        p = d / name
        if p.is_file():
            return p
    return None


def _thumbnail(path: Path, height: int = 150) -> bytes:
    from faceattr.data.images import load_image

    img = load_image(path)
    if img.height != height:
        width = max(1, round(img.width * height / img.height))
        img = img.resize((width, height))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _gallery_section(a: RunAnalysis, anchor: str, options: ReportOptions) -> Section | None:
    pred = a.run.predictions
    if pred is None or options.gallery <= 0:
        return None
    sec = Section(f"{anchor}gallery", "Gallery: the worst errors",
                  lead="Evaluated images with the most wrong attributes first (most "
                  "confident mistakes first within an image). Red: wrong, with the model's "
                  "probability and the true label; green: attributes it rightly says are "
                  "present." + _decision_note(a.run))  # fmt: skip
    worst = an.rank_errors(pred, an.decision_thresholds(a.run), min(options.gallery, MAX_GALLERY))
    cards, missing = [], []
    for item in worst:
        path = _image_path(a.run, item.image)
        if path is None:
            missing.append(item.image)
            continue
        try:
            data = _thumbnail(path)
        except FaceAttrError:
            missing.append(item.image)
            continue
        wrong = [f"{attr} {p:.2f}, truly {'no' if label == 0 else 'yes'}"
                 for attr, p, label in item.wrong[:GALLERY_LINES]]  # fmt: skip
        if len(item.wrong) > GALLERY_LINES:
            wrong.append(f"... {len(item.wrong) - GALLERY_LINES} more wrong")
        right = [f"{attr} {p:.2f}" for attr, p in item.right_positive[:GALLERY_LINES]]
        cards.append(Card(title=item.image, image=data,
                          subtitle=f"{len(item.wrong)} wrong of {item.n_known}",
                          wrong=wrong, right=right,
                          name=f"{anchor}gallery-{Path(item.image).stem}"))  # fmt: skip
    if not cards:
        where = ", ".join(str(d) for d in _image_dirs(a.run)) or "no image folder recorded"
        sec.add(Note(f"Gallery skipped: the evaluated images are not on this machine (looked "
                     f"in {where}).", "warn"))  # fmt: skip
        return sec
    if missing:
        sec.add(Note(f"{len(missing)} image(s) could not be read and were left out.", "warn"))
    sec.add(Gallery(cards))
    return sec


def _gradcam_attributes(
    a: RunAnalysis, options: ReportOptions, model_attrs: list[str]
) -> list[str]:
    pred = a.run.predictions
    assert pred is not None
    if options.gradcam_attributes:
        from faceattr.attributes import resolve_attributes

        chosen = resolve_attributes(list(options.gradcam_attributes), model_attrs)
        return chosen[:MAX_GRADCAM_ATTRIBUTES]
    has_pos = {x for x in pred.attributes if (pred.column(x) == 1).any()}
    chosen = [x for x in GRADCAM_PREFERRED if x in model_attrs and x in has_pos][:3]
    if len(chosen) < 3:  # the model's most precise attributes
        ranked = sorted(a.rows, key=lambda r: -(r.ap or 0))
        chosen += [r.name for r in ranked if r.name in model_attrs and r.name not in chosen]
    return chosen[:3]


def _gradcam_images(a: RunAnalysis, attrs: list[str], n: int) -> list[int]:
    """Images to explain: per attribute, its most confident true positives, in turn."""
    pred = a.run.predictions
    assert pred is not None
    thr = an.decision_thresholds(a.run)
    per_attr = []
    for x in attrs:
        j = pred.attributes.index(x)
        tp = np.flatnonzero((pred.targets[:, j] == 1) & (pred.probs[:, j] >= thr[j]))
        per_attr.append(list(tp[np.argsort(-pred.probs[tp, j])]))
    chosen: list[int] = []
    while len(chosen) < n and any(per_attr):
        for lst in per_attr:
            while lst and lst[0] in chosen:
                lst.pop(0)
            if lst and len(chosen) < n:
                chosen.append(int(lst.pop(0)))
    if len(chosen) < n:
        chosen += [i for i in range(len(pred)) if i not in chosen][: n - len(chosen)]
    return chosen


def _gradcam_section(a: RunAnalysis, anchor: str, options: ReportOptions) -> Section | None:
    run, pred = a.run, a.run.predictions
    if pred is None or options.gradcam_images <= 0:
        return None
    sec = Section(f"{anchor}gradcam", "Grad-CAM: where the model looks",
                  lead="Heat maps of the regions that drove each attribute's score, on the "
                  "images where the model most confidently (and rightly) said yes.")  # fmt: skip
    if run.model_path is None:
        sec.add(Note("Grad-CAM skipped: the run directory has no model file.", "warn"))
        return sec
    try:
        fig, layer, attrs = _gradcam_figure(a, options, anchor)
    except FaceAttrError as exc:
        sec.add(Note(f"Grad-CAM skipped: {exc.message}", "warn"))
        return sec
    except (OSError, RuntimeError, ImportError, ValueError) as exc:
        sec.add(Note(f"Grad-CAM skipped: {type(exc).__name__}: {exc}", "warn"))
        return sec
    if fig is None:
        where = ", ".join(str(d) for d in _image_dirs(run)) or "no image folder recorded"
        sec.add(Note(f"Grad-CAM skipped: the evaluated images are not on this machine (looked "
                     f"in {where}).", "warn"))  # fmt: skip
        return sec
    sec.add(fig, Paragraph(f"Attributes: {', '.join(attrs)}. Feature map: `{layer}` of the "
                           "backbone."))  # fmt: skip
    return sec


def _gradcam_figure(a: RunAnalysis, options: ReportOptions, anchor: str):
    import torch

    from faceattr.data.images import load_image
    from faceattr.data.transforms import normalize, preprocess
    from faceattr.models import load_model_file
    from faceattr.report.gradcam import grad_cam
    from faceattr.utils import resolve_device

    run, pred = a.run, a.run.predictions
    assert pred is not None and run.model_path is not None
    device = resolve_device(options.device)
    model, info = load_model_file(run.model_path, device=str(device))
    model_attrs = list(info.attributes)
    attrs = _gradcam_attributes(a, options, model_attrs)
    n = min(options.gradcam_images, MAX_GRADCAM_IMAGES)
    crops, keep = [], []
    for i in _gradcam_images(a, [x for x in attrs if x in pred.attributes], n * 2):
        path = _image_path(run, str(pred.images[i]))
        if path is None:
            continue
        try:
            crops.append(preprocess(load_image(path), info.img_size, info.crop))
        except FaceAttrError:
            continue
        keep.append(i)
        if len(keep) == n:
            break
    if not keep:
        return None, "", attrs
    x = torch.from_numpy(np.stack(crops)).to(device)
    maps, probs, layer = grad_cam(model, normalize(x, info.mean, info.std),
                                  [model_attrs.index(t) for t in attrs])  # fmt: skip
    labels = np.array([[pred.targets[i, pred.attributes.index(t)] if t in pred.attributes
                        else np.nan for t in attrs] for i in keep])  # fmt: skip
    images = np.stack(crops).transpose(0, 2, 3, 1)
    titles = [str(pred.images[i]) for i in keep]
    fig = plots.gradcam_grid(images, maps, attrs, probs, labels, titles, name=f"{anchor}gradcam")
    return fig, layer, attrs


def _training_section(runs: Sequence[RunData], anchor: str) -> Section | None:
    fig = plots.training_curves(runs, name=f"{anchor}curves")
    if fig is None:
        return None
    sec = Section(f"{anchor}training", "Training curves")
    sec.add(fig)
    if len(runs) == 1:
        sec.add(Details("Per-epoch numbers", [_history_table(runs[0])]))
    return sec


def run_sections(
    a: RunAnalysis, options: ReportOptions, anchor: str = "", progress: Progress | None = None
) -> list[Section]:
    """Every section of one run's report (``anchor`` prefixes ids so runs can share a page)."""
    progress = progress or NullProgress()
    builders = [
        lambda: _overview(a, anchor),
        lambda: _training_section([a.run], anchor),
        lambda: _attributes_section(a, anchor),
        lambda: _subgroup_section(a, anchor),
        lambda: _calibration_section(a, anchor),
        lambda: _correlation_section(a, anchor),
        lambda: _gallery_section(a, anchor, options),
        lambda: _gradcam_section(a, anchor, options),
    ]
    out = []
    for build in builders:
        sec = build()
        progress.advance(1)
        if sec is not None:
            out.append(sec)
    return out


# ----------------------------------------------------------------------------- several runs


def comparison_findings(comp: an.Comparison, analyses: Sequence[RunAnalysis]) -> list[str]:
    runs = comp.runs
    best_i = comp.ranking[0]
    best = runs[best_i]
    out = []
    others = comp.ranking[1:]
    if all(abs(comp.scores[i] - comp.scores[best_i]) < 1e-9 for i in others):
        scores = f"{comp.rank_label} {pct(comp.scores[best_i])}"
        out.append(f"**No run is better**: all have the same {scores}.")
        others = []
        text = ""
    else:
        text = f"**Best run: {best.name}**, {comp.rank_label} {pct(comp.scores[best_i])}"
    for i in others[:3]:
        other = runs[i]
        d = comp.scores[best_i] - comp.scores[i]
        won, total = comp.wins(best_i, i)
        text += (
            f"; {points(d)} points over {other.name} (more accurate on {won} of {total} attributes"
        )
        pair = comp.paired.get(i)
        if pair is not None:
            verdict = "a real difference" if pair.significant else "within noise"
            text += (
                f"; 95% interval ±{100 * pair.half_width:.1f} on {pair.n_images:,} shared images:"
                f" {verdict}"
            )
        text += ")"
    if text:
        out.append(text + ".")
    if comp.differences:
        parts = [f"{k}: " + " / ".join(v) for k, v in comp.differences[:5]]
        out.append("**What differs** (" + " vs ".join(r.name for r in runs) + "): "
                   + "; ".join(parts) + ".")  # fmt: skip
    else:
        out.append("**What differs**: the configurations are identical (different seeds of the "
                   "same setup, or different evaluation data).")  # fmt: skip
    if len(runs) >= 2:
        ref, other = 0, 1
        d = comp.deltas(other, ref)
        gains = [f"{x} ({points(v)})" for x, v in d[:3] if v > 0]
        losses = [f"{x} ({points(v)})" for x, v in d[::-1][:3] if v < 0]
        if gains or losses:
            text = f"**{runs[other].name} vs {runs[ref].name}**: "
            text += ("largest gains " + ", ".join(gains)) if gains else "no attribute improves"
            text += ("; largest losses " + ", ".join(losses)) if losses else "; no attribute loses"
            out.append(text + ".")
    hard_sets = [set(r.name for r in a.hardest) for a in analyses]
    common = set.intersection(*hard_sets) if hard_sets else set()
    if common:
        order = [r.name for r in analyses[best_i].hardest if r.name in common]
        out.append("**Hard for every run**: " + ", ".join(order) + ".")
    cost = []
    for r in runs:
        bits = [duration(r.train_seconds), _ips(r.images_per_second), _params(r) + " params"]
        cost.append(f"{r.name} " + ", ".join(b for b in bits if not b.startswith("–")))
    out.append("**Cost**: " + "; ".join(cost) + ".")
    for g in dict.fromkeys(s.group for a in analyses for s in a.subgroups):
        parts = []
        for a in analyses:
            sub = next((s for s in a.subgroups if s.group == g), None)
            if sub is None or sub.mean_yes is None or sub.mean_no is None:
                continue
            parts.append(f"{a.run.name} {points(sub.mean_yes - sub.mean_no)} "
                         f"({len(sub.flagged)} flagged)")  # fmt: skip
        if parts:
            sub0 = next(s for a in analyses for s in a.subgroups if s.group == g)
            out.append(f"**{sub0.label_yes} minus {sub0.label_no}** mean accuracy: "
                       + "; ".join(parts) + ".")  # fmt: skip
    return out


SUMMARY_ROWS = (
    ("mean accuracy", "mean_accuracy"),
    ("balanced accuracy", "mean_balanced_accuracy"),
    ("strict accuracy", "strict_accuracy"),
    ("macro F1", "macro_f1"),
    ("mean average precision", "mean_average_precision"),
    ("majority baseline", "majority_accuracy"),
)
HALF_ROWS = (
    ("mean accuracy at 0.5", "mean_accuracy"),
    ("balanced accuracy at 0.5", "mean_balanced_accuracy"),
    ("strict accuracy at 0.5", "strict_accuracy"),
)


def _unique_top(v: float | None, values: Sequence[float]) -> bool:
    """True when ``v`` is the single largest of several ``values`` (ties highlight nothing)."""
    if v is None or len(values) < 2:
        return False
    top = max(values)
    return v == top and sum(1 for x in values if abs(x - top) < 1e-12) == 1


def comparison_table(comp: an.Comparison) -> Table:
    runs = comp.runs
    two = len(runs) == 2
    cols = ["", *[r.name for r in runs]] + ([f"Δ {runs[1].name} − {runs[0].name}"] if two else [])
    rows = []
    halves = [an.summary_at_half(r.metrics) or {} for r in runs]
    tuned = any(an.prefers_half(r) for r in runs)
    metric_rows = [(label, key, [r.metrics.get(key) for r in runs]) for label, key in SUMMARY_ROWS]
    if tuned and any(halves):
        metric_rows[:0] = [(label, key, [h.get(key) for h in halves]) for label, key in HALF_ROWS]
        metric_rows[3:6] = [(f"{lab} (own thresholds)", k, v) for lab, k, v in metric_rows[3:6]]
    for label, key, values in metric_rows:
        defined = [v for v in values if v is not None]
        top = max(defined) if defined and key != "majority_accuracy" else None
        cells = [Cell(label, tone="strong")]
        for v in values:
            tone = "good" if top is not None and _unique_top(v, defined) else None
            cells.append(Cell(pct(v, 2), _num(v), tone=tone))
        if two:
            d = None if None in values else values[1] - values[0]
            tone = None
            if d is not None and abs(d) > 1e-9 and key != "majority_accuracy":
                tone = "good" if d > 0 else "bad"
            cells.append(Cell(points(d, 2), _num(d), tone=tone))
        rows.append(cells)
    extra = [
        ("images evaluated", [f"{r.metrics.get('n_images', 0):,}" for r in runs]),
        ("best epoch", [f"{r.best_epoch or '–'} of {len(r.history)}" for r in runs]),
        ("training time", [duration(r.train_seconds) for r in runs]),
        ("training speed", [_ips(r.images_per_second) for r in runs]),
        ("parameters", [_params(r) for r in runs]),
    ]
    for label, values in extra:
        rows.append([Cell(label, tone="strong"), *[Cell(v) for v in values]]
                    + ([Cell("")] if two else []))  # fmt: skip
    return Table(cols, rows, caption=f"Summary on the {runs[0].split} split (best in green)",
                 sortable=False)  # fmt: skip


def per_attribute_comparison(comp: an.Comparison) -> Table:
    runs = comp.runs
    cols = ["attribute"]
    groups = [("", 1)]
    acc = "acc @0.5" if comp.accuracy_label == "accuracy at 0.5" else "acc"
    for r in runs:
        cols += [acc, "bal acc"]
        groups.append((r.name, 2))
    for r in runs[1:]:
        cols.append(f"Δ {r.name}" if len(runs) > 2 else f"Δ {acc}")
    if len(runs) > 1:
        groups.append((f"vs {runs[0].name}", len(runs) - 1))
    rows = []
    for a in comp.attributes:
        accs, bals = comp.accuracy[a], comp.balanced[a]
        defined = [v for v in accs if v is not None]
        cells = [Cell(a)]
        for acc, bal in zip(accs, bals, strict=True):
            tone = "strong" if acc is not None and _unique_top(acc, defined) else None
            cells.append(Cell(pct(acc), _num(acc), tone=tone))
            cells.append(Cell(pct(bal), _num(bal), background=heat(bal)))
        for i in range(1, len(runs)):
            d = None if accs[i] is None or accs[0] is None else accs[i] - accs[0]
            cells.append(Cell(points(d), _num(d), background=lift_heat(d, 0.03)))
        rows.append(cells)
    return Table(cols, rows, groups=groups,
                 caption=f"Per-attribute {comp.accuracy_label} and balanced accuracy (at the "
                 f"runs' thresholds) per run, and the change from {runs[0].name} (click a "
                 "column to sort)")  # fmt: skip


def _comparison_sections(comp: an.Comparison, analyses: Sequence[RunAnalysis]) -> list[Section]:
    runs = comp.runs
    sec = Section("comparison", "Runs side by side",
                  lead="Each run is labelled by its directory name; deltas are against the "
                  f"first run given ({runs[0].name}).")  # fmt: skip
    if comp.differences:
        diff = Table(["setting", *[r.name for r in runs]],
                     [[Cell(k, tone="strong"), *[Cell(v) for v in vals]]
                      for k, vals in comp.differences],
                     caption="What differs between the runs", sortable=False,
                     wrap=True)  # fmt: skip
    else:
        diff = Note("The runs' configurations are identical.")
    # One under the other: run names make both tables wide.
    sec.add(diff, comparison_table(comp))
    if len({r.split for r in runs}) == 1 and len({r.metrics.get("n_images") for r in runs}) > 1:
        sec.add(Note("The runs were evaluated on different numbers of images; compare with care.",
                     "warn"))  # fmt: skip
    out = [sec]
    curves = _training_section(runs, "cmp-")
    if curves is not None:
        curves.title = "Training curves, overlaid"
        out.append(curves)
    attrs = Section("cmp-attributes", "Per attribute: where each run wins")
    attrs.add(plots.delta_plot(comp, name="cmp-deltas"), per_attribute_comparison(comp))
    out.append(attrs)
    groups = list(dict.fromkeys(s.group for a in analyses for s in a.subgroups))
    if groups:
        sg = Section("cmp-subgroups", "Subgroups per run",
                     lead="Mean and strict accuracy on each side of a grouping attribute, and "
                     "how many attributes have a flagged gap.")  # fmt: skip
        for g in groups:
            rows = []
            label_yes = label_no = g
            for a in analyses:
                sub = next((s for s in a.subgroups if s.group == g), None)
                if sub is None:
                    continue
                label_yes, label_no = sub.label_yes, sub.label_no
                gap = None if sub.mean_yes is None or sub.mean_no is None else (
                    sub.mean_yes - sub.mean_no)  # fmt: skip
                top = ", ".join(f"{r.attribute} ({points(r.excess_gap)})" for r in sub.flagged[:3])
                rows.append([Cell(a.run.name, tone="strong"), _pcell(sub.mean_yes),
                             _pcell(sub.mean_no), Cell(points(gap), _num(gap)),
                             _pcell(sub.strict_yes), _pcell(sub.strict_no),
                             Cell(str(len(sub.flagged)), len(sub.flagged)),
                             Cell(top or "–")])  # fmt: skip
            sg.add(Table(["run", f"mean acc {label_yes}", f"mean acc {label_no}", "gap",
                          f"strict {label_yes}", f"strict {label_no}", "flagged",
                          "largest flagged gaps"], rows, caption=f"By {g}"))  # fmt: skip
        out.append(sg)
    return out


# ----------------------------------------------------------------------------- entry point


def build_report(
    runs: Sequence[RunData],
    options: ReportOptions | None = None,
    *,
    progress: Progress | None = None,
) -> Report:
    """The whole report for one run, or a comparison of several followed by each run's own."""
    options = options or ReportOptions()
    progress = progress or NullProgress()
    runs = list(runs)
    progress.start("building report", total=9 * len(runs), unit="step")
    analyses = [analyze_run(r, options) for r in runs]
    progress.advance(len(runs))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    footer = f"Generated by faceattr {__version__} on {stamp} from run directories only."
    if len(runs) == 1:
        a = analyses[0]
        sections = run_sections(a, options, progress=progress)
        report = Report(
            title=f"faceattr report: {a.run.name}",
            subtitle=f"{a.run.config.get('model', {}).get('arch', '?')} evaluated on the "
            f"{a.run.split} split of {a.run.metrics.get('dataset') or 'the dataset'}",
            findings=single_run_findings(a),
            sections=sections,
            footer=footer,
        )
        progress.finish()
        return report
    comp = an.compare_runs(runs)
    sections = _comparison_sections(comp, analyses)
    for i, a in enumerate(analyses):
        anchor = f"run{i + 1}-"
        inner = run_sections(a, options, anchor, progress=progress)
        sec = Section(f"{anchor}report", f"Run {i + 1}: {a.run.name}",
                      lead=" ".join(single_run_findings(a)[:2]))  # fmt: skip
        sec.add(*[Details(s.title, [*([Paragraph(s.lead)] if s.lead else []), *s.blocks],
                          open=s.id.endswith("overview")) for s in inner])  # fmt: skip
        sections.append(sec)
    progress.finish()
    return Report(
        title="faceattr report: " + " vs ".join(r.name for r in runs),
        subtitle=f"{len(runs)} runs compared on the {runs[0].split} split",
        findings=comparison_findings(comp, analyses),
        sections=sections,
        footer=footer,
    )


def figures(report: Report) -> list[Figure]:
    """Every figure in ``report`` (walks nested blocks)."""
    found: list[Figure] = []

    def walk(blocks) -> None:
        for b in blocks:
            if isinstance(b, Figure):
                found.append(b)
            elif isinstance(b, (Columns, Details)):
                walk(b.blocks)

    for s in report.sections:
        walk(s.blocks)
    return found
