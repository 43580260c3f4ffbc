"""The sections of one run's report: overview, training curves, per-attribute table and
chart, subgroup error analysis, calibration and thresholds, correlations of labels vs
predictions, then the gallery and Grad-CAM (:mod:`.image_sections`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceattr.progress import NullProgress, Progress
from faceattr.report import analysis as an
from faceattr.report import plots
from faceattr.report.analysis import RunAnalysis
from faceattr.report.comparison import describe_config
from faceattr.report.document import (
    Cell,
    Columns,
    Details,
    Note,
    Paragraph,
    Section,
    Table,
    Tile,
    Tiles,
    literal,
)
from faceattr.report.format import (
    decision_note,
    duration,
    heat,
    ips,
    lift_heat,
    num,
    params,
    pcell,
    pct,
    points,
    tuned_for,
)
from faceattr.report.image_sections import gallery_section, gradcam_section
from faceattr.report.load import RunData
from faceattr.report.options import ReportOptions
from faceattr.report.subgroup_sections import subgroup_accuracy_section

SUBGROUP_ROWS = 12  # rows of the subgroup chart and its table (the full table is collapsed)


def single_run_findings(a: RunAnalysis) -> list[str]:
    """The "at a glance" sentences for one run (``**bold**`` marks the lead words)."""
    m, rows, run = a.run.metrics, a.rows, a.run
    out = []
    at_half = an.summary_at_half(m) if an.prefers_half(run) else None
    maj = m.get("majority_accuracy")
    mean = (at_half or m).get("mean_accuracy")
    where = " at threshold 0.5" if at_half else ""
    n, split = m.get("n_images", 0), literal(run.split)
    text = f"**Mean accuracy {pct(mean)}**{where} on {n:,} {split} images"
    if mean is not None and maj is not None:
        side = "above" if mean >= maj else "below"
        text += (
            f", {abs(100 * (mean - maj)):.1f} points {side} always predicting the majority "
            f"({pct(maj)})"
        )
    if at_half:
        text += (
            f"; with thresholds tuned for {tuned_for(run)}: balanced accuracy "
            f"{pct(m.get('mean_balanced_accuracy'))} "
            f"(vs {pct(at_half.get('mean_balanced_accuracy'))} at 0.5) "
            f"and accuracy {pct(m.get('mean_accuracy'))}"
        )
    else:
        text += f"; balanced accuracy {pct(m.get('mean_balanced_accuracy'))}"
    strict = (at_half or m).get("strict_accuracy")
    text += f"; {pct(strict)} of images have every attribute right{where}."
    out.append(text)
    hard = a.hardest
    if hard:
        out.append(
            "**Hardest attributes** (lowest balanced accuracy): "
            + ", ".join(f"{literal(r.name)} {pct(r.difficulty, 0)}" for r in hard)
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
        out.append(subgroup_sentence(sub))
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
    text = ", ".join(f"{literal(r.name)} ({points(r.lift)})" for r in rows[:k])
    return text + (f" and {len(rows) - k} more" if len(rows) > k else "")


def subgroup_sentence(sub: an.SubgroupResult) -> str:
    gap = None if sub.mean_yes is None or sub.mean_no is None else sub.mean_yes - sub.mean_no
    yes, no = literal(sub.label_yes), literal(sub.label_no)
    text = (
        f"**By {literal(sub.group)}**: mean accuracy {pct(sub.mean_yes)} on {yes} vs "
        f"{pct(sub.mean_no)} on {no} images ({points(gap)} points); all attributes "
        f"right on {pct(sub.strict_yes)} vs {pct(sub.strict_no)}."
    )
    flagged = sub.flagged
    size = f"{100 * sub.gap_threshold:.0f}+ points"
    if flagged:
        shown = ", ".join(
            f"{literal(r.attribute)} (better on {yes if (r.excess_gap or 0) > 0 else no}"
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
    at_half = an.summary_at_half(m) if an.prefers_half(run) else None
    mean = (at_half or m).get("mean_accuracy")
    lift = None if maj is None or mean is None else mean - maj
    if at_half:
        acc_detail = f"at 0.5, {points(lift)} vs majority; {pct(m.get('mean_accuracy'))} tuned"
        bal_detail = f"tuned thresholds; {pct(at_half.get('mean_balanced_accuracy'))} at 0.5"
        strict_detail = f"all attributes right, at 0.5; {pct(m.get('strict_accuracy'))} tuned"
    else:
        acc_detail = f"{points(lift)} points vs majority"
        bal_detail = "mean of recall on positives and negatives"
        strict_detail = "images with all attributes right"
    good = lift is not None and lift > 0
    tiles = Tiles([
        Tile("mean accuracy", pct(mean), acc_detail, "good" if good else "bad"),
        Tile("balanced accuracy", pct(m.get("mean_balanced_accuracy")), bal_detail),
        Tile("strict accuracy", pct((at_half or m).get("strict_accuracy")), strict_detail),
        Tile("majority baseline", pct(maj), "always the most common answer", "muted"),
        Tile("macro F1", pct(m.get("macro_f1")), f"mAP {pct(m.get('mean_average_precision'))}"),
        Tile("images", f"{m.get('n_images', 0):,}", f"{literal(run.split)} split, "
             f"{len(run.attributes)} attributes"),
    ])  # fmt: skip
    cfg = describe_config(run.config)
    rows = [[Cell(k), Cell(literal(v))] for k, v in cfg.items()]  # values: paths, names
    rows += [
        [Cell("best epoch"), Cell(f"{run.best_epoch or '–'} of {len(run.history)}")],
        [Cell("training time"), Cell(duration(run.train_seconds))],
        [Cell("training speed"), Cell(ips(run.images_per_second))],
        [Cell("parameters"), Cell(params(run))],
    ]
    config = Table(["setting", "value"], rows, caption="Configuration", sortable=False, wrap=True)
    sec = Section(f"{anchor}overview", "Overview", lead=f"Run directory `{literal(run.path)}`.")
    sec.add(tiles, *[Note(n, "warn") for n in a.notes])
    sec.add(Details("Configuration", [config], open=False))
    return sec


def teacher_section(a: RunAnalysis, anchor: str) -> Section | None:
    """A distilled run: the teacher beside the student on the run's validation split
    (``metrics-valid-teacher.json``, written when the run started)."""
    from faceattr.errors import DataError
    from faceattr.runs import RunDir

    run = a.run
    distill = run.config.get("distill")
    if not isinstance(distill, dict) or not distill.get("teacher"):
        return None
    rd = RunDir(run.path)
    if not rd.metrics_file(run.split, "-teacher").is_file():
        return None
    try:
        teacher = rd.read_metrics(f"{run.split}-teacher")
    except (DataError, OSError):  # a damaged file: said below
        teacher = None
    sec = Section(f"{anchor}teacher", "Teacher and student",
                  lead=f"Distilled from `{literal(distill['teacher'])}` (alpha "
                  f"{literal(str(distill.get('alpha')))}, temperature "
                  f"{literal(str(distill.get('temperature')))}), "
                  f"both on the {literal(run.split)} split.")  # fmt: skip
    if teacher is None:
        sec.add(Note("metrics-valid-teacher.json could not be read.", "warn"))
        return sec
    rows = []
    for name, m in (("teacher", teacher), ("student", run.metrics)):
        half = an.summary_at_half(m) or m
        rows.append([Cell(name), pcell(half.get("mean_accuracy")),
                     pcell(m.get("mean_balanced_accuracy")),
                     pcell(half.get("strict_accuracy"))])  # fmt: skip
    sec.add(Table(["model", "mean accuracy at 0.5", "balanced accuracy (its thresholds)",
                   "strict accuracy at 0.5"], rows, sortable=False))  # fmt: skip
    return sec


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
            elif k == "lr":  # the epoch's mean, and its range when the schedule moved it
                lo, hi = r.get("lr_min"), r.get("lr_max")
                moved = lo is not None and hi is not None and hi > 1.05 * lo
                cells.append(Cell(f"{v:.2g}" + (f" ({lo:.2g}-{hi:.2g})" if moved else ""), v))
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
    at_half = any(r.accuracy_half is not None for r in rows)
    cols = ["attribute", "acc", *(["acc @0.5"] if at_half else []), "majority", "lift", "bal acc",
            "prec", "recall", "F1", "AP", "pos rate", "thr", "TP", "FP", "TN", "FN"]  # fmt: skip
    out = []
    for r in rows:
        out.append([
            Cell(literal(r.name), title=r.note),
            pcell(r.accuracy),
            *([pcell(r.accuracy_half)] if at_half else []),
            Cell(pct(r.majority), num(r.majority), tone="muted"),
            Cell(points(r.lift), num(r.lift), background=lift_heat(r.lift)),
            pcell(r.balanced, heat(r.balanced)),
            pcell(r.precision),
            pcell(r.recall),
            pcell(r.f1),
            pcell(r.ap),
            Cell(pct(r.positive_rate), num(r.positive_rate), title=f"{r.positives:,} positives"),
            Cell(f"{r.threshold:.2f}", r.threshold),
            Cell(f"{r.tp:,}", r.tp), Cell(f"{r.fp:,}", r.fp), Cell(f"{r.tn:,}", r.tn),
            Cell(f"{r.fn:,}", r.fn),
        ])  # fmt: skip
    tips = dict(ATTRIBUTE_TIPS)
    if at_half:
        tips["acc"] = "accuracy at the run's tuned thresholds"
        tips["lift"] = "accuracy at 0.5 minus the majority baseline, in points"
    return Table(cols, out, caption="Per-attribute metrics at the run's thresholds (click a "
                 "column to sort)", groups=[("", 1), ("accuracy", 5 if at_half else 4),
                 ("positive class", 4), ("", 2), ("confusion counts", 4)], tips=tips)  # fmt: skip


def _attributes_section(a: RunAnalysis, anchor: str) -> Section:
    sec = Section(f"{anchor}attributes", "Attributes: which are hard",
                  lead="Balanced accuracy is the fairest single number for rare attributes: "
                  "always answering no scores 50% on it, whatever the base rate.")  # fmt: skip
    sec.add(plots.accuracy_bars(a.rows, name=f"{anchor}accuracy"), attribute_table(a.rows))
    return sec


def _subgroup_section(a: RunAnalysis, anchor: str) -> Section | None:
    sec = Section(f"{anchor}subgroups", "Subgroups: for whom it fails",
                  lead="Per-attribute accuracy split by another attribute. A raw gap often "
                  "just mirrors base rates (almost no woman is labelled Goatee, so \"no\" is "
                  "nearly always right for them); the gap beyond base rates compares each "
                  "side's lift over its own majority answer, and flags (⚑) are set on it."
                  + decision_note(a.run))  # fmt: skip
    if not a.subgroups:
        if a.run.predictions is None:
            return None
        why = " ".join(n for n in a.notes if n.startswith("Subgroups")) or "no grouping attribute."
        sec.add(Note(f"No subgroup could be analysed. {why}", "warn"))
        return sec
    for sub in a.subgroups:
        sec.add(Paragraph(subgroup_sentence(sub) + f" Group labels from {sub.source}."))
        group, yes, no = literal(sub.group), literal(sub.label_yes), literal(sub.label_no)
        rows = []
        ordered = sub.by_gap()
        for r in ordered:
            rows.append([
                Cell(("⚑ " if r.flagged else "") + literal(r.attribute),
                     tone="bad" if r.flagged else None),
                pcell(r.acc_yes, heat(r.acc_yes, 0.6)),
                pcell(r.acc_no, heat(r.acc_no, 0.6)),
                Cell(points(r.gap), num(r.gap)),
                Cell(points(r.excess_gap), num(r.excess_gap),
                     tone="bad" if r.flagged else None),
                Cell(pct(r.rate_yes), num(r.rate_yes), tone="muted"),
                Cell(pct(r.rate_no), num(r.rate_no), tone="muted"),
                Cell(f"{r.n_yes:,}", r.n_yes), Cell(f"{r.n_no:,}", r.n_no),
            ])  # fmt: skip
        cols = ["attribute", f"acc {yes}", f"acc {no}", "gap", "beyond base rates",
                f"pos rate {yes}", f"pos rate {no}", f"n {yes}", f"n {no}"]  # fmt: skip
        top = Table(cols[:5], [r[:5] for r in rows[:SUBGROUP_ROWS]],
                    caption=f"Largest gaps by {group} beyond base rates (⚑ = "
                    f"{100 * sub.gap_threshold:.0f}+ points, enough images on both sides)",
                    tips={"gap": "accuracy difference, in points",
                          "beyond base rates": "difference of each side's accuracy minus "
                          "that side's majority-answer accuracy"})  # fmt: skip
        full = Table(cols, rows, caption=f"Accuracy by {group}, every attribute")
        fig = plots.subgroup_plot(sub, k=SUBGROUP_ROWS, name=f"{anchor}subgroup-{sub.group}")
        sec.add(Columns([fig, top]) if fig is not None else top)
        sec.add(Details(f"All attributes by {group}, with positive rates and counts", [full]))
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
    at_half = a.run.metrics.get("at_threshold_0.5")
    if at_half:
        m = a.run.metrics
        sec.add(Paragraph(
            f"With the tuned thresholds: mean accuracy {pct(m.get('mean_accuracy'))}, balanced "
            f"{pct(m.get('mean_balanced_accuracy'))}, macro F1 {pct(m.get('macro_f1'))}; at a "
            f"plain 0.5: {pct(at_half.get('mean_accuracy'))}, "
            f"{pct(at_half.get('mean_balanced_accuracy'))}, {pct(at_half.get('macro_f1'))}."
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
            [Cell(f"{literal(p.a)} – {literal(p.b)}"), Cell(f"{p.label_corr:+.2f}", p.label_corr),
             Cell(f"{p.pred_corr:+.2f}", p.pred_corr),
             Cell(f"{p.difference:+.2f}", p.difference,
                  tone="bad" if abs(p.difference) >= 0.15 else None)]
            for p in pairs
        ]  # fmt: skip
        sec.add(Table(["pair", "labels", "predictions", "difference"], rows,
                      caption="Pairs the model links most differently from the data"))  # fmt: skip
    return sec


def training_section(runs: Sequence[RunData], anchor: str) -> Section | None:
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
        lambda: teacher_section(a, anchor),
        lambda: training_section([a.run], anchor),
        lambda: _attributes_section(a, anchor),
        lambda: _subgroup_section(a, anchor),
        lambda: subgroup_accuracy_section(a, options, anchor),
        lambda: _calibration_section(a, anchor),
        lambda: _correlation_section(a, anchor),
        lambda: gallery_section(a, anchor, options),
        lambda: gradcam_section(a, anchor, options),
    ]
    out = []
    for build in builders:
        sec = build()
        progress.advance(1)
        if sec is not None:
            out.append(sec)
    return out
