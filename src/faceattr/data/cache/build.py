"""Building a prepared cache (`faceattr data prepare`): decode every image once, in workers.

The arrays are written in a temporary sibling folder that is renamed into place only when
complete (any failure, Ctrl-C included, removes it), so readers see either no cache or a
complete one. :func:`prepare_cache` rebuilds only when :func:`cache_status` finds the cache
stale.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import DataConfig
from faceattr.data.cache.store import (
    CACHE_ENV,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    LABELS,
    MANIFEST,
    cache_path,
    crop_of,
    fingerprint,
    image_dir_entry,
    norm_crop,
    open_cache,
    stat_sources,
)
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError
from faceattr.progress import NullProgress, Progress

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
# Extra free space asked for beyond the arrays themselves (index, manifest, file system slack).
_DISK_MARGIN = 64 * 2**20


@dataclass
class CacheStatus:
    """Whether the cache of a dataset is there and up to date (see :func:`cache_status`)."""

    path: Path
    exists: bool
    up_to_date: bool
    reasons: list[str] = field(default_factory=list)  # why it is stale / unusable


def _status_of(
    path: Path,
    table: AttributeTable,
    root: Path,
    img_size: int,
    crop: Sequence[float],
    sizes: np.ndarray,
    mtimes: np.ndarray,
) -> CacheStatus:
    if not path.exists():
        return CacheStatus(path, False, False, ["no cache yet"])
    try:
        cache = open_cache(path)
    except DataError as exc:
        return CacheStatus(path, True, False, [exc.message])
    reasons = []
    m = cache.manifest
    if int(m["img_size"]) != int(img_size) or norm_crop(m["crop"]) != norm_crop(crop):
        reasons.append(f"settings differ ({m['img_size']} px crop {tuple(m['crop'])})")
    if m.get("image_dir") != image_dir_entry(table.image_dir, root):
        reasons.append(f"made from another image folder ({m.get('image_dir')})")
    names = table.frame["image"].to_numpy(dtype=object).astype(str)
    if not reasons and fingerprint(names, sizes, mtimes) != m.get("fingerprint"):
        old = set(cache.names.tolist())
        new = set(names.tolist())
        added, removed = len(new - old), len(old - new)
        if added:
            reasons.append(f"{added:,} image(s) added")
        if removed:
            reasons.append(f"{removed:,} image(s) removed")
        rows = cache.rows_of(names)
        known = rows >= 0
        changed = (cache.sizes[rows[known]] != sizes[known]) | (
            cache.mtimes[rows[known]] != mtimes[known]
        )
        if changed.any():
            reasons.append(f"{int(changed.sum()):,} image file(s) changed")
        if not reasons:
            reasons.append("image list reordered")
    return CacheStatus(path, True, not reasons, reasons)


def cache_status(
    data: DataConfig,
    *,
    img_size: int | None = None,
    crop: Sequence[float] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CacheStatus:
    """Is the cache of the whole dataset ``data`` up to date? (reads the dataset's index)"""
    from faceattr.data import read_dataset

    size = data.img_size if img_size is None else img_size
    crop = crop_of(data, crop)
    table = read_dataset(data)
    sizes, mtimes = stat_sources([str(p) for p in table.paths])
    path = cache_path(data, size, crop, cache_dir)
    return _status_of(path, table, Path(data.root).expanduser(), size, crop, sizes, mtimes)


@dataclass
class PrepareResult:
    path: Path
    n_images: int
    img_size: int
    nbytes: int  # size of images.npy
    built: bool  # False: an up-to-date cache was already there
    reasons: list[str]  # why it was (re)built, e.g. ["no cache yet"] or ["3 image file(s) changed"]
    failed: dict[str, str]  # image name -> why it could not be decoded
    seconds: float
    splits: dict[str, int]
    notes: list[str] = field(default_factory=list)  # the reader's remarks

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.built and self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """``faceattr data prepare --json`` (docs/formats.md)."""
        return {
            "path": str(self.path),
            "built": self.built,
            "reasons": self.reasons,
            "n_images": self.n_images,
            "img_size": self.img_size,
            "bytes": self.nbytes,
            "splits": self.splits,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "notes": self.notes,
        }


def _decode_rows(
    array_path: str, start: int, paths: Sequence[str], img_size: int, crop: Sequence[float]
) -> tuple[int, int, list[tuple[int, str]]]:
    """Decode ``paths`` into rows ``start...`` of the memmap at ``array_path`` (one worker's
    share: rows are disjoint, so workers never write the same bytes). Returns ``(start, n,
    failures)`` with ``failures`` = ``[(row, reason)]``."""
    from faceattr.data.images import load_image
    from faceattr.data.transforms import preprocess
    from faceattr.errors import ImageReadError

    out = np.load(array_path, mmap_mode="r+")
    failures: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            out[start + i] = preprocess(load_image(p), img_size, crop)
        except ImageReadError as exc:
            failures.append((start + i, exc.message))
        except ValueError as exc:  # e.g. an image too small for the crop box
            failures.append((start + i, f"Cannot preprocess image {p}: {exc}"))
    out.flush()
    del out
    return start, len(paths), failures


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_leftovers(base: Path, key: str) -> None:
    """Delete temp/old folders of ``key`` left by a prepare that was killed (not running)."""
    for prefix in (_TMP_PREFIX, _OLD_PREFIX):
        for d in base.glob(f"{prefix}{key}-*"):
            try:
                pid = int(d.name[len(prefix) + len(key) + 1 :].split("-")[0])
            except ValueError:
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else 0


def _check_disk(base: Path, need: int, reclaimable: int, img_size: int, n: int) -> None:
    free = shutil.disk_usage(base).free
    if free + reclaimable >= need:
        return
    gb = 1e9
    smaller = [s for s in (64, 96, 128) if s < img_size]
    alt = ", ".join(f"`img_size={s}` needs {n * 3 * s * s / gb:.1f} GB" for s in smaller)
    raise DataError(
        f"Not enough disk space for the cache: {n:,} images at {img_size} px need "
        f"{need / gb:.1f} GB in {base}, and {free / gb:.1f} GB is free.",
        "Free some space, choose a smaller image size"
        + (f" ({alt})" if alt else "")
        + f", or put caches on another disk with {CACHE_ENV}=DIR.",
    )


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _fork_context() -> multiprocessing.context.BaseContext | None:
    # fork: workers inherit the imported modules instead of re-importing torch (seconds each).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork") if "fork" in methods else None


def _decode_all(
    array_path: Path,
    paths: list[str],
    img_size: int,
    crop: Sequence[float],
    workers: int,
    progress: Progress,
) -> dict[int, str]:
    n = len(paths)
    failures: dict[int, str] = {}
    if workers <= 1:
        step = 64
        for start in range(0, n, step):
            _, count, bad = _decode_rows(
                str(array_path), start, paths[start : start + step], img_size, crop
            )
            failures.update(bad)
            progress.advance(count)
        return failures
    # Chunks small enough for a smooth bar and balanced workers, big enough to amortise IPC.
    step = max(16, min(256, n // (workers * 8) or 16))
    pending: set[Future] = set()
    starts = iter(range(0, n, step))
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=_fork_context())

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            chunk = paths[start : start + step]
            pending.add(ex.submit(_decode_rows, str(array_path), start, chunk, img_size, crop))

    try:
        # A few chunks in flight per worker, not all of them, so an interrupt stops quickly.
        for _ in range(workers * 3):
            submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                pending.discard(fut)
                _, count, bad = fut.result()
                failures.update(bad)
                progress.advance(count)
                submit()
    except BrokenProcessPool:
        raise DataError(
            "A worker died while decoding images for the cache (out of memory or disk?).",
            "Try fewer workers (e.g. `workers=2`), and check the free memory and disk space.",
        ) from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return failures


def build_cache(
    table: AttributeTable,
    path: str | os.PathLike,
    *,
    img_size: int,
    crop: Sequence[float],
    root: str | os.PathLike | None = None,
    dataset: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decode every row of ``table`` into a new cache at ``path`` (replacing what is there).

    The work happens in a temporary sibling folder renamed to ``path`` only when complete;
    any exception (Ctrl-C included) removes it. ``root`` is the dataset folder the manifest
    records the image folder relative to. Returns the manifest.
    """
    from faceattr import __version__
    from faceattr.fileio import atomic_write_text
    from faceattr.utils import default_workers, to_json

    progress = progress or NullProgress()
    path = Path(path)
    base = path.parent
    key = path.name
    root = Path(root).expanduser() if root is not None else Path(table.image_dir)
    workers = default_workers() if workers is None else max(0, int(workers))
    n = len(table)
    if n == 0:
        raise DataError("The dataset has no images to prepare.")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the cache folder {base}: {exc.strerror or exc}.",
            f"Make the dataset folder writable, or put caches elsewhere with {CACHE_ENV}=DIR.",
        ) from None
    _remove_leftovers(base, key)
    shape = (n, 3, img_size, img_size)
    need = int(np.prod(shape)) + table.labels.nbytes + _DISK_MARGIN
    _check_disk(base, need, _dir_bytes(path), img_size, n)

    names = table.frame["image"].to_numpy(dtype=object).astype(str)
    paths = [str(p) for p in table.paths]
    sizes, mtimes = stat_sources(paths)  # before decoding: a file changed meanwhile is stale
    tmp = base / f"{_TMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
    start_time = time.perf_counter()
    try:
        tmp.mkdir()
        array_path = tmp / IMAGES
        out = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
        del out  # workers open it themselves
        progress.start(f"preparing {img_size} px", total=n, unit="img")
        try:
            failures = _decode_all(array_path, paths, img_size, crop, workers, progress)
        finally:
            progress.finish()
        with open(array_path, "rb+") as fh:  # the memmap writes are in the page cache: persist
            os.fsync(fh.fileno())
        failed = np.zeros(n, dtype=bool)
        failed[list(failures)] = True
        _write_npy(tmp / LABELS, np.ascontiguousarray(table.labels, dtype=np.float32))
        with open(tmp / INDEX, "wb") as fh:
            np.savez(fh, image=names, size=sizes, mtime_ns=mtimes, failed=failed)
            fh.flush()
            os.fsync(fh.fileno())
        counts = table.frame["split"].value_counts()
        manifest = {
            "format": FORMAT_VERSION,
            "complete": True,
            "faceattr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset": dataset or table.dataset,
            "root": str(root.resolve()),
            "image_dir": image_dir_entry(table.image_dir, root),
            "img_size": int(img_size),
            "crop": list(norm_crop(crop)),
            "shape": list(shape),
            "n_images": n,
            "n_failed": len(failures),
            "splits": {s: int(counts.get(s, 0)) for s in SPLITS},
            "attributes": list(table.attributes),
            "fingerprint": fingerprint(names, sizes, mtimes),
            "seconds": round(time.perf_counter() - start_time, 3),
            "workers": workers,
            "failed": [
                {"row": int(r), "image": str(names[r]), "reason": failures[r]}
                for r in sorted(failures)
            ],
            **(settings or {}),
        }
        atomic_write_text(tmp / MANIFEST, to_json(manifest, indent=1) + "\n")
        # Swap in: the old cache (if any) is moved aside first, since a folder cannot be
        # renamed onto a non-empty one; readers see either no cache or a complete one.
        old = None
        if path.exists():
            old = base / f"{_OLD_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def prepare_cache(
    data: DataConfig,
    *,
    img_size: int | None = None,
    crop: Sequence[float] | None = None,
    workers: int | None = None,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> PrepareResult:
    """Build (or confirm up to date) the cache of every image of dataset ``data``.

    ``img_size``/``crop`` default to ``data``'s; ``workers`` decoding processes (default
    ``min(4, CPUs)``); ``force`` rebuilds even an up-to-date cache. Caches live under
    ``ROOT/.faceattr-cache`` (or ``cache_dir`` / ``$FACEATTR_CACHE_DIR``).
    """
    from faceattr.data import read_dataset

    progress = progress or NullProgress()
    size = int(data.img_size if img_size is None else img_size)
    if size < 8:
        raise UsageError(
            f"`img_size={size}` is too small: the image size must be at least 8 pixels."
        )
    crop = tuple(crop_of(data, crop))
    table = read_dataset(data)
    from faceattr.data import table_boxes

    if table_boxes(table) is not None:
        raise UsageError(
            f"A prepared cache does not support {data.dataset}: its images hold several faces, "
            "each cropped by its own box when read.",
            "Train without a cache (decoding is rarely the bottleneck on a CPU).",
        )
    root = Path(data.root).expanduser()
    path = cache_path(data, size, crop, cache_dir)
    start = time.perf_counter()
    sizes, mtimes = stat_sources([str(p) for p in table.paths])
    status = _status_of(path, table, root, size, crop, sizes, mtimes)
    splits = table.split_counts()
    if status.up_to_date and not force:
        cache = open_cache(path)
        return PrepareResult(
            path=path,
            n_images=len(cache),
            img_size=size,
            nbytes=int(cache.images.nbytes),
            built=False,
            reasons=[],
            failed={f["image"]: f["reason"] for f in cache.manifest.get("failed", [])},
            seconds=time.perf_counter() - start,
            splits=splits,
            notes=list(table.notes),
        )
    reasons = ["rebuild forced"] if status.up_to_date else status.reasons
    if status.exists:
        progress.log(f"Rebuilding the cache at {path}: {', '.join(reasons)}.")
    manifest = build_cache(
        table,
        path,
        img_size=size,
        crop=crop,
        root=root,
        dataset=data.dataset,
        workers=workers,
        progress=progress,
        settings={"labels": str(Path(data.labels).expanduser().resolve()) if data.labels else None},
    )
    return PrepareResult(
        path=path,
        n_images=len(table),
        img_size=size,
        nbytes=len(table) * 3 * size * size,
        built=True,
        reasons=reasons,
        failed={f["image"]: f["reason"] for f in manifest["failed"]},
        seconds=time.perf_counter() - start,
        splits=splits,
        notes=list(table.notes),
    )
