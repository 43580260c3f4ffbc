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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import DataConfig
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError
from faceattr.progress import NullProgress, Progress

FORMAT_VERSION = 1
CACHE_DIRNAME = ".faceattr-cache"
CACHE_ENV = "FACEATTR_CACHE_DIR"  # put caches here instead of inside each dataset folder
CACHE_MODES = ("auto", "off")
MANIFEST = "manifest.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
INDEX = "index.npz"
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
# Extra free space asked for beyond the arrays themselves (index, manifest, file system slack).
_DISK_MARGIN = 64 * 2**20


# ----------------------------------------------------------------------------- locations


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:n]


def _norm_crop(crop: Sequence[float]) -> tuple[float, ...]:
    # Rounded so that a crop read back from JSON (model files, manifests) finds the same cache.
    return tuple(round(float(c), 6) for c in crop)


def cache_base(data: DataConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the caches of ``data.root``.

    ``ROOT/.faceattr-cache`` by default (moves with the dataset); under ``cache_dir`` or
    ``$FACEATTR_CACHE_DIR`` when set (e.g. for a read-only dataset), in a subfolder per root.
    """
    if not data.root:
        raise UsageError("No dataset folder given.", "Pass --root DIR.")
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
        "crop": list(_norm_crop(crop)),
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
    return cache_base(data, cache_dir) / cache_key(data, size, data.crop if crop is None else crop)


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


def _fingerprint(names: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(map(str, names)).encode())
    h.update(np.ascontiguousarray(sizes, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(mtimes, dtype="<i8").tobytes())
    return h.hexdigest()


def _image_dir_entry(image_dir: Path, root: Path) -> str:
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


def _describe_siblings(base: Path, dataset: str, want: str, crop: Sequence[float]) -> str:
    """What other caches of ``dataset`` exist in ``base`` (to say why none matched)."""
    found: list[str] = []
    crop = list(_norm_crop(crop))
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
    return f"`faceattr data prepare {data.dataset} --root {data.root} --img-size {img_size}`"


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
    if cache.img_size != img_size or _norm_crop(cache.crop) != _norm_crop(crop):
        return CacheLookup(
            None,
            None,
            f"{what}: the cache at {path} holds {cache.img_size} px crop {cache.crop}, this run "
            f"needs {img_size} px crop {tuple(crop)}; {jpeg}.",
        )
    root = Path(data.root).expanduser()
    if cache.manifest.get("image_dir") != _image_dir_entry(table.image_dir, root):
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

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> Iterator[list[int]]:
        import torch
        from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

        n = len(self.rows)
        if self.shuffle:
            # A DataLoader draws one number from its generator (its workers' base seed) before
            # sampling; drawing it too keeps the order identical to the JPEG path.
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            sampler = RandomSampler(range(n), generator=self.generator)
        else:
            sampler = SequentialSampler(range(n))
        return iter(BatchSampler(sampler, self.batch_size, self.drop_last))

    def __iter__(self):
        import torch

        from faceattr.data.dataset import Batch

        s = self.images.shape[-1]
        for idx in self._order():
            idx = np.asarray(idx, dtype=np.int64)
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


# ----------------------------------------------------------------------------- building


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
    if int(m["img_size"]) != int(img_size) or _norm_crop(m["crop"]) != _norm_crop(crop):
        reasons.append(f"settings differ ({m['img_size']} px crop {tuple(m['crop'])})")
    if m.get("image_dir") != _image_dir_entry(table.image_dir, root):
        reasons.append(f"made from another image folder ({m.get('image_dir')})")
    names = table.frame["image"].to_numpy(dtype=object).astype(str)
    if not reasons and _fingerprint(names, sizes, mtimes) != m.get("fingerprint"):
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
    crop = data.crop if crop is None else crop
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
    alt = ", ".join(f"{s} px needs {n * 3 * s * s / gb:.1f} GB" for s in smaller)
    raise DataError(
        f"Not enough disk space for the cache: {n:,} images at {img_size} px need "
        f"{need / gb:.1f} GB in {base}, and {free / gb:.1f} GB is free.",
        "Free some space, choose a smaller --img-size"
        + (f" ({alt})" if alt else "")
        + f", or put caches on another disk with {CACHE_ENV}=DIR.",
    )


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _fork_context():
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
            _, done, bad = _decode_rows(
                str(array_path), start, paths[start : start + step], img_size, crop
            )
            failures.update(bad)
            progress.advance(done)
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
            "A worker of `data prepare` died while decoding images (out of memory or disk?).",
            "Try fewer --workers, and check the free memory and disk space.",
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
    from faceattr.utils import atomic_write_text, default_workers

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
            "image_dir": _image_dir_entry(table.image_dir, root),
            "img_size": int(img_size),
            "crop": list(_norm_crop(crop)),
            "shape": list(shape),
            "n_images": n,
            "n_failed": len(failures),
            "splits": {s: int(counts.get(s, 0)) for s in SPLITS},
            "attributes": list(table.attributes),
            "fingerprint": _fingerprint(names, sizes, mtimes),
            "seconds": round(time.perf_counter() - start_time, 3),
            "workers": workers,
            "failed": [
                {"row": int(r), "image": str(names[r]), "reason": failures[r]}
                for r in sorted(failures)
            ],
            **(settings or {}),
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
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
        raise UsageError(f"--img-size must be at least 8 pixels, got {size}.")
    crop = tuple(data.crop if crop is None else crop)
    table = read_dataset(data)
    from faceattr.data import table_boxes

    if table_boxes(table) is not None:
        raise UsageError(
            f"`data prepare` does not support {data.dataset}: its images hold several faces, "
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
    reasons = ["--force"] if status.up_to_date else status.reasons
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
