"""Decoding one image file into an upright 8-bit RGB ``PIL.Image``, and listing image folders.

Every failure (missing file, not an image, truncated, too large) becomes an
:class:`~faceattr.errors.ImageReadError` that names the file and the reason, so a bad file in
a folder of thousands is easy to find.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceattr.errors import DataError, ImageReadError
from faceattr.reading import NotRegularFileError, file_kind, open_regular

# Lower-case suffixes that `list_images` treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Transparent pixels are composited onto mid-grey: close to the mean colour models are
# normalised with, so a cut-out face is not framed by a black or white border.
BACKGROUND_RGB: tuple[int, int, int] = (128, 128, 128)

# Pillow keeps its decompression-bomb limit in a module global; raising it for one call must
# not race with another thread doing the same.
_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Let ``Image.open`` accept up to ``max_pixels`` when that is above Pillow's own limit."""
    current = Image.MAX_IMAGE_PIXELS
    if max_pixels is None or current is None or max_pixels <= current:
        yield  # our own check after opening enforces a lower limit
        return
    with _LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current


def _too_large(
    path: Path, size: tuple[int, int] | None, pixels: int | None, limit: int, user_limit: bool
) -> ImageReadError:
    # The message alone is what a prediction reports per image: it names no setting.
    over = (
        f"the pixel limit of {limit:,} given"
        if user_limit
        else f"Pillow's decompression-bomb limit of {limit:,} pixels"
    )
    if size is not None:
        what = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels"
    else:
        what = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return ImageReadError(
        f"Cannot read image {path}: it is too large ({what}, more than {over}); if it is "
        "trustworthy, raise the pixel limit.",
        "If the file is trustworthy, raise the limit when predicting: `max_pixels=N`, N at "
        "least the pixel count above.",
    )


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float greyscale image to 8 bits (scaled, never clipped)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0  # 65535 -> 255
    elif img.mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 65535:  # how Pillow stores 16-bit PNG/TIFF greyscale
            scaled = arr.astype(np.float32) / 257.0
        else:  # a genuine 32-bit range: stretch what is there
            scaled = (arr.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1))
    else:  # "F"
        arr = np.nan_to_num(arr.astype(np.float32))
        peak = float(arr.max()) if arr.size else 0.0
        scaled = arr * 255.0 if peak <= 1.0 else arr
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image from any Pillow mode (the input is left untouched)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV
    return img.convert("RGB")


