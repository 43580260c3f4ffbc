"""Pictures for people who would rather look than read: annotated photos, aligned crops."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from faceattr.fileio import atomic_open
from faceattr.inference.results import FaceResult, ImageResult

BOX_COLOUR = (40, 220, 90)


def _output_name(folder: Path, image: str, suffix: str, used: set[Path]) -> Path:
    stem = Path(image).stem or "image"
    path, n = folder / f"{stem}{suffix}.jpg", 2
    while path in used:  # same file name from two folders
        path, n = folder / f"{stem}-{n}{suffix}.jpg", n + 1
    used.add(path)
    return path


class PictureWriter:
    """Writes aligned crops (``crops_dir``) and annotated photos (``annotate_dir``)."""

    def __init__(
        self, crops_dir: Path | None = None, annotate_dir: Path | None = None, top: int = 3
    ) -> None:
        self.crops_dir, self.annotate_dir, self.top = crops_dir, annotate_dir, top
        self._used: set[Path] = set()
        for d in (crops_dir, annotate_dir):
            if d is not None:
                Path(d).mkdir(parents=True, exist_ok=True)

    @property
    def wanted(self) -> bool:
        return self.crops_dir is not None or self.annotate_dir is not None

    def __call__(
        self, result: ImageResult, image: Image.Image | None, crops: list[Image.Image]
    ) -> None:
        if image is None or result.error:
            return
        if self.crops_dir is not None:
            for i, crop in enumerate(crops):
                path = _output_name(Path(self.crops_dir), result.image, f"_face{i}", self._used)
                _save_jpeg(crop, path)
        if self.annotate_dir is not None:
            path = _output_name(Path(self.annotate_dir), result.image, "", self._used)
            _save_jpeg(annotate(image, result.faces, self.top), path)


def annotate(image: Image.Image, faces: list[FaceResult], top: int = 3) -> Image.Image:
    """A copy of ``image`` with each face's box, landmarks and top attributes drawn."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    side = max(out.width, out.height)
    width = max(2, side // 400)
    font = _font(max(12, side // 60))
    for face in faces:
        x, y, w, h = face.box
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=width)
        for px, py in face.landmarks or []:
            r = width * 1.5
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(255, 200, 0))
        probs = face.probabilities
        names = face.attributes[:top] or ["(no attribute above threshold)"]
        lines = [f"{n} {probs[n]:.2f}" if n in probs else n for n in names]
        text = "\n".join(lines)
        box = draw.multiline_textbbox((x, y + h + width), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x, y + h + width), text, fill=(255, 255, 255), font=font)
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _save_jpeg(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        image.save(fh, format="JPEG", quality=92)
