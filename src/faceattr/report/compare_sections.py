"""The comparison of several runs: the "at a glance" findings, the summary and
per-attribute tables, overlaid training curves and subgroups per run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faceattr.report import plots
from faceattr.report.analysis import RunAnalysis, prefers_half, summary_at_half
from faceattr.report.comparison import Comparison
from faceattr.report.document import Cell, Note, Section, Table, literal
from faceattr.report.format import duration, heat, ips, lift_heat, num, params, pcell, pct, points
from faceattr.report.run_sections import training_section


def comparison_findings(comp: Comparison, analyses: Sequence[RunAnalysis]) -> list[str]:
    """The "at a glance" sentences of a comparison (``**bold**`` marks the lead words)."""
    runs = comp.runs
    names = [literal(r.name) for r in runs]
    best_i = comp.ranking[0]
    out = []
    others = comp.ranking[1:]
    if all(abs(comp.scores[i] - comp.scores[best_i]) < 1e-9 for i in others):
        scores = f"{comp.rank_label} {pct(comp.scores[best_i])}"
        out.append(f"**No run is better**: all have the same {scores}.")
        others = []
        text = ""
    else:
        text = f"**Best run: {names[best_i]}**, {comp.rank_label} {pct(comp.scores[best_i])}"
    for i in others[:3]:
        lead = comp.scores[best_i] - comp.scores[i]
        won, total = comp.wins(best_i, i)
        text += (
            f"; {points(lead)} points over {names[i]} (more accurate on {won} of {total} attributes"
        )
        pair = comp.paired.get(i)
        if pair is not None:
            verdict = "a real difference" if pair.significant else "within noise"
            text += (
                f"; 95% interval ±{100 * pair.half_width:.1f} on {pair.n_images:,} shared "
                f"{pair.unit}: {verdict}"
            )
        text += ")"
    if text:
        out.append(text + ".")
    if comp.differences:
        parts = [f"{k}: " + " / ".join(map(literal, v)) for k, v in comp.differences[:5]]
        out.append("**What differs** (" + " vs ".join(names) + "): "
                   + "; ".join(parts) + ".")  # fmt: skip
    else:
        out.append("**What differs**: the configurations are identical (different seeds of the "
                   "same setup, or different evaluation data).")  # fmt: skip
    if len(runs) >= 2:
        ref, other = 0, 1
        deltas = comp.deltas(other, ref)
        gains = [f"{literal(x)} ({points(v)})" for x, v in deltas[:3] if v > 0]
        losses = [f"{literal(x)} ({points(v)})" for x, v in deltas[::-1][:3] if v < 0]
        if gains or losses:
            text = f"**{names[other]} vs {names[ref]}**: "
            text += ("largest gains " + ", ".join(gains)) if gains else "no attribute improves"
            text += ("; largest losses " + ", ".join(losses)) if losses else "; no attribute loses"
            out.append(text + ".")
    hard_sets = [set(r.name for r in a.hardest) for a in analyses]
    common = set.intersection(*hard_sets) if hard_sets else set()
    if common:
        order = [literal(r.name) for r in analyses[best_i].hardest if r.name in common]
        out.append("**Hard for every run**: " + ", ".join(order) + ".")
    cost = []
    for r, shown in zip(runs, names, strict=True):
        bits = [duration(r.train_seconds), ips(r.images_per_second), params(r) + " params"]
        cost.append(f"{shown} " + ", ".join(b for b in bits if not b.startswith("–")))
    out.append("**Cost**: " + "; ".join(cost) + ".")
    for g in dict.fromkeys(s.group for a in analyses for s in a.subgroups):
        parts = []
        for a in analyses:
            sub = next((s for s in a.subgroups if s.group == g), None)
            if sub is None or sub.mean_yes is None or sub.mean_no is None:
                continue
            parts.append(f"{literal(a.run.name)} {points(sub.mean_yes - sub.mean_no)} "
                         f"({len(sub.flagged)} flagged)")  # fmt: skip
        if parts:
            sub0 = next(s for a in analyses for s in a.subgroups if s.group == g)
            yes, no = literal(sub0.label_yes), literal(sub0.label_no)
            out.append(f"**{yes} minus {no}** mean accuracy: " + "; ".join(parts) + ".")
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


def comparison_table(comp: Comparison) -> Table:
    """Summary metrics and costs, one column per run (and their difference for two runs)."""
    runs = comp.runs
    two = len(runs) == 2
    names = [literal(r.name) for r in runs]
    cols = ["", *names] + ([f"Δ {names[1]} − {names[0]}"] if two else [])
    rows = []
    # The rows name their metrics by key.
    own: list[Mapping[str, Any]] = [r.metrics for r in runs]
    halves: list[Mapping[str, Any]] = [summary_at_half(r.metrics) or {} for r in runs]
    tuned = any(prefers_half(r) for r in runs)
    metric_rows = [(label, key, [m.get(key) for m in own]) for label, key in SUMMARY_ROWS]
    if tuned and any(halves):
        metric_rows[:0] = [(label, key, [h.get(key) for h in halves]) for label, key in HALF_ROWS]
        metric_rows[3:6] = [(f"{lab} (own thresholds)", k, v) for lab, k, v in metric_rows[3:6]]
    for label, key, values in metric_rows:
        defined = [v for v in values if v is not None]
        top = max(defined) if defined and key != "majority_accuracy" else None
        cells = [Cell(label, tone="strong")]
        for v in values:
            tone = "good" if top is not None and _unique_top(v, defined) else None
            cells.append(Cell(pct(v, 2), num(v), tone=tone))
        if two:
            first, second = values[0], values[1]
            d = None if first is None or second is None else second - first
            tone = None
            if d is not None and abs(d) > 1e-9 and key != "majority_accuracy":
                tone = "good" if d > 0 else "bad"
            cells.append(Cell(points(d, 2), num(d), tone=tone))
        rows.append(cells)
    extra = [
        ("images evaluated", [f"{r.metrics.get('n_images', 0):,}" for r in runs]),
        ("best epoch", [f"{r.best_epoch or '–'} of {len(r.history)}" for r in runs]),
        ("training time", [duration(r.train_seconds) for r in runs]),
        ("training speed", [ips(r.images_per_second) for r in runs]),
        ("parameters", [params(r) for r in runs]),
    ]
    for label, texts in extra:
        rows.append([Cell(label, tone="strong"), *[Cell(t) for t in texts]]
                    + ([Cell("")] if two else []))  # fmt: skip
    split = literal(runs[0].split)
    return Table(cols, rows, caption=f"Summary on the {split} split (best in green)",
                 sortable=False)  # fmt: skip


def per_attribute_comparison(comp: Comparison) -> Table:
    """Accuracy and balanced accuracy of every attribute per run, and the change."""
    runs = comp.runs
    cols = ["attribute"]
    groups = [("", 1)]
    acc_col = "acc @0.5" if comp.accuracy_label == "accuracy at 0.5" else "acc"
    names = [literal(r.name) for r in runs]
    for shown in names:
        cols += [acc_col, "bal acc"]
        groups.append((shown, 2))
    for shown in names[1:]:
        cols.append(f"Δ {shown}" if len(runs) > 2 else f"Δ {acc_col}")
    if len(runs) > 1:
        groups.append((f"vs {names[0]}", len(runs) - 1))
    rows = []
    for a in comp.attributes:
        accs, bals = comp.accuracy[a], comp.balanced[a]
        defined = [v for v in accs if v is not None]
        cells = [Cell(literal(a))]
        for acc, bal in zip(accs, bals, strict=True):
            tone = "strong" if acc is not None and _unique_top(acc, defined) else None
            cells.append(Cell(pct(acc), num(acc), tone=tone))
            cells.append(Cell(pct(bal), num(bal), background=heat(bal)))
        ref = accs[0]
        for other in accs[1:]:
            d = None if other is None or ref is None else other - ref
            cells.append(Cell(points(d), num(d), background=lift_heat(d, 0.03)))
        rows.append(cells)
    return Table(cols, rows, groups=groups,
                 caption=f"Per-attribute {comp.accuracy_label} and balanced accuracy (at the "
                 f"runs' thresholds) per run, and the change from {names[0]} (click a "
                 "column to sort)")  # fmt: skip


def comparison_sections(comp: Comparison, analyses: Sequence[RunAnalysis]) -> list[Section]:
    """The comparison's own sections, before each run's report."""
    runs = comp.runs
    sec = Section("comparison", "Runs side by side",
                  lead="Each run is labelled by its directory name; deltas are against the "
                  f"first run given ({literal(runs[0].name)}).")  # fmt: skip
    diff: Table | Note
    if comp.differences:
        diff = Table(["setting", *[literal(r.name) for r in runs]],
                     [[Cell(k, tone="strong"), *[Cell(literal(v)) for v in vals]]
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
    curves = training_section(runs, "cmp-")
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
                top = ", ".join(f"{literal(r.attribute)} ({points(r.excess_gap)})"
                                for r in sub.flagged[:3])  # fmt: skip
                rows.append([Cell(literal(a.run.name), tone="strong"), pcell(sub.mean_yes),
                             pcell(sub.mean_no), Cell(points(gap), num(gap)),
                             pcell(sub.strict_yes), pcell(sub.strict_no),
                             Cell(str(len(sub.flagged)), len(sub.flagged)),
                             Cell(top or "–")])  # fmt: skip
            yes, no = literal(label_yes), literal(label_no)
            sg.add(Table(["run", f"mean acc {yes}", f"mean acc {no}", "gap", f"strict {yes}",
                          f"strict {no}", "flagged", "largest flagged gaps"], rows,
                         caption=f"By {literal(g)}"))  # fmt: skip
        out.append(sg)
    return out
