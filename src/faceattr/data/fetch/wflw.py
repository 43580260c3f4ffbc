"""Fetch WFLW (`faceattr data fetch wflw`): its two archives, into the official layout.

The annotations archive is a plain HTTPS download; the images are on Google Drive (which
often refuses scripted downloads) and Baidu Pan, so the usual route is ``--from`` with the
archives (or their extracted folders) downloaded by hand. Archives are extracted with
:func:`faceattr.data.archives.extract_archive` into a temporary folder inside ``root`` and
moved into place when complete. The reader is :mod:`faceattr.data.wflw`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceattr.data.archives import extract_archive, iter_images, link_or_copy_tree, unwrap_folder
from faceattr.data.csvdata import existing_images
from faceattr.data.download import (
    DEFAULT_TIMEOUT,
    HtmlPageError,
    HttpStatusError,
    TransferError,
    disk_error,
    download_to_part,
    make_opener,
)
from faceattr.data.wflw import (
    ANNOTATION_FILES,
    ANNOTATIONS_ARCHIVE,
    ANNOTATIONS_DIR,
    IMAGES_ARCHIVE,
    IMAGES_DIR,
    LIST_DIR,
    find_wflw,
    read_wflw,
    read_wflw_annotations,
)
from faceattr.errors import DataError, DownloadError, UsageError
from faceattr.progress import NullProgress, Progress
from faceattr.utils import JsonResult, json_key

# Where the release lives (project page: https://wywu.github.io/projects/LAB/WFLW.html). The
# annotations are a plain HTTPS file; the images are on Google Drive and Baidu Pan only.
ANNOTATIONS_URL = "https://wywu.github.io/projects/LAB/support/WFLW_annotations.tar.gz"
IMAGES_DRIVE_ID = "1hzBd48JIdWTJSsATBEB_eFVvPL1bx6UC"
IMAGES_DRIVE_PAGE = f"https://drive.google.com/file/d/{IMAGES_DRIVE_ID}/view"
IMAGES_URL = f"https://drive.google.com/uc?id={IMAGES_DRIVE_ID}&export=download"
IMAGES_BAIDU_PAGE = "https://pan.baidu.com/s/1paoOpusuyafHY154lqXYrA"
# Environment variables that redirect the two downloads (tests, proxies, private mirrors).
ANNOTATIONS_URL_ENV = "FACEATTR_WFLW_ANNOTATIONS_URL"
IMAGES_URL_ENV = "FACEATTR_WFLW_IMAGES_URL"
MANIFEST_NAME = ".faceattr-wflw.json"

OFFICIAL_COUNTS: dict[str, int] = {"train": 7_500, "test": 2_500}  # faces per split


def manual_download_hint() -> str:
    """How to get the two archives by hand (the images are behind Google Drive / Baidu)."""
    return (
        "Download the two WFLW archives by hand:\n"
        f"  {ANNOTATIONS_ARCHIVE}: {ANNOTATIONS_URL}\n"
        f"  {IMAGES_ARCHIVE}: {IMAGES_DRIVE_PAGE} (Google Drive) or {IMAGES_BAIDU_PAGE} (Baidu)\n"
        "then run `faceattr data fetch wflw --root DIR --from FOLDER` with the folder holding "
        "them (extracted folders work too)."
    )


@dataclass
class WflwFetchResult(JsonResult):
    """What :func:`fetch_wflw` did. ``sources``: part (annotations/images) -> where it came
    from; ``faces``: split -> faces listed; ``photos`` on disk; ``notes`` for the user."""

    root: Path
    already_complete: bool = field(default=False, metadata=json_key("up_to_date"))
    sources: dict[str, str] = field(default_factory=dict)
    faces: dict[str, int] = field(default_factory=dict)
    photos: int = 0
    missing_photos: int = 0
    notes: list[str] = field(default_factory=list)


_PARTS = ("annotations", "images")
_ARCHIVE_FOR = {"annotations": ANNOTATIONS_ARCHIVE, "images": IMAGES_ARCHIVE}
_DIR_FOR = {"annotations": ANNOTATIONS_DIR, "images": IMAGES_DIR}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")


def fetch_wflw(
    root: str | Path,
    *,
    from_path: str | Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keep_archives: bool = False,
) -> WflwFetchResult:
    """Put WFLW under ``root`` in the official layout (``WFLW_annotations/``, ``WFLW_images/``).

    Sources: ``from_path`` (a folder holding the two archives or their extracted folders, or
    one archive), ``mirror`` (a base URL serving ``WFLW_annotations.tar.gz`` and
    ``WFLW_images.tar.gz``), else the official locations (annotations over HTTPS; the images
    from Google Drive, which may refuse scripted downloads: the error then says how to
    download by hand). Archives are extracted safely into a temporary folder inside ``root``
    and moved into place when complete; a part already in place is kept, so a second run is
    a fast no-op. Ends by reading the result with :func:`~faceattr.data.wflw.read_wflw`.
    """
    progress = progress or NullProgress()
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(root / "x", exc) from None
    result = WflwFetchResult(root=root)
    have = {"annotations": _annotations_ok(root), "images": _images_ok(root)}
    if all(have.values()):
        result.already_complete = True
        return _finish(root, result)

    if from_path is not None:
        found = _scan_from(Path(from_path))
        lacking = [k for k in _PARTS if not have[k] and k not in found]
        if lacking:
            names = " and ".join(f"{_ARCHIVE_FOR[k]} (or {_DIR_FOR[k]}/)" for k in lacking)
            raise DataError(f"No {names} in {from_path}.", manual_download_hint())
    else:  # archives the user already put in root are used (and kept), not downloaded again
        found = {
            k: _Found(archive=root / _ARCHIVE_FOR[k])
            for k in _PARTS
            if (root / _ARCHIVE_FOR[k]).is_file()
        }
    for kind in _PARTS:
        if not have[kind]:
            result.sources[kind] = _put_part(
                root, kind, found.get(kind), mirror, progress, timeout, keep_archives
            )
    _write_manifest(root, result)
    return _finish(root, result)


def _put_part(
    root: Path,
    kind: str,
    found: _Found | None,
    mirror: str | None,
    progress: Progress,
    timeout: float,
    keep_archives: bool,
) -> str:
    """Put one part (``kind``) in place under ``root``, assembled in a temporary folder from
    what the user has (``found``) or from a download; where it came from."""
    tmp = root / f".{_DIR_FOR[kind]}.extracting"
    try:
        if found is not None and found.folder is not None:
            origin = _copy_folder(root, kind, found.folder, tmp, progress)
        else:
            archive = found.archive if found is not None else None
            origin = _extract_part(
                root, kind, archive, tmp, mirror, progress, timeout, keep_archives
            )
        _install_dir(root, kind, _content_dir(tmp, kind))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return origin


def _copy_folder(root: Path, kind: str, src: Path, tmp: Path, progress: Progress) -> str:
    """Link (or copy) a user's extracted folder into ``tmp``."""
    if src.resolve() == (root / _DIR_FOR[kind]).resolve():
        raise DataError(
            f"{src} is incomplete: some photos listed in the annotations are missing from it.",
            manual_download_hint(),
        )
    shutil.rmtree(tmp, ignore_errors=True)
    link_or_copy_tree(_content_dir(src, kind), tmp / _DIR_FOR[kind], progress)
    return str(src)


