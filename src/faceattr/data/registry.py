"""The dataset formats faceattr reads, registered in one place.

A :class:`DatasetSpec` says what the rest of faceattr needs to know about a format: how to
read a folder of it into an :class:`~faceattr.data.table.AttributeTable`, the licence its images
carry into trained weights, and where its images live (for the report's gallery). Which part of
each image a model sees by default is a setting's default, so it lives in
:data:`faceattr.config.DATASET_CROPS` (``DatasetSpec.crop`` reads it): this module imports
:mod:`faceattr.config`, never the other way round. To add a format, write its reader and
register a spec in :data:`DATASETS` (and its crop in ``DATASET_CROPS`` unless CelebA's band
fits).

It stays light (``faceattr --help`` lists the formats): readers are imported when a dataset is
read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceattr.config import CELEBA_CROP, DATASET_CROPS, Crop

if TYPE_CHECKING:
    from faceattr.config import DataConfig
    from faceattr.data.table import AttributeTable


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset format (the value of ``--dataset``)."""

    name: str
    summary: str  # one line for --help and error messages
    read: Callable[[DataConfig], AttributeTable]  # every labelled image, all splits
    license: str | None  # recorded in every model trained on it (None: the user's own data)
    # Folders that may hold the images of a dataset folder ROOT (the report's gallery and
    # Grad-CAM look there when the folder saved at evaluation is gone); [] when none is found.
    image_dirs: Callable[[Path], list[Path]]

    @property
    def crop(self) -> Crop:
        """The part of each (face) image a model sees by default, as fractions."""
        return DATASET_CROPS.get(self.name, CELEBA_CROP)


def _found_image_dir(find: Callable[[Path], Any], root: Path) -> list[Path]:
    """``[find(root).image_dir]``, or [] when ``root`` holds no such dataset (any more)."""
    from faceattr.errors import FaceAttrError

    try:
        return [find(root).image_dir]
    except FaceAttrError:
        return []


def _read_celeba(cfg: DataConfig) -> AttributeTable:
    from faceattr.data.celeba import read_celeba

    return read_celeba(Path(cfg.root).expanduser())


def _celeba_images(root: Path) -> list[Path]:
    from faceattr.data.celeba import find_celeba

    return _found_image_dir(find_celeba, root)


def _read_wflw(cfg: DataConfig) -> AttributeTable:
    from faceattr.data.wflw import read_wflw

    return read_wflw(Path(cfg.root).expanduser(), margin=cfg.face_margin)


def _wflw_images(root: Path) -> list[Path]:
    from faceattr.data.wflw import find_wflw

    return _found_image_dir(find_wflw, root)


def _read_csv(cfg: DataConfig) -> AttributeTable:
    from faceattr.data.csvdata import read_csv_dataset

    return read_csv_dataset(Path(cfg.root).expanduser(), cfg.labels)


def _csv_images(root: Path) -> list[Path]:
    return [root] if root.is_dir() else []


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="celeba",
            summary="CelebA in any layout (official, Kaggle, torchvision; also the synthetic set)",
            read=_read_celeba,
            license="Trained on CelebA: non-commercial research purposes only (CelebA agreement).",
            image_dirs=_celeba_images,
        ),
        DatasetSpec(
            name="wflw",
            summary="WFLW: six attribute flags per face, several faces per photo",
            read=_read_wflw,
            license="Trained on WFLW (WIDER Face images): research use; see the WFLW/WIDER terms.",
            image_dirs=_wflw_images,
        ),
        DatasetSpec(
            name="csv",
            summary="your own images: a folder plus a labels CSV file",
            read=_read_csv,
            license=None,
            image_dirs=_csv_images,
        ),
    )
}


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; a UsageError listing the registered ones otherwise."""
    spec = DATASETS.get(name)
    if spec is None:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("dataset", name, tuple(DATASETS))
    return spec
