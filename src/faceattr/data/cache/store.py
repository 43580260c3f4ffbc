"""What a prepared cache is and where it lives: the format, the folder, opening one.

A cache folder ``<base>/<key>/`` holds ``images.npy``, ``labels.npy``, ``index.npz`` and
``manifest.json`` (see :mod:`faceattr.data.cache`); :func:`cache_path` says where the cache
of a dataset at a size and crop is, :func:`open_cache` opens a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import DataConfig
from faceattr.errors import DataError, UsageError

FORMAT_VERSION = 1
CACHE_DIRNAME = ".faceattr-cache"
CACHE_ENV = "FACEATTR_CACHE_DIR"  # put caches here instead of inside each dataset folder
MANIFEST = "manifest.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
INDEX = "index.npz"


# ----------------------------------------------------------------------------- locations


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:n]


def norm_crop(crop: Sequence[float]) -> tuple[float, ...]:
    # Rounded so that a crop read back from JSON (model files, manifests) finds the same cache.
    return tuple(round(float(c), 6) for c in crop)


def cache_base(data: DataConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the caches of ``data.root``.

    ``ROOT/.faceattr-cache`` by default (moves with the dataset); under ``cache_dir`` or
    ``$FACEATTR_CACHE_DIR`` when set (e.g. for a read-only dataset), in a subfolder per root.
    """
    if not data.root:
        raise UsageError("No dataset folder given.", "Pass `root=DIR`.")
    root = Path(data.root).expanduser()
    base = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    if base is None:
        return root / CACHE_DIRNAME
    resolved = root.resolve()
    return Path(base).expanduser() / f"{resolved.name}-{_short_hash(str(resolved))}"


def cache_key(data: DataConfig, img_size: int, crop: Sequence[float]) -> str:
    """Folder name of the cache of ``data`` at ``img_size`` px with ``crop``."""
    labels = str(Path(data.labels).expanduser().resolve()) if data.labels else None
    settings = {
        "dataset": data.dataset,
        "img_size": int(img_size),
        "crop": list(norm_crop(crop)),
        "labels": labels,
    }
    return f"{data.dataset}-{int(img_size)}px-{_short_hash(json.dumps(settings, sort_keys=True))}"


def cache_path(
    data: DataConfig,
    img_size: int | None = None,
    crop: Sequence[float] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the cache of ``data`` (at ``img_size``/``crop``, default: ``data``'s) lives."""
    size = data.img_size if img_size is None else img_size
    return cache_base(data, cache_dir) / cache_key(data, size, crop_of(data, crop))


def crop_of(data: DataConfig, crop: Sequence[float] | None) -> Sequence[float]:
    """``crop``, else ``data``'s (which :class:`DataConfig` fills in on construction)."""
    if crop is not None:
        return crop
    assert data.crop is not None, "DataConfig sets its crop in __post_init__"
    return data.crop


# ----------------------------------------------------------------------------- source files


def stat_sources(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """``(size [N], mtime_ns [N])`` int64 of each file; -1 for a file that cannot be stat'ed."""
    sizes = np.full(len(paths), -1, dtype=np.int64)
    mtimes = np.full(len(paths), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def fingerprint(names: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(map(str, names)).encode())
    h.update(np.ascontiguousarray(sizes, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(mtimes, dtype="<i8").tobytes())
    return h.hexdigest()


def image_dir_entry(image_dir: Path, root: Path) -> str:
    """``image_dir`` relative to ``root`` when inside it (a moved dataset keeps its cache)."""
    try:
        return Path(image_dir).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(Path(image_dir).resolve())


# ----------------------------------------------------------------------------- reading


@dataclass
class PreparedCache:
    """An opened, complete cache. ``images`` is a read-only memmap, uint8 ``[N, 3, S, S]``."""

    path: Path
    manifest: dict[str, Any]
    images: np.ndarray
    names: np.ndarray  # [N] str, image names relative to the image folder
    sizes: np.ndarray  # [N] int64, source file sizes at prepare time
    mtimes: np.ndarray  # [N] int64, source mtimes (ns) at prepare time
    failed: np.ndarray  # [N] bool, rows that could not be decoded (pixels are zeros)

    @property
    def img_size(self) -> int:
        return int(self.manifest["img_size"])

    @property
    def crop(self) -> tuple[float, ...]:
        return tuple(self.manifest["crop"])

    def __len__(self) -> int:
        return len(self.names)

    def rows_of(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """Cache rows of image ``names`` ([M] int64, -1 for a name the cache does not hold)."""
        import pandas as pd

        return pd.Index(self.names).get_indexer(np.asarray(names, dtype=object).astype(str))

    def labels(self) -> np.ndarray:
        """``[N, A]`` float32 labels stored at prepare time (NaN = unknown)."""
        return np.load(self.path / LABELS)


def open_cache(path: str | os.PathLike) -> PreparedCache:
    """Open the cache folder ``path``; :class:`DataError` when it is missing or incomplete."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise DataError(
            f"{path} is not a prepared cache (no {MANIFEST}).",
            "Build one with `faceattr data prepare DATASET --root DIR --img-size N`.",
        )
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read the cache manifest {manifest_file}: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION or not manifest.get("complete"):
        raise DataError(
            f"The cache at {path} is incomplete or from an incompatible version "
            f"(format {manifest.get('format')!r}, this faceattr reads {FORMAT_VERSION}).",
            "Rebuild it with `faceattr data prepare`.",
        )
    try:
        images = np.load(path / IMAGES, mmap_mode="r")
        with np.load(path / INDEX) as index:
            names = index["image"]
            sizes, mtimes, failed = index["size"], index["mtime_ns"], index["failed"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"The cache at {path} is damaged ({exc}).", "Rebuild it with `faceattr data prepare`."
        ) from None
    s = int(manifest["img_size"])
    if images.dtype != np.uint8 or images.shape != (len(names), 3, s, s):
        raise DataError(
            f"The cache at {path} is damaged: images.npy is {images.dtype} {images.shape}, "
            f"expected uint8 {(len(names), 3, s, s)}.",
            "Rebuild it with `faceattr data prepare --force`.",
        )
    return PreparedCache(path, manifest, images, names, sizes, mtimes, failed.astype(bool))
