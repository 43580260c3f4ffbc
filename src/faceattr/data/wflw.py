"""WFLW (Wider Facial Landmarks in-the-wild): finding and reading a copy.

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

Fetching is :mod:`faceattr.data.fetch.wflw`; a synthetic copy is written by
:func:`faceattr.data.synthetic.write_synthetic_wflw`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.attributes import WFLW_ATTRIBUTES
from faceattr.data import BOX_COLUMNS
from faceattr.data.archives import unwrap_folder
from faceattr.data.csvdata import existing_images
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError, UsageError, command

ANNOTATIONS_DIR = "WFLW_annotations"
LIST_DIR = "list_98pt_rect_attr_train_test"
ANNOTATION_FILES: dict[str, str] = {
    "train": "list_98pt_rect_attr_train.txt",
    "test": "list_98pt_rect_attr_test.txt",
}
IMAGES_DIR = "WFLW_images"
ANNOTATIONS_ARCHIVE = "WFLW_annotations.tar.gz"
IMAGES_ARCHIVE = "WFLW_images.tar.gz"

N_LANDMARKS = 98
N_FIELDS = 2 * N_LANDMARKS + 4 + len(WFLW_ATTRIBUTES) + 1  # 207: ... flags, image path
DEFAULT_MARGIN = 0.25  # crop = face box made square, plus this fraction of its side each way

FETCH_HINT = (
    "Get WFLW with `faceattr data fetch wflw --root DIR` (or, with "
    f"{ANNOTATIONS_ARCHIVE} and {IMAGES_ARCHIVE} downloaded by hand into FOLDER, "
    "`faceattr data fetch wflw --root DIR --from FOLDER`) and pass that folder as `root=DIR`."
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
            extract = command("`faceattr data fetch wflw --root {root} --from {root}`", root=root)
            hint = f"{', '.join(archives)} is in {root}: extract it with {extract}."
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
