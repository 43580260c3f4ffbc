"""Report plots with matplotlib, rendered to SVG (charts) or PNG (heat maps, images).

Figures are built with :class:`matplotlib.figure.Figure` directly, never through pyplot, so no
GUI backend is touched and nothing global changes; styles are applied in an ``rc_context``.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from faceattr.report.analysis import AttributeRow, Reliability, SubgroupResult
from faceattr.report.comparison import Comparison
from faceattr.report.document import Figure, literal
from faceattr.report.load import RunData

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

P = ParamSpec("P")
R = TypeVar("R")

# Colour per run (colour-blind friendly, Tableau 10 order), and the report's accents.
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D")
GOOD, BAD, NEUTRAL, MUTED = "#2E7D32", "#C62828", "#4C78A8", "#9E9E9E"

STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.edgecolor": "#888888",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "svg.fonttype": "path",  # text as outlines: identical rendering without fonts installed
    "svg.hashsalt": "faceattr",  # stable element ids, so equal inputs give equal files
    "text.usetex": False,  # never LaTeX, whatever the user's matplotlibrc: see label()
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def label(text: object) -> str:
    """A name (attribute, run, file, parameter) for a plot's text, shown as it is: ``$`` never
    starts maths (mathtext), control characters (a newline) show as escapes (``\\n``), and a
    leading ``_`` does not hide it from the legend."""
    shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text)).replace("$", r"\$")
    return " " + shown if shown.startswith("_") else shown


def _new(width: float, height: float, **kw):
    import matplotlib
    from matplotlib.figure import Figure as MplFigure

    with matplotlib.rc_context(STYLE):
        fig = MplFigure(figsize=(width, height), layout="constrained", **kw)
    return fig


def _styled(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function inside the report style."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def render(fig, name: str, *, fmt: str = "svg", caption: str = "", alt: str = "",
           width: int | None = None, dpi: int = 110) -> Figure:  # fmt: skip
    """A matplotlib figure -> :class:`Figure` (``fmt`` svg or png)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        if fmt == "svg":
            fig.savefig(buf, format="svg", metadata={"Date": None})
            mime = "image/svg+xml"
        else:
            fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
            mime = "image/png"
    if width is None:
        width = int(round(fig.get_figwidth() * 96))  # CSS pixels at the figure's size
    return Figure(name, buf.getvalue(), mime, caption=caption, alt=alt or caption, width=width)


def _pct_axis(axis) -> None:
    from matplotlib.ticker import PercentFormatter

    # decimals=None: as many decimals as the axis range needs (no "90%, 90%, 90%" ticks).
    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))


# ----------------------------------------------------------------------------- curves


def _col(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    ep = np.array([r.get("epoch") for r in history], dtype=float)
    v = np.array([np.nan if r.get(key) is None else r[key] for r in history], dtype=float)
    ok = ~np.isnan(v) & ~np.isnan(ep)
    return ep[ok], v[ok]


@_styled
def training_curves(runs: Sequence[RunData], name: str = "curves") -> Figure | None:
    """Loss (train solid, validation dashed), validation mean accuracy and validation strict
    accuracy per epoch; one colour per run."""
    runs = [r for r in runs if r.history]
    if not runs:
        return None
    fig = _new(10.0, 3.1)
    ax_loss, ax_acc, ax_strict = fig.subplots(1, 3)
    multi = len(runs) > 1
    for i, run in enumerate(runs):
        c = PALETTE[i % len(PALETTE)]
        for key, style, what in (("train_loss", "-", "train"), ("val_loss", "--", "validation")):
            ep, v = _col(run.history, key)
            if len(v):
                ax_loss.plot(ep, v, style, color=c, marker="o", ms=3, lw=1.6,
                             label=f"{label(run.name)} {what}" if multi else what)  # fmt: skip
        for ax, key in ((ax_acc, "val_mean_accuracy"), (ax_strict, "val_strict_accuracy")):
            ep, v = _col(run.history, key)
            if len(v):
                ax.plot(ep, v, color=c, marker="o", ms=3, lw=1.6, label=label(run.name))
        best = run.best_epoch
        if best is not None:
            ep, v = _col(run.history, "val_mean_accuracy")
            hit = v[ep == best]
            if len(hit):
                ax_acc.plot([best], [hit[0]], marker="*", ms=12, color=c, mec="white", mew=0.8,
                            ls="none", zorder=5)  # fmt: skip
    ax_loss.set_title("Loss")
    ax_acc.set_title("Validation mean accuracy (star = best)")
    ax_strict.set_title("Validation strict accuracy")
    for ax in (ax_loss, ax_acc, ax_strict):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_acc, ax_strict):
        _pct_axis(ax.yaxis)
    ax_loss.legend(loc="best", fontsize=7)
    if multi:
        ax_acc.legend(loc="best", fontsize=7)
    return render(fig, name, caption="Training curves: loss; validation mean accuracy; and "
                  "validation strict accuracy (images with every attribute right), per "
                  "epoch, at threshold 0.5.")  # fmt: skip


