"""`AttributeTable`: the index of a labelled image set (paths, splits, labels), no pixels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


@dataclass
class AttributeTable:
    """A labelled image set.

    ``frame`` has one row per image and the columns ``image`` (path relative to
    ``image_dir``, str), ``split`` (``"train"``, ``"valid"`` or ``"test"``) and ``identity``
    (pandas ``Int64``, ``<NA>`` when unknown). ``labels`` is ``[N, A]`` float32 in {0, 1}
    with NaN for an unknown label; column ``j`` is ``attributes[j]``. ``notes`` collects
    remarks for the user (e.g. how a validation split was carved).
    """

    image_dir: Path
    frame: pd.DataFrame
    labels: np.ndarray
    attributes: list[str]
    dataset: str = "celeba"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.frame), len(self.attributes)):
            raise ValueError(
                f"labels shape {self.labels.shape} does not match "
                f"{len(self.frame)} images x {len(self.attributes)} attributes"
            )

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def paths(self) -> list[Path]:
        return [self.image_dir / name for name in self.frame["image"]]

    def subset(self, index: np.ndarray | list[int]) -> AttributeTable:
        """Rows by boolean mask or integer positions."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return replace(
            self,
            frame=self.frame.iloc[index].reset_index(drop=True),
            labels=self.labels[index],
            notes=list(self.notes),
        )

    def identity_groups(self, rows: np.ndarray | None = None) -> np.ndarray | None:
        """``[N]`` group numbers of ``rows`` (default: all) for cross-validation that keeps
        a person's images together: the identity, or a number of its own for an image whose
        identity is unknown; None when no identity is known at all."""
        ids = self.frame["identity"].to_numpy(dtype=np.float64, na_value=np.nan)
        if rows is not None:
            ids = ids[np.asarray(rows)]
        unknown = np.isnan(ids)
        if unknown.all():
            return None
        top = np.nanmax(ids)
        return np.where(unknown, top + 1 + np.arange(len(ids)), ids)

    def select_attributes(self, names: list[str]) -> AttributeTable:
        """Keep only ``names`` (must be exact names from ``attributes``), in that order."""
        cols = [self.attributes.index(n) for n in names]
        return replace(
            self, labels=self.labels[:, cols], attributes=list(names), notes=list(self.notes)
        )

    def positive_rates(self) -> np.ndarray:
        """``[A]`` fraction of positives among known labels (NaN where none is known)."""
        known = ~np.isnan(self.labels)
        pos = np.nansum(self.labels, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (pos / known.sum(axis=0)).astype(np.float64)

    def split_counts(self) -> dict[str, int]:
        counts = self.frame["split"].value_counts()
        return {s: int(counts.get(s, 0)) for s in SPLITS}
