"""Training from a prepared cache: finding the one that matches a run, batches out of it.

:func:`find_cache` trusts a cache only while every source image keeps the size and mtime
recorded at prepare time, and says in one line why a cache is not used; :class:`CachedBatches`
yields the same batches as the JPEG ``DataLoader``, from the memory-mapped pixels.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceattr.config import CACHE_MODES, DataConfig
from faceattr.data.cache.store import (
    MANIFEST,
    PreparedCache,
    cache_base,
    cache_key,
    image_dir_entry,
    norm_crop,
    open_cache,
    stat_sources,
)
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError, command

if TYPE_CHECKING:
    from faceattr.data.dataset import Batch


def _describe_siblings(base: Path, dataset: str, want: str, crop: Sequence[float]) -> str:
    """What other caches of ``dataset`` exist in ``base`` (to say why none matched)."""
    found: list[str] = []
    crop = list(norm_crop(crop))
    with contextlib.suppress(OSError):
        for d in sorted(base.iterdir()):
            if not d.name.startswith(f"{dataset}-") or d.name == want:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                m = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
                found.append(f"{m['img_size']} px" + ("" if m["crop"] == crop else " (other crop)"))
    return "; caches exist for " + ", ".join(found) if found else ""


@dataclass
class CacheLookup:
    """Outcome of :func:`find_cache`: the cache and the rows of the table in it, or why not."""

    cache: PreparedCache | None
    rows: np.ndarray | None  # [M] cache row of each table row
    message: str  # one line for the run's log ("" when nothing is worth saying)


def _prepare_hint(data: DataConfig, img_size: int) -> str:
    return command(
        "`faceattr data prepare {dataset} --root {root} --img-size {img_size}`",
        dataset=data.dataset,
        root=data.root,
        img_size=img_size,
    )


def find_cache(
    table: AttributeTable,
    data: DataConfig,
    *,
    img_size: int,
    crop: Sequence[float],
    cache_dir: str | os.PathLike | None = None,
) -> CacheLookup:
    """The cache that holds ``table``'s images preprocessed as asked, if there is an
    up-to-date one (``data.cache == "auto"``). Each table row's source file must still have
    the size and modification time recorded at prepare time."""
    if data.cache not in CACHE_MODES:
        raise UsageError(
            f"Unknown cache setting {data.cache!r}.", f"Use one of: {', '.join(CACHE_MODES)}."
        )
    if data.cache == "off" or not data.root:
        return CacheLookup(None, None, "")
    from faceattr.data import table_boxes

    if table_boxes(table) is not None:  # per-face crops (WFLW): rows are faces, not files
        return CacheLookup(None, None, "")
    splits = "/".join(s for s in SPLITS if s in set(table.frame["split"]))
    what = f"Data ({splits or 'images'}, {len(table):,} images)"
    jpeg = "decoding image files"
    base = cache_base(data, cache_dir)
    key = cache_key(data, img_size, crop)
    path = base / key
    if not (path / MANIFEST).is_file():
        others = _describe_siblings(base, data.dataset, key, crop)
        return CacheLookup(
            None,
            None,
            f"{what}: no prepared cache for {img_size} px{others}; {jpeg} "
            f"({_prepare_hint(data, img_size)} makes epochs faster).",
        )
    try:
        cache = open_cache(path)
    except DataError as exc:
        return CacheLookup(None, None, f"{what}: prepared cache not used ({exc.message}); {jpeg}.")
    if cache.img_size != img_size or norm_crop(cache.crop) != norm_crop(crop):
        return CacheLookup(
            None,
            None,
            f"{what}: the cache at {path} holds {cache.img_size} px crop {cache.crop}, this run "
            f"needs {img_size} px crop {tuple(crop)}; {jpeg}.",
        )
    root = Path(data.root).expanduser()
    if cache.manifest.get("image_dir") != image_dir_entry(table.image_dir, root):
        return CacheLookup(
            None,
            None,
            f"{what}: the cache at {path} was made from {cache.manifest.get('image_dir')}, not "
            f"{table.image_dir}; {jpeg}.",
        )
    names = table.frame["image"].to_numpy(dtype=object).astype(str)
    rows = cache.rows_of(names)
    absent = rows < 0
    rebuild = f"rebuild it with {_prepare_hint(data, img_size)}"
    if absent.any():
        return CacheLookup(
            None,
            None,
            f"{what}: the prepared cache is stale: {int(absent.sum()):,} image(s) are not in it "
            f"(e.g. {names[absent][0]}, added since it was prepared); {jpeg}; {rebuild}.",
        )
    sizes, mtimes = stat_sources([table.image_dir / n for n in names])
    changed = (sizes != cache.sizes[rows]) | (mtimes != cache.mtimes[rows])
    if changed.any():
        gone = changed & (sizes < 0)
        how = "missing" if gone.all() else "changed or missing" if gone.any() else "changed"
        return CacheLookup(
            None,
            None,
            f"{what}: the prepared cache is stale: {int(changed.sum()):,} image file(s) "
            f"{how} since it was prepared (e.g. {names[changed][0]}); {jpeg}; {rebuild}.",
        )
    n_failed = int(cache.failed[rows].sum())
    failed = f"; {n_failed:,} that failed to decode at prepare time are skipped" if n_failed else ""
    return CacheLookup(
        cache, rows, f"{what}: reading the prepared cache {path} ({img_size} px){failed}."
    )


class CachedBatches:
    """Batches of ``table`` read from a prepared cache, in the main process.

    Iterating yields :class:`~faceattr.data.dataset.Batch` exactly like the JPEG
    ``DataLoader`` of :func:`faceattr.engine.data.make_batches` with the same ``generator``:
    same order, same pixels. Rows that failed to decode at prepare time are dropped from
    their batch and listed in ``Batch.skipped``. Re-iterable (one shuffle per pass).
    """

    def __init__(
        self,
        cache: PreparedCache,
        rows: np.ndarray,
        table: AttributeTable,
        *,
        batch_size: int,
        shuffle: bool = False,
        generator: Any = None,
        drop_last: bool = False,
        pin_memory: bool = False,
        order: Any = None,
    ) -> None:
        import torch

        if len(rows) != len(table):
            raise ValueError(f"{len(rows)} cache rows for a table of {len(table)} images")
        self.images = cache.images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.bad = cache.failed[self.rows]
        self.labels = torch.from_numpy(np.ascontiguousarray(table.labels, dtype=np.float32))
        self.image_dir = table.image_dir
        self.names = table.frame["image"].to_numpy(dtype=object)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        # Explicit table rows (one rank's share of an epoch) instead of shuffle.
        self.order = None if order is None else np.asarray(order, dtype=np.int64)

    def __len__(self) -> int:
        n = len(self.rows) if self.order is None else len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> Iterator[list[int]]:
        import torch

        if self.order is not None:
            n = len(self) * self.batch_size if self.drop_last else len(self.order)
            rows = self.order[:n].tolist()
            return iter([rows[i : i + self.batch_size] for i in range(0, n, self.batch_size)])
        from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

        n = len(self.rows)
        sampler: Sampler[int]
        if self.shuffle:
            # A DataLoader draws one number from its generator (its workers' base seed) before
            # sampling; drawing it too keeps the order identical to the JPEG path.
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            sampler = RandomSampler(range(n), generator=self.generator)
        else:
            sampler = SequentialSampler(range(n))
        return iter(BatchSampler(sampler, self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[Batch]:
        import torch

        from faceattr.data.dataset import Batch

        s = self.images.shape[-1]
        for order_rows in self._order():
            idx = np.asarray(order_rows, dtype=np.int64)
            bad = self.bad[idx]
            good = idx[~bad]
            skipped = [str(self.image_dir / self.names[i]) for i in idx[bad]]
            src = self.rows[good]
            # Read in file order (sequential on disk), then put rows back in batch order.
            order = np.argsort(src, kind="stable")
            pixels = np.empty((len(good), 3, s, s), dtype=np.uint8)
            pixels[order] = self.images[src[order]]
            batch = Batch(
                images=torch.from_numpy(pixels),
                targets=self.labels[torch.from_numpy(good)],
                index=torch.from_numpy(good),
                skipped=skipped,
            )
            yield batch.pin_memory() if self.pin_memory and len(good) else batch
