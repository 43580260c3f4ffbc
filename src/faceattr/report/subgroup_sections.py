"""Subgroup accuracy (``report --subgroups``): a target attribute's accuracy within the groups
that other attributes make, for one run and side by side for several. The numbers are
:func:`faceattr.subgroups.subgroup_accuracy`'s, the ones ``faceattr eval --subgroups`` prints,
computed from the predictions a run saved, at the thresholds of its metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceattr.report.analysis import RunAnalysis, group_labels
from faceattr.report.document import Cell, Note, Paragraph, Section, Table, literal
from faceattr.report.format import num, pct
from faceattr.report.load import RunData
from faceattr.report.options import ReportOptions
from faceattr.subgroups import GroupAccuracy, SubgroupAccuracy, SubgroupSpec, subgroup_accuracy

LEAD = (
    "An attribute's accuracy within the groups other attributes make (every combination of "
    "present and absent), at the thresholds of the run's metrics: the same numbers as "
    "`faceattr eval --subgroups`. A group's false-positive rate is the share of its images "
    "without the attribute that were called present, its false-negative rate the share with "
    "it that were missed; the 95% interval (Wilson) says how much its size can tell. Groups "
    "under {few} images are marked (few) and are never the worst group."
)


def run_subgroup_accuracy(
    run: RunData, specs: Sequence[SubgroupSpec]
) -> tuple[list[SubgroupAccuracy], list[str]]:
    """Each spec's numbers for ``run`` (from its saved predictions), and notes on the specs
    that could not be measured. A grouping attribute the model does not predict is read from
    the dataset's label file, as for the report's other subgroup views."""
    pred = run.predictions
    if not specs:
        return [], []
    if pred is None or len(pred) == 0:
        return [], [
            f"No per-image predictions for the {literal(run.split)} split of "
            f"{literal(run.name)}, so no subgroup accuracy. Make them with "
            f"{run.eval_command()}."
        ]
    need = list(dict.fromkeys(b for s in specs for b in s.by if b not in pred.attributes))
    labels, notes = group_labels(run, need) if need else ({}, [])
    notes = [n.replace("Subgroups by", "Subgroup accuracy by", 1) for n in notes]
    results: list[SubgroupAccuracy] = []
    thresholds = run.thresholds
    for spec in specs:
        if spec.target not in pred.attributes:
            notes.append(f"Subgroup accuracy of {literal(spec.target)} skipped: the model of "
                         f"{literal(run.name)} does not predict it.")  # fmt: skip
            continue
        if any(b not in pred.attributes and b not in labels for b in spec.by):
            continue  # group_labels said why
        j = pred.attributes.index(spec.target)
        columns = [pred.targets[:, j].astype(np.float64)]
        columns += [
            pred.column(b).astype(np.float64) if b in pred.attributes else labels[b][0]
            for b in spec.by
        ]
        targets = np.stack(columns, axis=1)
        probs = np.zeros_like(targets)
        probs[:, 0] = pred.probs[:, j]
        thr = np.full(targets.shape[1], 0.5)
        thr[0] = thresholds[j]
        results += subgroup_accuracy(probs, targets, [spec.target, *spec.by], [spec], thr)
    return results, notes


def _group_label(g: GroupAccuracy) -> str:
    """``"no, yes"`` (the grouping attributes' values in order), or ``"all"``."""
    return ", ".join("yes" if on else "no" for on in g.where.values()) or "all"


def _interval(g: GroupAccuracy) -> str:
    if g.accuracy_low is None or g.accuracy_high is None:
        return "–"
    return f"{pct(g.accuracy_low)}–{pct(g.accuracy_high)}"


def _name_cell(r: SubgroupAccuracy, g: GroupAccuracy) -> Cell:
    text = _group_label(g)
    if g.few and g.images:
        return Cell(f"{text} (few)", tone="muted", title="fewer images than the minimum")
    if g.group == r.worst_group:
        return Cell(f"{text} (worst)", tone="bad")
    return Cell(text, tone="strong" if g is r.overall else None)


def _title(r: SubgroupAccuracy) -> str:
    return f"{literal(r.target)} by {', '.join(literal(b) for b in r.by)}"


def sentence(r: SubgroupAccuracy) -> str:
    """The spec's headline: the overall accuracy and the worst group's, with their intervals."""
    o = r.overall
    text = (f"**{_title(r)}** (threshold {r.threshold:.2f}): {pct(o.accuracy)} on "
            f"{o.images:,} images")  # fmt: skip
    worst = r.worst
    if worst is not None and r.gap is not None:
        where = ", ".join(f"{literal(b)} {'yes' if on else 'no'}" for b, on in worst.where.items())
        text += (
            f"; lowest in the group {where}: {pct(worst.accuracy)} ({_interval(worst)}, "
            f"{worst.images:,} images), {100 * r.gap:.1f} points below; false-positive rate "
            f"there {pct(worst.false_positive_rate)}, false-negative rate "
            f"{pct(worst.false_negative_rate)}"
        )
    else:
        text += f"; no group has {r.min_images} images or more"
    few = sum(1 for g in r.groups if g.few and g.images)
    empty = sum(1 for g in r.groups if not g.images)
    if few or empty:
        text += f" ({few} group{'s' if few != 1 else ''} under {r.min_images} images"
        text += f", {empty} empty)" if empty else ")"
    if r.ungrouped:
        text += f"; {r.ungrouped:,} images with an unknown grouping label are in no group"
    return text + "."


def subgroup_table(r: SubgroupAccuracy) -> Table:
    """One spec for one run: the target overall and in each group."""
    cols = [", ".join(literal(b) for b in r.by), "images", "positives", "accuracy",
            "95% interval", "false-positive rate", "false-negative rate", "errors"]  # fmt: skip
    rows = [
        [_name_cell(r, g), Cell(f"{g.images:,}", g.images), Cell(f"{g.positives:,}", g.positives),
         Cell(pct(g.accuracy), num(g.accuracy)), Cell(_interval(g), num(g.accuracy_low)),
         Cell(pct(g.false_positive_rate), num(g.false_positive_rate)),
         Cell(pct(g.false_negative_rate), num(g.false_negative_rate)),
         Cell(f"{g.errors:,} ({g.false_positives} FP, {g.false_negatives} FN)", g.errors)]
        for g in [r.overall, *r.groups]
    ]  # fmt: skip
    return Table(cols, rows, sortable=False, tips={"95% interval": "Wilson score interval of "
                 "the accuracy"}, caption=f"{_title(r)}: accuracy within each group")  # fmt: skip


def subgroup_accuracy_section(
    a: RunAnalysis, options: ReportOptions, anchor: str = ""
) -> Section | None:
    """One run's subgroup accuracy (None when ``options.subgroups`` names no spec)."""
    if not options.subgroups:
        return None
    results, notes = run_subgroup_accuracy(a.run, options.subgroups)
    targets = ", ".join(dict.fromkeys(literal(s.target) for s in options.subgroups))
    sec = Section(f"{anchor}subgroup-accuracy", f"Subgroup accuracy: {targets}",
                  lead=LEAD.format(few=min_images(results)))  # fmt: skip
    for note in notes:
        sec.add(Note(note, "warn"))
    for r in results:
        sec.add(Paragraph(sentence(r)), subgroup_table(r))
    return sec


def min_images(results: Sequence[SubgroupAccuracy]) -> int:
    from faceattr.subgroups import MIN_IMAGES

    return results[0].min_images if results else MIN_IMAGES


def subgroup_comparison_section(
    analyses: Sequence[RunAnalysis], options: ReportOptions
) -> Section | None:
    """Several runs: each spec's groups as rows, each run's accuracy (with its interval) and
    error rates side by side."""
    if not options.subgroups:
        return None
    per_run = [run_subgroup_accuracy(a.run, options.subgroups) for a in analyses]
    every = [r for results, _ in per_run for r in results]
    sec = Section("cmp-subgroup-accuracy", "Subgroup accuracy per run",
                  lead=LEAD.format(few=min_images(every)))  # fmt: skip
    for _, notes in per_run:
        for note in notes:
            sec.add(Note(note, "warn"))
    names = [literal(a.run.name) for a in analyses]
    for spec in dict.fromkeys(r.spec for r in every):
        found = [next((r for r in results if r.spec == spec), None) for results, _ in per_run]
        shown = [(name, r) for name, r in zip(names, found, strict=True) if r is not None]
        first = shown[0][1]
        same_n = all(
            [g.images for g in r.groups] == [g.images for g in first.groups] for _, r in shown
        )
        cols = [", ".join(literal(b) for b in first.by)]
        groups: list[tuple[str, int]] = [("", 1)]
        if same_n:
            cols.append("images")
            groups[0] = ("", 2)
        per = 4 if not same_n else 3
        for name, _ in shown:
            cols += [*(["images"] if not same_n else []), "accuracy (95% interval)",
                     "FP rate", "FN rate"]  # fmt: skip
            groups.append((name, per))
        rows = []
        for i, g0 in enumerate([first.overall, *first.groups]):
            few = " (few)" if g0.few and g0.images and same_n else ""
            cells = [Cell(_group_label(g0) + few, tone=None if i else "strong")]
            if same_n:
                cells.append(Cell(f"{g0.images:,}", g0.images))
            for _, r in shown:
                g = [r.overall, *r.groups][i]
                text = pct(g.accuracy) + (f" ({_interval(g)})" if g.images else "")
                if g.group == r.worst_group:
                    text += " worst"
                cells += [*([Cell(f"{g.images:,}", g.images)] if not same_n else []),
                          Cell(text, num(g.accuracy), tone="bad" if g.group == r.worst_group
                               else "muted" if g.few else None),
                          Cell(pct(g.false_positive_rate), num(g.false_positive_rate)),
                          Cell(pct(g.false_negative_rate), num(g.false_negative_rate))]  # fmt: skip
            rows.append(cells)
        thresholds = ", ".join(f"{n} {r.threshold:.2f}" for n, r in shown)
        sec.add(Table(cols, rows, groups=groups, sortable=False,
                      caption=f"{_title(first)}, per run (thresholds: {thresholds})"))  # fmt: skip
    return sec
