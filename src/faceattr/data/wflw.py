"""WFLW (Wider Facial Landmarks in-the-wild): reader, synthetic generator and fetch.

The official release is two archives that extract into::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt  (7,500 faces)
    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt   (2,500 faces)
    WFLW_images/<event>/<photo>.jpg                                   (WIDER Face photos)

Each annotation line is one face: 196 numbers (98 landmarks as x y pairs), the face rectangle
``x_min y_min x_max y_max``, six 0/1 flags (pose, expression, illumination, make-up,
occlusion, blur) and the photo's path relative to ``WFLW_images/``. A photo may hold several
faces, so the :class:`~faceattr.data.table.AttributeTable` of WFLW has one row per face and
the crop box of each face in its ``box_*`` columns (:data:`faceattr.data.BOX_COLUMNS`): the
face rectangle made square and widened by a margin. Decoding cuts that box out before the
model's own preprocessing, which is why WFLW models use the full crop (``FULL_IMAGE``).
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
import pandas as pd

from faceattr.attributes import WFLW_ATTRIBUTES
from faceattr.data import BOX_COLUMNS
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
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError, DownloadError, UsageError
from faceattr.progress import NullProgress, Progress

ANNOTATIONS_DIR = "WFLW_annotations"
LIST_DIR = "list_98pt_rect_attr_train_test"
ANNOTATION_FILES: dict[str, str] = {
    "train": "list_98pt_rect_attr_train.txt",
    "test": "list_98pt_rect_attr_test.txt",
}
IMAGES_DIR = "WFLW_images"
ANNOTATIONS_ARCHIVE = "WFLW_annotations.tar.gz"
IMAGES_ARCHIVE = "WFLW_images.tar.gz"
OFFICIAL_COUNTS: dict[str, int] = {"train": 7_500, "test": 2_500}  # faces per split

N_LANDMARKS = 98
N_FIELDS = 2 * N_LANDMARKS + 4 + len(WFLW_ATTRIBUTES) + 1  # 207: ... flags, image path
DEFAULT_MARGIN = 0.25  # crop = face box made square, plus this fraction of its side each way

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

FETCH_HINT = (
    "Get WFLW with `faceattr data fetch wflw --root DIR` (or `--from FOLDER` holding "
    f"{ANNOTATIONS_ARCHIVE} and {IMAGES_ARCHIVE}) and pass that DIR as --root."
)


def manual_download_hint() -> str:
    """How to get the two archives by hand (the images are behind Google Drive / Baidu)."""
    return (
        "Download the two WFLW archives by hand:\n"
        f"  {ANNOTATIONS_ARCHIVE}: {ANNOTATIONS_URL}\n"
        f"  {IMAGES_ARCHIVE}: {IMAGES_DRIVE_PAGE} (Google Drive) or {IMAGES_BAIDU_PAGE} (Baidu)\n"
        "then run `faceattr data fetch wflw --root DIR --from FOLDER` with the folder holding "
        "them (extracted folders work too)."
    )


# --------------------------------------------------------------------------- finding files


@dataclass(frozen=True)
class WflwFiles:
    """Where one WFLW copy keeps its annotation lists (split -> file) and photos."""

    annotation_files: dict[str, Path]
    image_dir: Path


def _annotation_candidates(root: Path) -> list[Path]:
    """Folders that may hold the two list files directly."""
    out = []
    for base in (root, root / "WFLW"):
        ann = unwrap_folder(base / ANNOTATIONS_DIR)
        out += [ann / LIST_DIR, base / LIST_DIR, base]
    return out


def find_wflw(root: str | Path) -> WflwFiles:
    """Locate WFLW under ``root`` (the official layout, also inside ``root/WFLW/`` or with the
    archives extracted into folders of their own name). Raises a
    :class:`~faceattr.errors.DataError` saying what is missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"WFLW folder {root} does not exist.", FETCH_HINT)
    if not root.is_dir():
        raise DataError(f"WFLW root {root} is a file; pass the folder that holds it.", FETCH_HINT)
    files: dict[str, Path] | None = None
    for folder in _annotation_candidates(root):
        found = {s: folder / n for s, n in ANNOTATION_FILES.items() if (folder / n).is_file()}
        if found:
            files = found
            break
    image_dir = next(
        (
            unwrap_folder(base / IMAGES_DIR)
            for base in (root, root / "WFLW")
            if (base / IMAGES_DIR).is_dir()
        ),
        None,
    )
    missing = []
    if files is None:
        missing.append(f"{ANNOTATIONS_DIR}/{LIST_DIR}/{{{','.join(ANNOTATION_FILES.values())}}}")
    if image_dir is None:
        missing.append(f"{IMAGES_DIR}/")
    if missing:
        archives = [n for n in (ANNOTATIONS_ARCHIVE, IMAGES_ARCHIVE) if (root / n).is_file()]
        hint = FETCH_HINT
        if archives:
            hint = (
                f"{', '.join(archives)} is in {root}: extract it with `faceattr data fetch wflw "
                f"--root {root} --from {root}`."
            )
        raise DataError(f"No WFLW dataset in {root}: missing {' and '.join(missing)}.", hint)
    assert files is not None and image_dir is not None
    return WflwFiles(annotation_files=files, image_dir=image_dir)