def _extract_part(
    root: Path,
    kind: str,
    archive: Path | None,
    tmp: Path,
    mirror: str | None,
    progress: Progress,
    timeout: float,
    keep_archives: bool,
) -> str:
    """Extract the user's ``archive`` into ``tmp``, or (None) one downloaded into ``root``,
    which is deleted afterwards unless ``keep_archives``."""
    downloaded = archive is None
    if archive is None:
        origin = _part_url(kind, mirror)
        archive = root / _ARCHIVE_FOR[kind]
        part = root / (_ARCHIVE_FOR[kind] + ".part")
        _download(origin, part, progress, timeout, _ARCHIVE_FOR[kind])
        os.replace(part, archive)
    else:
        origin = str(archive)
    try:
        extract_archive(archive, tmp, progress)
    except DownloadError:
        if downloaded:  # a damaged download must not pass for the user's file
            archive.unlink(missing_ok=True)
        raise
    if downloaded and not keep_archives:
        archive.unlink()
    return origin


def _part_url(kind: str, mirror: str | None) -> str:
    """Where to download a part: the mirror, else the environment's URL, else the official."""
    if mirror:
        return mirror.rstrip("/") + "/" + _ARCHIVE_FOR[kind]
    if kind == "annotations":
        return os.environ.get(ANNOTATIONS_URL_ENV) or ANNOTATIONS_URL
    return os.environ.get(IMAGES_URL_ENV) or IMAGES_URL


