"""Batches of a table's images as numpy arrays, in table order, for evaluation.

No torch: the light install evaluates ONNX models through this. Images come from an
up-to-date prepared cache (`faceattr data prepare`) when there is one, else they are decoded
and preprocessed by worker threads (Pillow releases the GIL while it decodes and resizes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from faceattr.config import DataConfig
from faceattr.data import table_boxes
from faceattr.data.images import load_image
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import Preprocessing
from faceattr.errors import ImageReadError
from faceattr.progress import Progress
from faceattr.utils import default_workers, ordered_map


@dataclass
class PixelBatch:
    """``images`` uint8 ``[B, 3, S, S]``; ``targets`` float32 ``[B, A]`` (NaN = unknown);
    ``index`` rows of the table; ``skipped`` unreadable files left out of the batch."""

    images: np.ndarray
    targets: np.ndarray
    index: np.ndarray
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.index)


def _batch(table: AttributeTable, rows: list[int], pixels: list[np.ndarray], size: int,
           skipped: list[str]) -> PixelBatch:  # fmt: skip
    index = np.asarray(rows, dtype=np.int64)
    images = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.uint8)
    targets = np.asarray(table.labels[index], dtype=np.float32)
    return PixelBatch(images, targets, index, skipped)


def iter_pixel_batches(
    table: AttributeTable,
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    workers: int | None = None,
    data: DataConfig | None = None,
    progress: Progress | None = None,
) -> Iterator[PixelBatch]:
    """The images of ``table`` preprocessed as ``preprocessing`` says, ``batch_size`` at a
    time, in table order. With ``data`` (``cache="auto"``), a matching prepared cache is read
    instead of the image files; ``progress`` gets one line saying which."""
    size = preprocessing.img_size
    if data is not None:
        from faceattr.data.cache import find_cache

        found = find_cache(table, data, img_size=size, crop=preprocessing.crop)
        if progress is not None and found.message:
            progress.log(found.message)
        if found.cache is not None and found.rows is not None:
            cache, cache_rows = found.cache, np.asarray(found.rows, dtype=np.int64)
            names = table.frame["image"].to_numpy(dtype=object)
            for start in range(0, len(cache_rows), batch_size):
                idx = np.arange(start, min(start + batch_size, len(cache_rows)))
                bad = cache.failed[cache_rows[idx]]
                good = idx[~bad]
                yield PixelBatch(
                    np.ascontiguousarray(cache.images[cache_rows[good]]),
                    np.asarray(table.labels[good], dtype=np.float32),
                    good,
                    [str(table.image_dir / names[i]) for i in idx[bad]],
                )
            return

    paths = [str(p) for p in table.paths]
    boxes = table_boxes(table)

    def decode(i: int) -> np.ndarray | None:
        try:
            image = load_image(paths[i])
        except ImageReadError:
            return None
        return preprocessing.pixels(image, None if boxes is None else boxes[i])

    workers = default_workers() if workers is None else workers
    rows: list[int] = []
    pixels: list[np.ndarray] = []
    skipped: list[str] = []
    for i, px in enumerate(ordered_map(decode, range(len(paths)), workers, 4 * batch_size)):
        if px is None:
            skipped.append(paths[i])
        else:
            rows.append(i)
            pixels.append(px)
        if len(rows) + len(skipped) >= batch_size:
            yield _batch(table, rows, pixels, size, skipped)
            rows, pixels, skipped = [], [], []
    if rows or skipped:
        yield _batch(table, rows, pixels, size, skipped)