# --------------------------------------------------------------------------- annotation lines


@dataclass(frozen=True)
class WflwFace:
    """One annotation line. ``landmarks`` ``[98, 2]`` (x, y) pixels; ``box`` the face
    rectangle (x_min, y_min, x_max, y_max); ``flags`` ``[6]`` 0/1 in
    :data:`~faceattr.attributes.WFLW_ATTRIBUTES` order; ``image`` relative to ``WFLW_images/``."""

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    flags: np.ndarray
    image: str


def parse_wflw_line(line: str) -> WflwFace:
    """Parse one annotation line; raises ``ValueError`` saying what is wrong with it."""
    fields = line.split()
    if len(fields) < N_FIELDS:
        raise ValueError(
            f"expected {N_FIELDS} fields (196 landmark coordinates, 4 box coordinates, "
            f"6 flags, the image path), found {len(fields)}"
        )
    numbers = fields[: N_FIELDS - 1 - len(WFLW_ATTRIBUTES)]
    try:
        values = np.array([float(v) for v in numbers], dtype=np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(numbers) if not _is_float(v))
        what = "landmark coordinate" if bad < 2 * N_LANDMARKS else "box coordinate"
        raise ValueError(f"field {bad + 1} ({what}) is {numbers[bad]!r}, not a number") from None
    if not np.isfinite(values).all():
        raise ValueError("a coordinate is not a finite number")
    flag_text = fields[len(numbers) : len(numbers) + len(WFLW_ATTRIBUTES)]
    for name, text in zip(WFLW_ATTRIBUTES, flag_text, strict=True):
        if text not in ("0", "1"):
            raise ValueError(f"flag {name} is {text!r}, expected 0 or 1")
    # WFLW paths hold no spaces, but keep any that a re-packaged copy might have.
    image = " ".join(fields[N_FIELDS - 1 :])
    landmarks = values[: 2 * N_LANDMARKS].reshape(N_LANDMARKS, 2).astype(np.float32)
    x0, y0, x1, y1 = (float(v) for v in values[2 * N_LANDMARKS :])
    return WflwFace(
        landmarks=landmarks,
        box=(x0, y0, x1, y1),
        flags=np.array([int(t) for t in flag_text], dtype=np.uint8),
        image=image.replace("\\", "/"),
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_wflw_line(
    landmarks: np.ndarray, box: tuple[float, float, float, float], flags, image: str
) -> str:
    """An annotation line in the release's format (landmarks with 6 decimals, integer box)."""
    coords = " ".join(f"{v:.6f}" for v in np.asarray(landmarks, dtype=np.float64).ravel())
    rect = " ".join(str(int(round(v))) for v in box)
    marks = " ".join(str(int(f)) for f in flags)
    return f"{coords} {rect} {marks} {image}"


@dataclass
class WflwAnnotations:
    """All faces of one annotation file: ``landmarks`` ``[N, 98, 2]``, ``boxes`` ``[N, 4]``,
    ``flags`` ``[N, 6]`` uint8, ``images`` ``[N]`` paths."""

    landmarks: np.ndarray
    boxes: np.ndarray
    flags: np.ndarray
    images: np.ndarray


def read_wflw_annotations(path: str | Path) -> WflwAnnotations:
    """Parse an annotation file; a malformed line raises a :class:`DataError` with the file,
    line number and reason (up to three lines are named)."""
    path = Path(path)
    faces: list[WflwFace] = []
    problems: list[str] = []
    n_bad = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    faces.append(parse_wflw_line(line))
                except ValueError as exc:
                    n_bad += 1
                    if len(problems) < 3:
                        problems.append(f"line {number}: {exc}")
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if problems:
        more = f" (and {n_bad - len(problems)} more bad lines)" if n_bad > len(problems) else ""
        raise DataError(
            f"Malformed WFLW annotation file {path}: " + "; ".join(problems) + more + ".",
            "The file looks damaged or edited; fetch it again with `faceattr data fetch wflw`.",
        )
    if not faces:
        raise DataError(f"WFLW annotation file {path} has no faces.", FETCH_HINT)
    return WflwAnnotations(
        landmarks=np.stack([f.landmarks for f in faces]),
        boxes=np.array([f.box for f in faces], dtype=np.float64),
        flags=np.stack([f.flags for f in faces]),
        images=np.array([f.image for f in faces], dtype=object),
    )


def face_crop_boxes(
    boxes: np.ndarray, margin: float = DEFAULT_MARGIN, landmarks: np.ndarray | None = None
) -> np.ndarray:
    """``[N, 4]`` square crop boxes (left, top, right, bottom) around face rectangles.

    Each box is centred on its face rectangle, with side ``max(w, h) * (1 + 2 * margin)``. A
    degenerate rectangle (zero width or height) falls back to the landmarks' extent when
    ``landmarks`` ``[N, 98, 2]`` is given. The box may leave the image: decoding pads it.
    """
    if margin < 0:
        raise UsageError(f"The face margin must be >= 0, got {margin}.")
    b = np.asarray(boxes, dtype=np.float64).copy()
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any() and landmarks is not None:
        pts = np.asarray(landmarks, dtype=np.float64)[bad]
        b[bad] = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 1.0) * (1 + 2 * margin)
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def read_wflw(
    root: str | Path | WflwFiles,
    *,
    margin: float = DEFAULT_MARGIN,
    check_images: bool = True,
) -> AttributeTable:
    """Read WFLW under ``root`` into an :class:`AttributeTable`: one row per face.

    Columns: ``image`` (path under ``WFLW_images/``), ``split`` (train/test, as released),
    ``identity`` (the photo: faces of one photo stay on one side of a validation carve, since
    lighting and blur are shared within a photo) and the crop box ``box_left, box_top,
    box_right, box_bottom`` in pixels (see :func:`face_crop_boxes`). Labels are the six flags.
    Faces whose photo is missing are dropped with a note.
    """
    files = root if isinstance(root, WflwFiles) else find_wflw(root)
    notes: list[str] = []
    parts = []
    for split in ("train", "test"):
        path = files.annotation_files.get(split)
        if path is None:
            notes.append(f"WFLW has no {split} list ({ANNOTATION_FILES[split]}); no {split} faces.")
            continue
        ann = read_wflw_annotations(path)
        degenerate = int(
            ((ann.boxes[:, 2] <= ann.boxes[:, 0]) | (ann.boxes[:, 3] <= ann.boxes[:, 1])).sum()
        )
        if degenerate:
            notes.append(
                f"{path.name}: {degenerate} face rectangle(s) are empty; their crop uses the "
                "landmarks' extent instead."
            )
        crops = face_crop_boxes(ann.boxes, margin, ann.landmarks)
        parts.append((split, ann, crops))
    images = np.concatenate([a.images for _, a, _ in parts])
    splits = np.concatenate([np.full(len(a.images), s, dtype=object) for s, a, _ in parts])
    flags = np.concatenate([a.flags for _, a, _ in parts]).astype(np.float32)
    crops = np.concatenate([c for _, _, c in parts])

    if check_images:
        present = existing_images(files.image_dir, images)
        if not present.any():
            raise DataError(
                f"None of the {len(np.unique(images)):,} photos listed in the WFLW annotations "
                f"is in {files.image_dir} (e.g. {', '.join(images[:2])}).",
                f"Extract {IMAGES_ARCHIVE} there: `faceattr data fetch wflw --root DIR --from "
                "FOLDER`.",
            )
        if not present.all():
            gone = np.unique(images[~present])
            notes.append(
                f"{len(gone):,} WFLW photos are missing from {files.image_dir} (e.g. "
                f"{', '.join(gone[:2])}); their {int((~present).sum()):,} faces are left out."
            )
            images, splits, flags, crops = (
                images[present], splits[present], flags[present], crops[present]
            )  # fmt: skip

    # A photo's identity code is its rank in name order, so codes ignore row order.
    codes, _ = pd.factorize(pd.Series(images, dtype=object), sort=True)
    frame = pd.DataFrame(
        {
            "image": pd.Series(images, dtype=object),
            "split": pd.Series(splits, dtype=object),
            "identity": pd.Series(codes, dtype="Int64"),
        }
    )
    for j, name in enumerate(BOX_COLUMNS):
        frame[name] = crops[:, j].astype(np.float32)
    n_photos = int(codes.max()) + 1 if len(codes) else 0
    notes.append(
        f"WFLW: {len(frame):,} faces in {n_photos:,} photos; each face is cut out by its "
        f"rectangle made square plus a {margin:g} margin (faces of one photo count as one "
        "identity for the validation carve)."
    )
    return AttributeTable(
        image_dir=files.image_dir,
        frame=frame,
        labels=np.ascontiguousarray(flags, dtype=np.float32),
        attributes=list(WFLW_ATTRIBUTES),
        dataset="wflw",
        notes=notes,
    )


