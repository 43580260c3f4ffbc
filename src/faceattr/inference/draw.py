"""Pictures for people who would rather look than read: annotated photos, aligned crops."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from faceattr.errors import UsageError
from faceattr.fileio import Inputs, atomic_open, input_error
from faceattr.inference.results import FaceResult, ImageResult

BOX_COLOUR = (40, 220, 90)


def _stems(images: Sequence[str]) -> dict[str, list[str]]:
    """Each input's output stem, unique among the inputs (``x``, ``x-2`` for a second
    ``x.jpg`` from another folder; compared without case, as some file systems do), per
    input name in input order."""
    stems: dict[str, list[str]] = {}
    used: set[str] = set()
    for image in images:
        stem = Path(image).stem or "image"
        candidate, n = stem, 2
        while candidate.casefold() in used:
            candidate, n = f"{stem}-{n}", n + 1
        used.add(candidate.casefold())
        stems.setdefault(image, []).append(candidate)
    return stems


def _annotated_stem(name: str) -> str | None:
    """The stem of an annotated photo's file name ``STEM.jpg``, or None."""
    return name[:-4] if name.lower().endswith(".jpg") else None


def _crop_stem(name: str) -> str | None:
    """The stem of a crop file name ``STEM_faceN.jpg``, or None."""
    found = re.fullmatch(r"(.*)_face\d+\.jpg", name, flags=re.IGNORECASE)
    return found.group(1) if found else None


class PictureWriter:
    """Writes aligned crops (``crops_dir``: ``STEM_faceN.jpg``) and annotated photos
    (``annotate_dir``: ``STEM.jpg``) of the ``images`` predicted, in their order.

    Before anything is predicted the folders are checked: a file there that an output
    would replace is refused when it is one of the inputs (always: annotating a folder of
    photos into itself) and when it exists at all unless ``overwrite``. Each write is
    checked again (:func:`faceattr.fileio.atomic_open`)."""

    def __init__(
        self,
        crops_dir: Path | None = None,
        annotate_dir: Path | None = None,
        top: int = 3,
        *,
        images: Sequence[str] = (),
        overwrite: bool = False,
        inputs: Inputs | None = None,
    ) -> None:
        self.crops_dir, self.annotate_dir, self.top = crops_dir, annotate_dir, top
        self.overwrite = overwrite
        self.inputs = inputs if inputs is not None else Inputs(images)
        self._stems = _stems(images)
        if self.wanted:
            self._check()

    @property
    def wanted(self) -> bool:
        return self.crops_dir is not None or self.annotate_dir is not None

    def _check(self) -> None:
        stems = {s.casefold() for names in self._stems.values() for s in names}
        for folder, what, ours in (
            (self.annotate_dir, "annotated photo", _annotated_stem),
            (self.crops_dir, "face crop", _crop_stem),
        ):
            if folder is None:
                continue
            folder = Path(folder)
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise UsageError(
                    f"The folder for the {what}s, {folder}, is a file.", "Name a folder."
                )
            clashes: list[Path] = []
            with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
                for entry in entries:
                    stem = ours(entry.name)
                    if stem is not None and stem.casefold() in stems:
                        clashes.append(Path(entry.path))
            clashes.sort()
            for path in clashes:
                source = self.inputs.find(path)
                if source is not None:
                    raise input_error(path, source, what)
            if clashes and not self.overwrite:
                shown = ", ".join(p.name for p in clashes[:3])
                more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
                raise UsageError(
                    f"{folder} already holds {len(clashes)} file(s) that the {what}s would "
                    f"replace ({shown}{more}); faceattr does not replace files unless asked.",
                    "Pass `overwrite=True` to replace them, or choose another folder.",
                )
            folder.mkdir(parents=True, exist_ok=True)

    def _stem(self, image: str) -> str:
        names = self._stems.get(image)
        if names:
            return names.pop(0) if len(names) > 1 else names[0]
        stem = Path(image).stem or "image"  # not announced: a name of its own
        self._stems[image] = [stem]
        return stem

    def __call__(
        self, result: ImageResult, image: Image.Image | None, crops: list[Image.Image]
    ) -> None:
        stem = self._stem(result.image)  # in input order, failed images included
        if image is None or result.error:
            return
        if self.crops_dir is not None:
            for i, crop in enumerate(crops):
                self._save(crop, Path(self.crops_dir) / f"{stem}_face{i}.jpg", "face crop")
        if self.annotate_dir is not None:
            picture = annotate(image, result.faces, self.top)
            self._save(picture, Path(self.annotate_dir) / f"{stem}.jpg", "annotated photo")

    def _save(self, image: Image.Image, path: Path, what: str) -> None:
        with atomic_open(path, "wb", what=what, overwrite=self.overwrite,
                         inputs=self.inputs) as fh:  # fmt: skip
            image.save(fh, format="JPEG", quality=92)


def annotate(image: Image.Image, faces: list[FaceResult], top: int = 3) -> Image.Image:
    """A copy of ``image`` with each face's box, landmarks and top attributes drawn."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    side = max(out.width, out.height)
    width = max(2, side // 400)
    font = _font(max(12, side // 60))
    for number, face in enumerate(faces):
        x, y, w, h = face.box
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=width)
        for px, py in face.landmarks or []:
            r = width * 1.5
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(255, 200, 0))
        text = face_label(face, number if len(faces) > 1 else None, top)
        box = draw.multiline_textbbox((x, y + h + width), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x, y + h + width), text, fill=(255, 255, 255), font=font)
    return out


def face_label(face: FaceResult, number: int | None, top: int = 3) -> str:
    """The text drawn under a face: its number (``face 0``, ``face 1``: from 0, as in
    predict's table, its JSON and CSV, the crops' file names and search; None for the only
    face of a photo) and its ``top`` present attributes."""
    probs = face.probabilities
    names = face.attributes[:top] or ["(no attribute above threshold)"]
    lines = [f"{n} {probs[n]:.2f}" if n in probs else n for n in names]
    return "\n".join(([] if number is None else [f"face {number}"]) + lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()
