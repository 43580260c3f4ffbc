"""Batches for the engine: a table + preprocessing settings -> an iterable of :class:`Batch`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from faceattr.config import DataConfig
from faceattr.data.dataset import Batch, ImageDataset, collate
from faceattr.data.table import AttributeTable
from faceattr.progress import Progress
from faceattr.utils import default_workers


def make_batches(
    table: AttributeTable,
    *,
    img_size: int,
    crop: Sequence[float],
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    workers: int | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    data: DataConfig | None = None,
    progress: Progress | None = None,
    order: Sequence[int] | np.ndarray | None = None,
) -> Iterable[Batch]:
    """Batches of ``table``: uint8 images ``[B, 3, S, S]``, targets ``[B, A]``.

    When ``data`` is given and ``data.cache`` is ``"auto"``, an up-to-date `data prepare`
    cache of ``data.root`` at this ``img_size``/``crop`` is read in the main process (same
    pixels and, with the same ``generator``, the same batches as decoding); otherwise image
    files are decoded by ``workers`` processes. ``progress`` gets one line saying whether the
    cache is used, or why not. ``order`` (table rows, e.g. one rank's share of a seeded
    permutation) replaces ``shuffle``: exactly those rows, in that order.
    """
    if data is not None:
        from faceattr.data.cache import CachedBatches, find_cache

        found = find_cache(table, data, img_size=img_size, crop=crop)
        if progress is not None and found.message:
            progress.log(found.message)
        if found.cache is not None and found.rows is not None:
            return CachedBatches(
                found.cache,
                found.rows,
                table,
                batch_size=batch_size,
                shuffle=shuffle,
                generator=generator,
                drop_last=drop_last,
                pin_memory=pin_memory,
                order=order,
            )
    workers = default_workers() if workers is None else workers
    dataset = ImageDataset(table, img_size, crop)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and order is None,
        sampler=None if order is None else [int(i) for i in order],
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