# ----------------------------------------------------------------------------- attributes


@_styled
def accuracy_bars(rows: Sequence[AttributeRow], name: str = "accuracy") -> Figure | None:
    """Per-attribute accuracy (bar), majority baseline (tick) and balanced accuracy (dot),
    smallest lift over the baseline first."""
    rows = [r for r in rows if r.lift_accuracy is not None]
    if not rows:
        return None
    at_half = any(r.accuracy_half is not None for r in rows)
    rows = sorted(rows, key=lambda r: r.lift if r.lift is not None else 0.0)
    n = len(rows)
    fig = _new(7.6, 0.9 + 0.2 * n)
    ax = fig.subplots()
    y = np.arange(n)[::-1]  # first row at the top
    acc = np.array([r.lift_accuracy for r in rows])
    maj = np.array([np.nan if r.majority is None else r.majority for r in rows])
    bal = np.array([np.nan if r.balanced is None else r.balanced for r in rows])
    lift = acc - maj
    colours = [GOOD if (np.isnan(d) or d >= 0.02) else ("#F9A825" if d >= 0 else BAD)
               for d in lift]  # fmt: skip
    low = np.nanmin(np.concatenate([acc, maj, bal])) if n else 0.5
    x0 = max(0.0, np.floor((low - 0.03) * 20) / 20)
    ax.barh(y, acc - x0, left=x0, height=0.68, color=colours, alpha=0.85,
            label="accuracy at 0.5" if at_half else "accuracy")  # fmt: skip
    ax.scatter(maj, y, marker="|", s=140, color="#222222", lw=2, zorder=4,
               label="majority baseline")  # fmt: skip
    ax.scatter(bal, y, marker="D", s=14, color="white", edgecolor="#333333", lw=0.8, zorder=5,
               label="balanced accuracy (tuned)" if at_half else "balanced accuracy")  # fmt: skip
    for yi, d in zip(y, lift, strict=True):
        if not np.isnan(d):
            ax.text(1.005, yi, f"{100 * d:+.1f}", va="center", ha="left", fontsize=7.5,
                    color=GOOD if d >= 0.02 else (BAD if d < 0 else "#8D6E00"),
                    transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_yticks(y, [label(r.name) for r in rows])
    ax.tick_params(axis="y", length=0, labelsize=8)
    ax.set_xlim(x0, 1.0)
    ax.set_ylim(-0.7, n - 0.3)
    _pct_axis(ax.xaxis)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("accuracy (points of lift over the baseline at right)")
    fig.legend(loc="outside upper left", ncols=3, fontsize=7.5)
    how = (
        " Bars use a plain 0.5 threshold: the run's tuned thresholds trade accuracy on rare "
        "attributes for finding their positives, which the diamonds show."
        if at_half
        else ""
    )
    return render(
        fig,
        name,
        caption="Per-attribute accuracy (bars; green = clearly above the baseline, amber = "
        "barely, red = below), the majority baseline (black tick) and balanced accuracy "
        "(diamond). Smallest lift first: the attributes at the top are the ones the model "
        "has learned least." + how,
    )


# ----------------------------------------------------------------------------- calibration


@_styled
def reliability_plot(rel: Reliability, name: str = "reliability") -> Figure:
    """Reliability curve (fraction positive vs mean probability per bin) over a histogram."""
    fig = _new(4.4, 4.0)
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ok = rel.counts > 0
    ax.plot([0, 1], [0, 1], ls=":", color=MUTED, lw=1, label="perfect calibration")
    ax.plot(rel.mean_prob[ok], rel.frac_pos[ok], marker="o", ms=4, color=NEUTRAL, lw=1.8,
            label=f"model (ECE {100 * rel.ece:.1f}%)")  # fmt: skip
    ax.set_ylabel("fraction of labels positive")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Calibration (all attributes pooled)")
    ax.legend(loc="upper left")
    bins = len(rel.counts)
    edges = np.linspace(0, 1, bins + 1)
    hist.bar(edges[:-1], np.maximum(rel.counts, 0), width=1 / bins, align="edge", color=NEUTRAL,
             alpha=0.6, edgecolor="white")  # fmt: skip
    if (rel.counts > 0).any():
        from matplotlib.ticker import LogLocator, NullFormatter

        hist.set_yscale("log")
        hist.yaxis.set_major_locator(LogLocator(numticks=4))
        hist.yaxis.set_minor_formatter(NullFormatter())
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("labels")
    hist.set_xlim(0, 1)
    return render(fig, name, caption="Reliability curve: when the model says 80%, about 80% "
                  "of those labels should be positive. Below: how many predictions fall in "
                  "each probability bin.")  # fmt: skip


@_styled
def threshold_plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], name: str = "thresholds"
) -> Figure | None:
    """Balanced accuracy vs decision threshold for a few attributes, tuned threshold marked.

    ``curves``: attribute -> (grid ``[G]``, balanced accuracy ``[G]``, threshold used).
    """
    if not curves:
        return None
    fig = _new(4.8, 4.0)
    ax = fig.subplots()
    for i, (attr, (grid, values, thr)) in enumerate(curves.items()):
        c = PALETTE[i % len(PALETTE)]
        ax.plot(grid, values, color=c, lw=1.6, label=label(attr))
        at = float(np.interp(thr, grid, values))
        ax.plot([thr], [at], marker="o", ms=6, color=c, mec="white", mew=1, zorder=4)
    ax.axvline(0.5, color=MUTED, ls=":", lw=1)
    ax.set_xlabel("decision threshold")
    ax.set_ylabel("balanced accuracy")
    ax.set_xlim(0, 1)
    _pct_axis(ax.yaxis)
    ax.set_title("Threshold choice (hardest attributes)")
    ax.legend(loc="lower center", fontsize=7.5)
    return render(fig, name, caption="Balanced accuracy as the decision threshold moves, for "
                  "the hardest attributes; dots mark the thresholds used (tuned on validation "
                  "data), the dotted line is 0.5.")  # fmt: skip


