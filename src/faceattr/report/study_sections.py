"""The section a report gets for a ``faceattr tune`` study: its trials and the metric
against each parameter (the runs themselves are compared by the usual sections)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faceattr.report.document import Cell, Paragraph, Section, Table, literal

if TYPE_CHECKING:
    from faceattr.engine.tune import StudySummary


def study_plot(summary: StudySummary, name: str = "study"):
    """One panel per parameter: each finished trial's metric against its value (pruned
    trials hollow), on a log axis for parameters sampled on one."""
    from faceattr.report.plots import _styled

    return _styled(_study_plot)(summary, name)  # in the report's style (no LaTeX)


def _study_plot(summary: StudySummary, name: str):
    from faceattr.report.plots import _new, _pct_axis, label, render

    params = list(dict.fromkeys(k for t in summary.trials for k in t.params))
    done = [t for t in summary.trials if t.value is not None]
    if not params or not done:
        return None
    fig = _new(3.2 * len(params), 2.6)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    logs = {p["name"] for p in summary.params if p.get("log")}
    for ax, param in zip(axes, params, strict=True):
        values = [t.params.get(param) for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        xs = values if numeric else [labels.index(str(v)) for v in values]
        for state, face in (("complete", "#0b62c4"), ("pruned", "none")):
            pts = [(x, t.value) for x, t in zip(xs, done, strict=True) if t.state == state]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=30, facecolors=face, edgecolors="#0b62c4",
                           label=state)  # fmt: skip
        if not numeric:
            ax.set_xticks(range(len(labels)), [label(x) for x in labels])
        elif param in logs:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: no overlapping labels
        ax.set_xlabel(label(param))
        _pct_axis(ax.yaxis)
    axes[0].set_ylabel(label(summary.metric.replace("_", " ")))
    axes[-1].legend(fontsize=8)
    return render(fig, name, caption=f"{literal(summary.metric)} of each trial against each "
                  "parameter (hollow: pruned after the epochs shown in the table).")  # fmt: skip


def study_section(summary: StudySummary) -> Section:
    params = list(dict.fromkeys(k for t in summary.trials for k in t.params))
    rows = []
    for t in sorted(summary.trials, key=lambda t: -(t.value or -1)):
        value = t.value
        rows.append([
            Cell(str(t.number), sort=t.number),
            *[Cell(literal(t.params.get(p, "")), sort=t.params.get(p)) for p in params],
            Cell("" if value is None else f"{100 * value:.2f}%", sort=value),
            Cell(str(t.epochs), sort=t.epochs), Cell(literal(t.state)),
        ])  # fmt: skip
    counts = summary.counts
    lead = (f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} "
            f"failed trial(s), maximising {literal(summary.metric)}.")  # fmt: skip
    sec = Section("study", f"Study {literal(summary.study_dir)}", lead=lead)
    sec.add(study_plot(summary))
    columns = ["trial", *map(literal, params), literal(summary.metric), "epochs", "state"]
    sec.add(Table(columns, rows, caption="The trials, best first."))
    if summary.best:
        sec.add(Paragraph(f"Best trial {summary.best.number}, reproduced by: "
                          f"`{literal(summary.command)}`"))  # fmt: skip
    if summary.importances:
        sec.add(Paragraph("Parameter importances: " + ", ".join(
            f"{literal(k)} {v:.2f}" for k, v in summary.importances.items())))  # fmt: skip
    return sec
