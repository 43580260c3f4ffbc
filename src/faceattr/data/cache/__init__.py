"""The prepared cache (`faceattr data prepare`): every image decoded, cropped and resized once.

Decoding JPEGs, not the model, bounds a naive CelebA epoch on a CPU. A cache holds the
preprocessed pixels of every image of a dataset (all splits) in one memory-mapped uint8
array, so a training batch is a copy out of the page cache instead of 64 decodes and resizes.

One cache folder, ``<base>/<key>/`` (``<base>`` is ``ROOT/.faceattr-cache`` unless
``$FACEATTR_CACHE_DIR`` points elsewhere; ``<key>`` names the dataset, size and crop)::

    images.npy     uint8 [N, 3, S, S]: preprocess(load_image(path), S, crop), rows in the
                   order of the dataset's AttributeTable (zeros where decoding failed)
    labels.npy     float32 [N, A] in {0, 1}, NaN = unknown (for users loading the arrays)
    index.npz      image [N] (names relative to the image folder), size [N] and mtime_ns [N]
                   of each source file at prepare time, failed [N] bool
    manifest.json  settings, faceattr version, counts, a fingerprint of the file list and the
                   images that failed to decode; ``"complete": true`` marks a usable cache

A cache is built in a temporary sibling folder and renamed into place when complete, so an
interrupted prepare never leaves a folder that looks valid. A cache row is trusted only while
its source file keeps the size and modification time recorded at prepare time.

:mod:`.store` holds the format and locations, :mod:`.lookup` what training reads
(:func:`find_cache`, :class:`CachedBatches`), :mod:`.build` what `data prepare` writes.
"""

from __future__ import annotations

from faceattr.config import CACHE_MODES
from faceattr.data.cache.build import (
    CacheStatus,
    PrepareResult,
    build_cache,
    cache_status,
    prepare_cache,
)
from faceattr.data.cache.lookup import CachedBatches, CacheLookup, find_cache
from faceattr.data.cache.store import (
    CACHE_DIRNAME,
    CACHE_ENV,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    LABELS,
    MANIFEST,
    PreparedCache,
    cache_base,
    cache_key,
    cache_path,
    open_cache,
    stat_sources,
)

__all__ = [
    "CACHE_DIRNAME",
    "CACHE_ENV",
    "CACHE_MODES",
    "FORMAT_VERSION",
    "IMAGES",
    "INDEX",
    "LABELS",
    "MANIFEST",
    "CacheLookup",
    "CacheStatus",
    "CachedBatches",
    "PrepareResult",
    "PreparedCache",
    "build_cache",
    "cache_base",
    "cache_key",
    "cache_path",
    "cache_status",
    "find_cache",
    "open_cache",
    "prepare_cache",
    "stat_sources",
]