# ----------------------------------------------------------------------------- subgroups


@_styled
def subgroup_plot(result: SubgroupResult, k: int = 14, name: str = "subgroup") -> Figure | None:
    """Dumbbell chart: accuracy on each side of the group, the ``k`` largest gaps."""
    rows = result.by_gap()[:k]
    if not rows:
        return None
    rows = rows[::-1]  # largest gap at the top
    n = len(rows)
    fig = _new(5.0, 0.9 + 0.24 * n)
    ax = fig.subplots()
    y = np.arange(n)
    a_yes = np.array([r.acc_yes for r in rows])
    a_no = np.array([r.acc_no for r in rows])
    m_yes = np.array([r.majority_yes for r in rows], dtype=float)
    m_no = np.array([r.majority_no for r in rows], dtype=float)
    c_yes, c_no = PALETTE[0], PALETTE[1]
    # Each side's majority-answer accuracy: how much of the gap the base rates explain.
    ax.scatter(m_yes, y + 0.22, marker="v", s=16, color=c_yes, alpha=0.55, zorder=3, lw=0)
    ax.scatter(m_no, y + 0.22, marker="v", s=16, color=c_no, alpha=0.55, zorder=3, lw=0)
    for yi, r in zip(y, rows, strict=True):
        ax.plot([r.acc_yes, r.acc_no], [yi, yi], color=BAD if r.flagged else "#BBBBBB",
                lw=2.2 if r.flagged else 1.4, zorder=2)  # fmt: skip
    ax.scatter(a_yes, y, s=30, color=c_yes, zorder=3, label=label(result.label_yes))
    ax.scatter(a_no, y, s=30, color=c_no, zorder=3, label=label(result.label_no))
    labels = [("! " if r.flagged else "") + label(r.attribute) for r in rows]
    ax.set_yticks(y, labels)
    for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
        if r.flagged:
            tick.set_color(BAD)
            tick.set_fontweight("bold")
    ax.tick_params(axis="y", length=0, labelsize=8)
    _pct_axis(ax.xaxis)
    ax.grid(axis="y", visible=False)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"accuracy by {label(result.group)}")
    fig.legend(loc="outside upper left", ncols=2)
    yes, no = literal(result.label_yes), literal(result.label_no)
    return render(fig, name, caption=f"Per-attribute accuracy on {yes} vs {no} images (dots), "
                  f"and each side's majority-answer accuracy "
                  f"(small triangles). Largest gaps beyond base rates first; red = "
                  f"{100 * result.gap_threshold:.0f}+ points.")  # fmt: skip


