"""Torch datasets over an :class:`AttributeTable`: decode + preprocess, nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from faceattr.data import table_boxes
from faceattr.data.images import load_image
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import Preprocessing
from faceattr.errors import ImageReadError


@dataclass
class Batch:
    """A collated batch. ``images`` uint8 ``[B, 3, S, S]``; ``targets`` float ``[B, A]`` with
    NaN for unknown labels; ``index`` rows of the table; ``skipped`` unreadable files dropped."""

    images: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    skipped: list[str]

    def __len__(self) -> int:
        return int(self.index.numel())

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) for CUDA copies
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.index, self.skipped)


# What ImageDataset yields per row: (pixels [3, S, S] uint8, targets [A], row), or
# (None, path, row) for an unreadable file.
Item = tuple[torch.Tensor, torch.Tensor, int] | tuple[None, str, int]


class ImageDataset(Dataset[Item]):
    """Decodes images of ``table`` and preprocesses them to uint8 ``[3, S, S]``.

    An unreadable image yields ``None`` (with its path) so that a corrupt file in a large
    dataset costs one sample, not the run; :func:`collate` counts and drops it. When the
    table has per-row boxes (:data:`faceattr.data.BOX_COLUMNS`, e.g. WFLW faces), each box is
    cut out first and ``crop`` applies to that cut-out (:meth:`Preprocessing.pixels`).
    """

    def __init__(self, table: AttributeTable, img_size: int, crop: Sequence[float]) -> None:
        self.paths = [str(p) for p in table.paths]
        self.labels = torch.from_numpy(np.ascontiguousarray(table.labels, dtype=np.float32))
        # Only the pixel steps are used here; normalisation runs batched on the device.
        self.preprocessing = Preprocessing(img_size, tuple(crop))
        self.boxes = table_boxes(table)  # [N, 4] or None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            image = load_image(self.paths[i])
        except ImageReadError:
            return (None, self.paths[i], i)
        box = None if self.boxes is None else self.boxes[i]
        return (torch.from_numpy(self.preprocessing.pixels(image, box)), self.labels[i], i)


def collate(items: list[Item]) -> Batch:
    good = [it for it in items if it[0] is not None]
    skipped = [it[1] for it in items if it[0] is None]
    if not good:
        return Batch(
            images=torch.empty(0, dtype=torch.uint8),
            targets=torch.empty(0),
            index=torch.empty(0, dtype=torch.long),
            skipped=skipped,
        )
    return Batch(
        images=torch.stack([it[0] for it in good]),
        targets=torch.stack([it[1] for it in good]),
        index=torch.tensor([it[2] for it in good], dtype=torch.long),
        skipped=skipped,
    )
