"""Text and table cells of a report: percentages, points, durations, counts, heat colours,
and the few sentences several sections share."""

from __future__ import annotations

import math

from faceattr.report.analysis import prefers_half
from faceattr.report.document import Cell
from faceattr.report.load import RunData


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


def num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def pcell(v: float | None, bg: str | None = None) -> Cell:
    """A percentage cell that sorts by its value."""
    return Cell(pct(v), num(v), background=bg)


def ips(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} img/s"


def params(run: RunData) -> str:
    if run.parameters is None:
        return "–"
    text = count(run.parameters)
    if run.trainable_parameters is not None and run.trainable_parameters != run.parameters:
        text += f" ({count(run.trainable_parameters)} trained)"
    return text


def tuned_for(run: RunData) -> str:
    metric = run.config.get("threshold_metric") or "balanced_accuracy"
    return metric.replace("_", " ")


def decision_note(run: RunData) -> str:
    if not prefers_half(run):
        return ""
    return (
        f" Decisions at threshold 0.5, like the headline accuracy (the run's thresholds are "
        f"tuned for {tuned_for(run)})."
    )