def _download(url: str, part: Path, progress: Progress, timeout: float, what: str) -> None:
    """Download ``url`` to ``part`` (resumable) or raise a DownloadError that says how to get
    the file by hand."""
    opener, _ = make_opener()
    try:
        download_to_part(url, part, opener=opener, timeout=timeout, progress=progress, task=what)
    except HtmlPageError as exc:
        raise DownloadError(
            f"Downloading {what} from {url} gave a web page ({exc.title!r}) instead of the file "
            "(Google Drive asks a browser to confirm large downloads, or its quota is used "
            "up); nothing was saved.",
            manual_download_hint(),
        ) from None
    except HttpStatusError as exc:
        raise DownloadError(f"Downloading {what} failed: {exc}.", manual_download_hint()) from None
    except TransferError as exc:
        kept = " The partial download is kept: fetch again to resume." if part.exists() else ""
        raise DownloadError(
            f"Downloading {what} failed: {exc}.{kept}", manual_download_hint()
        ) from None


# ---------------------------------------------------------------------------------------------
# What is in root


def _annotations_ok(root: Path) -> bool:
    folder = root / ANNOTATIONS_DIR / LIST_DIR
    return all((folder / n).is_file() for n in ANNOTATION_FILES.values())


def _images_ok(root: Path) -> bool:
    """True when ``WFLW_images/`` holds every photo the annotation lists name (any photo at
    all while there are no lists yet)."""
    folder = root / IMAGES_DIR
    if not folder.is_dir():
        return False
    if not _annotations_ok(root):
        return any(True for _ in iter_images(folder))
    listed: set[str] = set()
    for name in ANNOTATION_FILES.values():
        with open(
            root / ANNOTATIONS_DIR / LIST_DIR / name, encoding="utf-8", errors="replace"
        ) as fh:
            listed.update(line.split()[-1] for line in fh if line.strip())
    return bool(listed) and bool(existing_images(folder, np.array(sorted(listed), object)).all())


def _install_dir(root: Path, kind: str, content: Path) -> None:
    """Move ``content`` (inside a temp folder of ours) to ``root/<official name>``."""
    final = root / _DIR_FOR[kind]
    if final.exists():
        shutil.rmtree(final)  # an incomplete earlier copy of ours
    os.replace(content, final)


# ---------------------------------------------------------------------------------------------
# Finding the parts: in --from, and inside an extracted archive


@dataclass
class _Found:
    """Where a part is in a ``--from`` path: an archive or an extracted folder."""

    archive: Path | None = None
    folder: Path | None = None


