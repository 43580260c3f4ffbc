"""Datasets: readers (files -> :class:`AttributeTable`), splits, decoding, synthetic data.

The formats are registered in :mod:`faceattr.data.registry`; :func:`read_dataset` and
:func:`load_split` are the entry points the engine uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from faceattr.config import DataConfig
from faceattr.data.registry import DATASETS, DatasetSpec, dataset_names, dataset_spec
from faceattr.errors import UsageError

if TYPE_CHECKING:  # importing this package stays light (no numpy, pandas, PIL): the CLI does
    import numpy as np
    from PIL import Image

    from faceattr.data.table import AttributeTable

__all__ = [
    "BOX_COLUMNS",
    "DATASETS",
    "DatasetSpec",
    "cut_box",
    "dataset_names",
    "dataset_spec",
    "load_split",
    "read_dataset",
    "table_boxes",
]

# Optional frame columns of an AttributeTable: a per-row crop box in pixels of the image file
# (left, top, right, bottom; may reach past the image edges). Datasets with several faces per
# image (WFLW) set them; decoding cuts the box out before the model's own crop and resize.
BOX_COLUMNS: tuple[str, str, str, str] = ("box_left", "box_top", "box_right", "box_bottom")


def table_boxes(table: AttributeTable) -> np.ndarray | None:
    """``[N, 4]`` float64 crop boxes of ``table``'s rows, or None when it has none."""
    import numpy as np

    if not all(c in table.frame.columns for c in BOX_COLUMNS):
        return None
    return table.frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)


def cut_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The pixels of ``box`` (left, top, right, bottom) of ``image``; parts of the box outside
    the image are mid-grey (the normalisation mean, so padding reads as "nothing")."""
    from PIL import Image

    from faceattr.data.images import BACKGROUND_RGB

    left, top, right, bottom = (int(round(v)) for v in box)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    if left >= 0 and top >= 0 and right <= image.width and bottom <= image.height:
        return image.crop((left, top, right, bottom))
    canvas = Image.new("RGB", (right - left, bottom - top), BACKGROUND_RGB)
    inside = (max(left, 0), max(top, 0), min(right, image.width), min(bottom, image.height))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
    return canvas


def read_dataset(cfg: DataConfig) -> AttributeTable:
    """Every labelled image of the dataset ``cfg`` points at (all splits, all attributes)."""
    if not cfg.root:
        raise UsageError(
            "No dataset folder given.",
            "Pass `root=DIR` (e.g. `faceattr data fetch synthetic --root data/synthetic` "
            "makes a small one).",
        )
    return dataset_spec(cfg.dataset).read(cfg)


def load_split(
    cfg: DataConfig,
    split: str,
    *,
    sample: int | None = None,
    seed: int = 0,
    attributes: list[str] | None = None,
    table: AttributeTable | None = None,
) -> AttributeTable:
    """One split of the dataset, with a validation split carved out of train when the data
    has none (seeded by ``cfg.split_seed``, so train and eval agree on it). Pass ``table``
    (from :func:`read_dataset`) to take several splits from one read of the files."""
    from faceattr.data.splits import ensure_validation, select_split

    table = read_dataset(cfg) if table is None else table
    table = ensure_validation(table, fraction=cfg.valid_fraction, seed=cfg.split_seed)
    wanted = (
        attributes if attributes is not None else (list(cfg.attributes) if cfg.attributes else None)
    )
    return select_split(table, split, sample=sample, seed=seed, attributes=wanted)