# ----------------------------------------------------------------------------- correlations


@_styled
def correlation_plot(
    attributes: Sequence[str], label_corr: np.ndarray, pred_corr: np.ndarray,
    name: str = "correlation",
) -> Figure:  # fmt: skip
    """Label and prediction correlation matrices side by side (PNG: 2 x A^2 cells), the
    attributes in :func:`faceattr.attributes.display_order` (as ``data stats --plot``)."""
    from faceattr.attributes import display_order

    names = list(attributes)
    attributes = display_order(names)
    at = [names.index(a) for a in attributes]
    label_corr, pred_corr = label_corr[np.ix_(at, at)], pred_corr[np.ix_(at, at)]
    n = len(attributes)
    side = min(6.2, max(3.2, 0.14 * n + 1.2))
    fig = _new(2 * side + 0.9, side + 0.4)
    axes = fig.subplots(1, 2)
    im = None
    panels = ((axes[0], label_corr, "Labels"), (axes[1], pred_corr, "Predicted probabilities"))
    for ax, mat, title in panels:
        masked = np.ma.masked_invalid(mat)
        im = ax.imshow(masked, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title)
        fs = 6 if n > 20 else 8
        shown = [label(a) for a in attributes]
        ax.set_xticks(range(n), shown, rotation=90, fontsize=fs)
        ax.set_yticks(range(n), shown if ax is axes[0] else [""] * n, fontsize=fs)
        ax.tick_params(length=0)
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.7, label="correlation")
    return render(fig, name, fmt="png", dpi=130,
                  caption="Correlation between attributes in the labels (left) and in the "
                  "model's predicted probabilities (right). Where the right is darker than the "
                  "left, the model ties two attributes together more than the data "
                  "does.")  # fmt: skip


# ----------------------------------------------------------------------------- Grad-CAM