# --------------------------------------------------------------------------- fetch


@dataclass
class WflwFetchResult:
    """What :func:`fetch_wflw` did. ``sources``: part (annotations/images) -> where it came
    from; ``faces``: split -> faces listed; ``photos`` on disk; ``notes`` for the user."""

    root: Path
    sources: dict[str, str] = field(default_factory=dict)
    faces: dict[str, int] = field(default_factory=dict)
    photos: int = 0
    missing_photos: int = 0
    already_complete: bool = False
    notes: list[str] = field(default_factory=list)


_PARTS = ("annotations", "images")
_ARCHIVE_FOR = {"annotations": ANNOTATIONS_ARCHIVE, "images": IMAGES_ARCHIVE}
_DIR_FOR = {"annotations": ANNOTATIONS_DIR, "images": IMAGES_DIR}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")


def _annotations_ok(root: Path) -> bool:
    folder = root / ANNOTATIONS_DIR / LIST_DIR
    return all((folder / n).is_file() for n in ANNOTATION_FILES.values())


def _images_ok(root: Path) -> bool:
    folder = root / IMAGES_DIR
    if not folder.is_dir():
        return False
    if not _annotations_ok(root):
        return any(True for _ in iter_images(folder))
    listed = set()
    for name in ANNOTATION_FILES.values():
        with open(
            root / ANNOTATIONS_DIR / LIST_DIR / name, encoding="utf-8", errors="replace"
        ) as fh:
            listed.update(line.split()[-1] for line in fh if line.strip())
    return bool(listed) and bool(existing_images(folder, np.array(sorted(listed), object)).all())


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


