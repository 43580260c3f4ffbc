"""Dataset statistics (`faceattr data stats`): split sizes, positive rates, imbalance and the
attribute correlation matrix, computed from an :class:`AttributeTable` (labels only, no
pixels), so every layout of the same images gives the same numbers.

Correlation is the phi coefficient, i.e. Pearson's r on 0/1 labels, computed per pair of
attributes over the images where both labels are known (unknown labels are NaN).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from faceattr.attributes import display_order
from faceattr.config import DataConfig
from faceattr.data.splits import ensure_validation, resolve_split_name
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError
from faceattr.fileio import Inputs, check_output, input_error, publish
from faceattr.utils import JSON_OPTIONAL, JsonResult

TOP_PAIRS = 10  # strongest positive and negative pairs listed


class LabelCounts(TypedDict):
    positive: int
    negative: int
    unknown: int


class Pair(TypedDict):
    """Two attributes and their phi correlation."""

    a: str
    b: str
    r: float


@dataclass
class DatasetStats(JsonResult):
    """What :func:`dataset_stats` measured: ``faceattr data stats --json`` (docs/formats.md).
    A rate or ratio is None where it is undefined."""

    dataset: str
    split: str  # "all" or the split described
    n_images: int  # rows: faces for WFLW
    n_files: int  # distinct image files
    n_identities: int | None  # None when the layout has no identities
    splits: dict[str, int]  # split -> rows, as train and eval use them (the carve included)
    # Validation rows carved out of train (as train and eval carve them) where the data has no
    # validation split of its own; 0 when it has one.
    valid_carved: int
    attributes: list[str]
    positive_rate: dict[str, float | None]
    imbalance: dict[str, float | None]  # majority / minority count; None: a class is absent
    counts: dict[str, LabelCounts]
    split_positive_rate: dict[str, dict[str, float | None]]  # split -> attribute -> rate
    mean_positives_per_image: float | None
    majority_accuracy: float | None  # of always answering each attribute's majority class
    correlation: dict[str, dict[str, float | None]]  # attribute -> attribute -> phi
    top_pairs: dict[str, list[Pair]]  # "positive" and "negative": the strongest pairs
    plot: str | None = field(default=None, metadata=JSON_OPTIONAL)  # the heatmap, once written
    notes: list[str] = field(default_factory=list)  # the dataset reader's remarks


def _num(value: float) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    return float(value) if math.isfinite(value) else None


def phi_matrix(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise phi coefficients of ``labels`` ``[N, A]`` (0/1, NaN = unknown).

    Returns ``(r [A, A], n [A, A])``: r over the rows where both labels are known (NaN where
    an attribute is constant over those rows), and how many rows that is. Three matrix
    products instead of a loop over pairs, so 200k x 40 labels take a fraction of a second.
    """
    from threadpoolctl import threadpool_limits

    known = (~np.isnan(labels)).astype(np.float64)
    x = np.nan_to_num(labels.astype(np.float64), nan=0.0)  # 0 where unknown
    # One BLAS thread: these tall, thin products take milliseconds on one core, while a
    # multi-threaded BLAS on a busy machine can spin for seconds waiting for its threads.
    with threadpool_limits(limits=1, user_api="blas"):
        n = known.T @ known  # rows where both are known
        sx = x.T @ known  # sum of attribute i where j is known too
        sxy = x.T @ x
    # x is 0/1, so sum(x_i^2) over the pair's rows equals sum(x_i): var_i = n*sx - sx^2
    cov = n * sxy - sx * sx.T
    var_i = n * sx - sx**2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_i * var_i.T)
    r[~np.isfinite(r)] = np.nan
    r = np.clip(r, -1.0, 1.0)
    np.fill_diagonal(r, np.where(np.isnan(np.diag(r)), np.nan, 1.0))
    return r, n.astype(np.int64)


def top_pairs(r: np.ndarray, attributes: list[str], k: int = TOP_PAIRS) -> dict[str, list[Pair]]:
    """The ``k`` most positive and ``k`` most negative pairs (each pair once)."""
    i, j = np.triu_indices(len(attributes), k=1)
    values = r[i, j]
    ok = ~np.isnan(values)
    i, j, values = i[ok], j[ok], values[ok]
    order = np.argsort(values, kind="stable")

    def pick(idx: np.ndarray, sign: int) -> list[Pair]:
        return [
            {"a": attributes[i[t]], "b": attributes[j[t]], "r": round(float(values[t]), 4)}
            for t in idx
            if sign * values[t] > 0
        ]

    return {"positive": pick(order[::-1][:k], 1), "negative": pick(order[:k], -1)}