def _open_error(path: Path, exc: OSError) -> ImageReadError:
    """Why the file ``path`` could not be opened (any error of the operating system)."""
    if isinstance(exc, NotRegularFileError):
        if exc.errno == errno.EISDIR:
            return ImageReadError(f"Cannot read image {path}: it is a folder, not an image file.")
        return ImageReadError(f"Cannot read image {path}: it is {exc.strerror}.")
    if isinstance(exc, FileNotFoundError):
        return ImageReadError(f"Cannot read image {path}: the file does not exist.")
    if isinstance(exc, PermissionError):
        return ImageReadError(f"Cannot read image {path}: permission denied.")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ImageReadError(f"Cannot read image {path}: {reason[:1].lower()}{reason[1:]}.")


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = None,
    before_decode: Callable[[tuple[int, int]], None] | None = None,
    data: bytes | None = None,
) -> Image.Image:
    """Decode ``path`` into an upright RGB image (``size`` is ``(width, height)``).

    EXIF orientation is applied; greyscale, palette, CMYK and 16-bit images are converted (16
    bit is scaled to 8 bit); transparency is composited onto mid-grey. Decoding happens here,
    so a truncated file fails here rather than later in a data loader.

    ``max_pixels`` bounds ``width * height``; ``None`` keeps Pillow's default limit (about 89
    million pixels), which protects against decompression bombs. ``before_decode`` is called
    with the size once the header is read and the limit checked, before the pixels are
    decoded (the predictor's pixel budget waits there). Only a regular file is opened
    (:func:`faceattr.fileio.open_regular`): a FIFO or device is an error, never a hang.
    ``data``: the file's bytes (an upload), decoded instead of opening ``path``, which then
    only names the image in messages.

    Raises :class:`~faceattr.errors.ImageReadError` naming the file and the reason.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    try:
        fh = io.BytesIO(data) if data is not None else open_regular(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        if isinstance(exc, ValueError):
            raise ImageReadError(f"Cannot read image {str(path)!r}: the name is invalid.") from None
        raise _open_error(path, exc) from None
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    size: tuple[int, int] | None = None
    try:
        # Pillow warns between its limit and twice its limit; treat that as the error it is.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with fh, _pillow_pixel_limit(max_pixels), Image.open(fh) as img:
                size = img.size
                if limit is not None and size[0] * size[1] > limit:
                    raise _too_large(path, size, None, limit, max_pixels is not None)
                if before_decode is not None:
                    before_decode(size)
                img.load()
                # Build the result before the `with` closes the file: a closed image is unusable.
                upright = ImageOps.exif_transpose(img)
                out = _to_rgb(upright if upright is not None else img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Raised inside Image.open, before the size is known to us: Pillow's message has it.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        raise _too_large(path, size, pixels, limit or 0, max_pixels is not None) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"Cannot read image {path}: not an image file (Pillow does not recognise its format).",
            f"Supported extensions include {', '.join(IMAGE_EXTENSIONS)}; check that the file "
            "is not empty, an HTML error page or another kind of file renamed.",
        ) from None
    except PermissionError as exc:
        raise ImageReadError(f"Cannot read image {path}: permission denied ({exc}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated",
        # "broken data stream"), SyntaxError (bad headers in some plugins) or ValueError.
        reason = str(exc) or type(exc).__name__
        kind = "truncated" if "truncat" in reason.lower() else "corrupt"
        raise ImageReadError(
            f"Cannot read image {path}: the file is {kind} ({reason}).",
            "Re-download or re-export the file, or remove it from the folder.",
        ) from None
    return out


class ImageScan(NamedTuple):
    """What a folder holds: its image files, sorted, and what was passed over (a folder
    that could not be read, a FIFO, socket or device named like an image: path and why)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_images(
    folder: str | Path, recursive: bool = False, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> ImageScan:
    """The image files in ``folder`` (by extension, case-insensitive; subfolders with
    ``recursive``, links to folders not followed), and what was passed over. ``extensions``:
    the suffixes taken (predict adds the videos').

    Hidden files and folders (such as macOS ``._name.jpg`` resource forks) are skipped
    silently; a folder that cannot be read (``folder`` itself included), a broken link, and
    a FIFO, socket or device (or a link to one) named like an image are listed in
    ``skipped``: never opened. A DataError when ``folder`` is missing or no folder.
    """
    folder = Path(folder)
    try:
        st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"Image folder {folder} does not exist.") from None
    except OSError as exc:
        return ImageScan([], [(folder, f"a folder that cannot be read ({exc.strerror})")])
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{folder} is a file, not a folder of images.")
    suffixes = frozenset(extensions)
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    failed: list[OSError] = []
    for base, dirs, names in os.walk(folder, onerror=failed.append):
        dirs[:] = [d for d in dirs if not _is_hidden(d)] if recursive else []
        for name in names:
            if _is_hidden(name) or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            path = Path(base, name)
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:  # a broken link, or a file gone since the listing
                if os.path.islink(path):
                    skipped.append((path, "a link to a file that does not exist"))
                continue
            except OSError as exc:  # a loop of links: passed over; no permission: its load says so
                if exc.errno == errno.ELOOP:
                    skipped.append((path, "a loop of symbolic links"))
                else:
                    files.append(path)
                continue
            if stat.S_ISREG(mode):
                files.append(path)
            elif not stat.S_ISDIR(mode):
                skipped.append((path, f"{file_kind(mode)}, not a regular file"))
    for error in failed:
        where = Path(error.filename) if error.filename else folder
        skipped.append((where, f"a folder that cannot be read ({error.strerror})"))
    return ImageScan(sorted(files), skipped)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted by path.

    Hidden files (such as macOS ``._name.jpg`` resource forks) are skipped; so are FIFOs,
    sockets and devices (:func:`scan_images` says which). A DataError when ``folder``
    cannot be read.
    """
    found, skipped = scan_images(folder, recursive)
    for path, reason in skipped:
        if path == Path(folder):
            raise DataError(f"Cannot read the image folder {folder}: {reason}.")
    return found


class Expanded(NamedTuple):
    """:func:`expand_image_paths`: the files to read, the folders that held none, and what
    was passed over (path, why)."""

    files: list[str]
    empty: list[Path]
    skipped: list[tuple[Path, str]]


def expand_image_paths(
    paths: Iterable[str | Path],
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> Expanded:
    """Files as given (a missing, unreadable or special one stays: reading it becomes that
    image's error), folders expanded to their images (:func:`scan_images`); the folders
    that held none; and what was passed over (a folder that cannot be read, a FIFO or
    device inside a folder)."""
    files: list[str] = []
    empty: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        path = Path(p)
        try:
            is_dir = path.is_dir()
        except (OSError, ValueError):  # a name too long, a NUL byte: the load says why
            is_dir = False
        if not is_dir:
            files.append(str(p))
            continue
        found, passed = scan_images(path, recursive=recursive, extensions=extensions)
        skipped.extend(passed)
        if not found and all(where != path for where, _ in passed):
            empty.append(path)
        files.extend(str(f) for f in found)
    return Expanded(files, empty, skipped)


def note_missing_images(
    images: np.ndarray, on_disk: np.ndarray, *, listed_in: str, folder: str | Path, hint: str
) -> str | None:
    """What a reader says of the images its annotation file ``listed_in`` lists (``on_disk``
    ``[N]`` bool: which exist under ``folder``): a DataError with ``hint`` when none does, a
    note when some are missing (the reader goes on with the rest), None when all are there."""
    if not on_disk.any():
        raise DataError(
            f"None of the {len(images):,} images listed in {listed_in} is in {folder} (e.g. "
            f"{', '.join(str(n) for n in images[:3])} are missing).",
            hint,
        )
    if on_disk.all():
        return None
    missing = images[~on_disk]
    return (
        f"{len(missing):,} of {len(images):,} images listed in {listed_in} are missing from "
        f"{folder} (e.g. {', '.join(str(n) for n in missing[:3])}); continuing with the rest."
    )