def _install_dir(root: Path, kind: str, content: Path) -> None:
    """Move ``content`` (inside a temp folder of ours) to ``root/<official name>``."""
    final = root / _DIR_FOR[kind]
    if final.exists():
        shutil.rmtree(final)  # an incomplete earlier copy of ours
    os.replace(content, final)


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
        raise UsageError(f"--from {path} does not exist.", manual_download_hint())
    found: dict[str, _Found] = {}
    if path.is_file():
        kind = _archive_kind(path)
        if kind is None:
            raise UsageError(
                f"--from {path} is not a WFLW archive (expected {ANNOTATIONS_ARCHIVE} or "
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
        kept = (
            " The partial download is kept: run the command again to resume."
            if part.exists()
            else ""
        )
        raise DownloadError(
            f"Downloading {what} failed: {exc}.{kept}", manual_download_hint()
        ) from None


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
    a fast no-op. Ends by reading the result with :func:`read_wflw`.
    """
    progress = progress or NullProgress()
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(root / "x", exc) from None
    result = WflwFetchResult(root=root)
    have = {"annotations": _annotations_ok(root), "images": False}
    have["images"] = _images_ok(root)
    if all(have.values()):
        result.already_complete = True
        return _finish(root, result)

    if from_path is not None:
        found = _scan_from(Path(from_path))
    else:  # archives the user already put in root are used (and kept), not downloaded again
        found = {
            k: _Found(archive=root / _ARCHIVE_FOR[k])
            for k in _PARTS
            if (root / _ARCHIVE_FOR[k]).is_file()
        }
    if from_path is not None:
        lacking = [k for k in _PARTS if not have[k] and k not in found]
        if lacking:
            names = " and ".join(f"{_ARCHIVE_FOR[k]} (or {_DIR_FOR[k]}/)" for k in lacking)
            raise DataError(f"--from {from_path} has no {names}.", manual_download_hint())

    for kind in ("annotations", "images"):
        if have[kind]:
            continue
        tmp = root / f".{_DIR_FOR[kind]}.extracting"
        try:
            if kind in found and found[kind].folder is not None:
                src = found[kind].folder
                assert src is not None
                if src.resolve() == (root / _DIR_FOR[kind]).resolve():
                    raise DataError(
                        f"{src} is incomplete: some photos listed in the annotations are "
                        "missing from it.",
                        manual_download_hint(),
                    )
                shutil.rmtree(tmp, ignore_errors=True)
                link_or_copy_tree(_content_dir(src, kind), tmp / _DIR_FOR[kind], progress)
                origin = str(src)
            else:
                if kind in found:
                    archive = found[kind].archive
                    assert archive is not None
                    origin = str(archive)
                else:
                    url = (
                        mirror.rstrip("/") + "/" + _ARCHIVE_FOR[kind]
                        if mirror
                        else os.environ.get(
                            ANNOTATIONS_URL_ENV if kind == "annotations" else IMAGES_URL_ENV
                        )
                        or (ANNOTATIONS_URL if kind == "annotations" else IMAGES_URL)
                    )
                    archive = root / _ARCHIVE_FOR[kind]
                    part = root / (_ARCHIVE_FOR[kind] + ".part")
                    _download(url, part, progress, timeout, _ARCHIVE_FOR[kind])
                    os.replace(part, archive)
                    origin = url
                downloaded = kind not in found
                try:
                    extract_archive(archive, tmp, progress)
                except DownloadError:
                    if downloaded:  # a damaged download must not pass for the user's file
                        archive.unlink(missing_ok=True)
                    raise
                if downloaded and not keep_archives:
                    archive.unlink()
            content = _content_dir(tmp, kind)
            _install_dir(root, kind, content)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.sources[kind] = origin
    _write_manifest(root, result)
    return _finish(root, result)


def _write_manifest(root: Path, result: WflwFetchResult) -> None:
    from faceattr.utils import atomic_write_text

    path = root / MANIFEST_NAME
    data = {}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
    data.setdefault("sources", {}).update(result.sources)
    data["fetched"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


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