def dataset_stats(
    table: AttributeTable,
    split: str = "all",
    *,
    top: int = TOP_PAIRS,
    valid_fraction: float | None = DataConfig.valid_fraction,
    split_seed: int = DataConfig.split_seed,
) -> DatasetStats:
    """Statistics of ``table`` (or of one ``split`` of it), with the table's notes.

    The splits are the ones train and eval use: where the data has no validation split, one
    is carved out of train (:func:`~faceattr.data.splits.ensure_validation` with
    ``valid_fraction`` and ``split_seed``, as ``data.valid_fraction`` and ``data.split_seed``
    make it for training), said in ``valid_carved`` and the notes; None: no carve.

    Fields: ``dataset``, ``split``, ``n_images`` (rows: faces for WFLW), ``n_files`` (distinct
    image files), ``n_identities`` (None when the layout has no identities), ``splits``
    (split -> rows), ``attributes``, ``positive_rate`` / ``imbalance`` (majority/minority,
    None when one class is absent) / ``counts`` (positive, negative, unknown) per attribute,
    ``split_positive_rate`` (split -> attribute -> rate), ``mean_positives_per_image``,
    ``majority_accuracy`` (mean accuracy of always answering each attribute's majority
    class), ``correlation`` (attribute -> attribute -> phi) and ``top_pairs`` (the ``top``
    most positive and most negative pairs).
    """
    chosen = resolve_split_name(split)
    before = table.split_counts().get("valid", 0)
    if valid_fraction is not None:
        table = ensure_validation(table, fraction=valid_fraction, seed=split_seed)
    carved = table.split_counts().get("valid", 0) - before
    notes = list(table.notes)
    if chosen != "all":
        rows = table.frame["split"].to_numpy(dtype=object) == chosen
        if not rows.any():
            counts = table.split_counts()
            raise DataError(
                f"The {chosen} split of {table.dataset} has no images (images per split: "
                + ", ".join(f"{s} {n:,}" for s, n in counts.items())
                + ").",
                'Use `split="all"`, or one of the non-empty splits.',
            )
        table = table.subset(rows)
    splits = table.split_counts()
    if len(table) == 0:
        raise DataError(f"The {table.dataset} dataset has no images.")
    attrs = list(table.attributes)
    y = table.labels.astype(np.float64)
    known = ~np.isnan(y)
    pos = np.nansum(y, axis=0)
    n_known = known.sum(axis=0)
    neg = n_known - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = pos / n_known
        imbalance = np.maximum(pos, neg) / np.minimum(pos, neg)
    r, _ = phi_matrix(table.labels)
    split_col = table.frame["split"].to_numpy(dtype=object)
    split_rates: dict[str, dict[str, float | None]] = {}
    for s in SPLITS:
        rows = split_col == s
        if rows.any():
            sub = y[rows]
            with np.errstate(invalid="ignore", divide="ignore"):
                sr = np.nansum(sub, axis=0) / (~np.isnan(sub)).sum(axis=0)
            split_rates[s] = {a: _num(v) for a, v in zip(attrs, sr, strict=True)}
    identity = table.frame["identity"]
    per_image = np.nansum(y, axis=1)
    majority = np.where(np.isnan(rate), np.nan, np.maximum(rate, 1 - rate))
    return DatasetStats(
        dataset=table.dataset,
        split=chosen,
        n_images=len(table),
        n_files=int(table.frame["image"].nunique()),
        n_identities=int(identity.nunique()) if identity.notna().any() else None,
        splits=splits,
        valid_carved=carved,
        attributes=attrs,
        positive_rate={a: _num(v) for a, v in zip(attrs, rate, strict=True)},
        imbalance={a: _num(v) for a, v in zip(attrs, imbalance, strict=True)},
        counts={
            a: {"positive": int(p), "negative": int(q), "unknown": int(len(table) - k)}
            for a, p, q, k in zip(attrs, pos, neg, n_known, strict=True)
        },
        split_positive_rate=split_rates,
        mean_positives_per_image=_num(float(per_image.mean())),
        majority_accuracy=_num(float(np.nanmean(majority)))
        if (~np.isnan(majority)).any()
        else None,
        correlation={
            a: {b: _num(r[i, j]) for j, b in enumerate(attrs)} for i, a in enumerate(attrs)
        },
        top_pairs=top_pairs(r, attrs, k=top),
        notes=notes,
    )


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def check_plot_path(
    path: str | Path, *, overwrite: bool | None = None, inputs: Inputs | None = None
) -> Path:
    """``path`` if its suffix names an image format matplotlib writes, else a UsageError;
    with ``overwrite`` given, also :func:`faceattr.fileio.check_output`'s check."""
    path = Path(path).expanduser()
    if path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise UsageError(
            f"Cannot tell the image format of the plot file {path}.",
            "Give the file a .png (or .pdf, .svg) name.",
        )
    if overwrite is not None:  # through a link: the file it leads to
        path = check_output(path, what="plot", inputs=inputs, overwrite=overwrite)
    return path


def plot_correlation(
    stats: DatasetStats,
    path: str | Path,
    *,
    title: str | None = None,
    overwrite: bool = False,
    inputs: Inputs | None = None,
) -> Path:
    """Draw ``stats.correlation`` as a heatmap image at ``path`` (format from the suffix:
    .png, .pdf, .svg); written atomically. Returns the path. An existing file is replaced
    only with ``overwrite``, one of ``inputs`` never."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    path = check_plot_path(path, overwrite=overwrite, inputs=inputs)
    attrs = display_order(stats.attributes)
    corr = stats.correlation
    m = np.array([[np.nan if corr[a][b] is None else corr[a][b] for b in attrs] for a in attrs])
    n = len(attrs)
    np.fill_diagonal(m, np.nan)  # r = 1 on the diagonal says nothing and flattens the colours
    side = min(max(4.0, 0.3 * n + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")  # grey: undefined r
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-1, vmax=1)
    ax.set_xticks(range(n), attrs, rotation=90, fontsize=8 if n > 12 else 10)
    ax.set_yticks(range(n), attrs, fontsize=8 if n > 12 else 10)
    if n <= 12:  # few attributes: print the values in the cells
        for i in range(n):
            for j in range(n):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(m[i, j]) > 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="phi (Pearson r on 0/1 labels)")
    what = stats.split
    ax.set_title(
        title
        or f"{stats.dataset} attribute correlation ({stats.n_images:,} "
        + ("faces" if stats.n_files != stats.n_images else "images")
        + ("" if what == "all" else f", {what} split")
        + ")"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        if inputs is not None and (source := inputs.find(path)) is not None:
            raise input_error(path, source, "plot")
        publish(tmp, path, overwrite=overwrite, what="plot")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