def _scan_from(path: Path) -> dict[str, _Found]:
    """Find the annotation and image parts in ``--from`` (a folder, or one archive whose
    folder is searched for the other)."""
    path = path.expanduser()
    if not path.exists():
        raise UsageError(
            f"The folder or archive of downloaded files {path} does not exist.",
            manual_download_hint(),
        )
    found: dict[str, _Found] = {}
    if path.is_file():
        kind = _archive_kind(path)
        if kind is None:
            raise UsageError(
                f"{path} is not a WFLW archive (expected {ANNOTATIONS_ARCHIVE} or "
                f"{IMAGES_ARCHIVE}).",
                "Pass the folder holding the archives, or one archive under its official name.",
            )
        found[kind] = _Found(archive=path)
        folder = path.parent
    else:
        folder = path
    for kind in _PARTS:
        if kind in found:
            continue
        official = folder / _ARCHIVE_FOR[kind]
        extracted = folder / _DIR_FOR[kind]
        if extracted.is_dir():
            found[kind] = _Found(folder=extracted)
        elif official.is_file():
            found[kind] = _Found(archive=official)
        else:
            other = sorted(p for p in folder.iterdir() if p.is_file() and _archive_kind(p) == kind)
            if other:
                found[kind] = _Found(archive=other[0])
    return found


def _archive_kind(path: Path) -> str | None:
    """``"annotations"`` or ``"images"`` from an archive's file name, else None."""
    name = path.name.lower()
    if not name.endswith(_ARCHIVE_SUFFIXES):
        return None
    if "annotation" in name or "list_98pt" in name:
        return "annotations"
    if "image" in name:
        return "images"
    return None


def _content_dir(base: Path, kind: str) -> Path:
    """The folder inside an extracted archive (or a user's folder) that is the part itself:
    the one holding ``list_98pt_rect_attr_train_test/`` (annotations) or the event folders
    (images). Raises a DataError when it is not there."""
    if kind == "annotations":
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath).name == LIST_DIR and any(
                n in filenames for n in ANNOTATION_FILES.values()
            ):
                return Path(dirpath).parent
            dirnames.sort()
        raise DataError(
            f"No {LIST_DIR}/{ANNOTATION_FILES['train']} inside {base}: this is not the WFLW "
            "annotation archive.",
            manual_download_hint(),
        )
    # images: the shallowest folder named WFLW_images, else the parent of the image files
    named = sorted(
        (Path(d) for d, _, _ in os.walk(base) if Path(d).name == IMAGES_DIR),
        key=lambda p: len(p.parts),
    )
    if named:
        return unwrap_folder(named[0])
    first = next(iter_images(base), None)
    if first is None:
        raise DataError(f"No images inside {base}: this is not the WFLW image archive.")
    # photos live in <event>/<photo>.jpg: the folder above the event folder
    return first.parent.parent if first.parent != base else base


# ---------------------------------------------------------------------------------------------
# The outcome


def _write_manifest(root: Path, result: WflwFetchResult) -> None:
    from faceattr.fileio import atomic_write_text
    from faceattr.utils import to_json

    path = root / MANIFEST_NAME
    data = {}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
    data.setdefault("sources", {}).update(result.sources)
    data["fetched"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_text(path, to_json(data, indent=2) + "\n")


def _finish(root: Path, result: WflwFetchResult) -> WflwFetchResult:
    """Read what is now under ``root`` and fill counts and notes."""
    files = find_wflw(root)
    table = read_wflw(files)
    counts = table.frame["split"].value_counts()
    result.faces = {s: int(counts.get(s, 0)) for s in ("train", "test")}
    result.photos = int(table.frame["image"].nunique())
    listed: set[str] = set()
    for path in files.annotation_files.values():
        listed.update(read_wflw_annotations(path).images.tolist())
    result.missing_photos = len(listed) - result.photos
    result.notes += [n for n in table.notes if "missing" in n]
    if any(result.faces[s] != n for s, n in OFFICIAL_COUNTS.items()):
        result.notes.append(
            f"The annotation lists hold {result.faces['train']:,} train and "
            f"{result.faces['test']:,} test faces; the official release has "
            f"{OFFICIAL_COUNTS['train']:,} and {OFFICIAL_COUNTS['test']:,}."
        )
    return result