@_styled
def gradcam_grid(
    images: np.ndarray,
    maps: np.ndarray,
    attributes: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    titles: Sequence[str],
    name: str = "gradcam",
) -> Figure:
    """Rows of [input crop, heat map per attribute].

    images ``[B, S, S, 3]`` uint8 (what the model saw), maps ``[B, K, S, S]`` in [0, 1],
    probs/labels ``[B, K]`` (label NaN = unknown), titles ``[B]``.
    """
    from matplotlib import colormaps

    b, k = maps.shape[:2]
    cmap = colormaps["jet"]
    cell = 1.8
    fig = _new(cell * (k + 1), cell * b + 0.25)
    axes = np.atleast_2d(fig.subplots(b, k + 1, squeeze=False))
    for i in range(b):
        ax = axes[i, 0]
        ax.imshow(images[i])
        ax.set_title(label(titles[i]), fontsize=7, fontweight="normal")
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(images[i])
            # Opacity follows the heat, so cold regions show the face unchanged; maps for a
            # "no" (probability under one half) are faint: weak evidence, not a decision.
            heat_map = np.clip(maps[i, j], 0, 1)
            overlay = cmap(heat_map)
            overlay[..., 3] = (0.7 if probs[i, j] >= 0.5 else 0.25) * heat_map**0.7
            ax.imshow(overlay)
            lab = labels[i, j]
            truth = "?" if np.isnan(lab) else ("yes" if lab == 1 else "no")
            ax.set_title(f"{label(attributes[j])}\np={probs[i, j]:.2f}  label {truth}", fontsize=7,
                         fontweight="normal")  # fmt: skip
    for ax in axes.flat:
        ax.set_axis_off()
    return render(fig, name, fmt="png", dpi=110,
                  caption="Grad-CAM: the image regions whose features pushed the model towards "
                  "saying yes to each attribute (red = strongest; faint where the model says "
                  "no), on the crop the model sees.")  # fmt: skip


# ----------------------------------------------------------------------------- comparison


@_styled
def delta_plot(comp: Comparison, name: str = "deltas") -> Figure | None:
    """Per-attribute accuracy of each run minus the first run's, sorted by the largest change."""
    ref = 0
    others = [i for i in range(len(comp.runs)) if i != ref]
    attrs = [a for a in comp.attributes if comp.accuracy[a][ref] is not None]
    if not attrs or not others:
        return None
    first = others[0]
    key = {a: (comp.accuracy[a][first] or 0.0) - (comp.accuracy[a][ref] or 0.0) for a in attrs}
    attrs.sort(key=lambda a: key[a])
    n = len(attrs)
    fig = _new(7.0, 1.0 + 0.2 * n)
    ax = fig.subplots()
    y = np.arange(n)
    h = 0.8 / len(others)
    for k, i in enumerate(others):
        # attrs all have a reference accuracy; NaN where run i has none
        d = np.array([
            np.nan if (acc := comp.accuracy[a][i]) is None else acc - (comp.accuracy[a][ref] or 0.0)
            for a in attrs
        ])  # fmt: skip
        offs = (k - (len(others) - 1) / 2) * h
        colours: str | list[str]
        if len(others) == 1:
            colours = [GOOD if v >= 0 else BAD for v in np.nan_to_num(d)]
        else:
            colours = PALETTE[i % len(PALETTE)]
        ax.barh(y + offs, 100 * d, height=h * 0.9, color=colours, alpha=0.85,
                label=label(comp.runs[i].name))  # fmt: skip
    ax.axvline(0, color="#333333", lw=0.8)
    ax.set_yticks(y, [label(a) for a in attrs])
    ax.tick_params(axis="y", length=0, labelsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="y", visible=False)
    ref_name = label(comp.runs[ref].name)
    ax.set_xlabel(f"{comp.accuracy_label} change vs {ref_name} (points)")
    ax.set_title(f"Per-attribute {comp.accuracy_label}, change vs {ref_name}", loc="left")
    if len(others) > 1:
        ax.legend(loc="lower right")
    return render(fig, name, caption=f"{comp.accuracy_label.capitalize()} of each attribute "
                  f"minus the same in {literal(comp.runs[ref].name)} (green = better, red = "
                  "worse).")  # fmt: skip
