"""Pictures of what an index holds: a face's thumbnail, a whole image, as JPEG bytes.

The paths come from the index (never from a request) and the files are untrusted like any
other: they are decoded by :func:`~faceattr.data.images.load_image` (regular files only, within
a pixel limit), so a path that is not an image gives no picture (None), never its bytes.
"""

from __future__ import annotations

import io
import math

from PIL import Image

THUMBNAIL_PIXELS = 128
MARGIN = 0.25  # around a face's box, as a fraction of its larger side


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _load(path: str, max_pixels: int | None) -> Image.Image | None:
    from faceattr.data.images import load_image
    from faceattr.errors import FaceAttrError

    try:
        return load_image(path, max_pixels=max_pixels)
    except FaceAttrError:  # gone, unreadable, not an image, too large
        return None


def face_thumbnail(
    path: str, box: list[float], size: int = THUMBNAIL_PIXELS, *, max_pixels: int | None = None
) -> bytes | None:
    """A JPEG of the face at ``box`` ([x, y, w, h] in pixels) with a margin, at most ``size``
    pixels a side; the whole image when the box is not a box; None when the image cannot be
    read."""
    image = _load(path, max_pixels)
    if image is None:
        return None
    if len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0:
        x, y, w, h = box
        m = MARGIN * max(w, h)
        left, top = max(0, int(x - m)), max(0, int(y - m))
        right, bottom = min(image.width, int(x + w + m)), min(image.height, int(y + h + m))
        if right > left and bottom > top:
            image = image.crop((left, top, right, bottom))
    image.thumbnail((size, size))
    return _jpeg(image)


def image_jpeg(path: str, *, max_pixels: int | None = None) -> bytes | None:
    """The image at ``path`` upright (EXIF orientation applied: the coordinates of its faces'
    boxes), re-encoded as JPEG; None when it cannot be read."""
    image = _load(path, max_pixels)
    return None if image is None else _jpeg(image, quality=90)
