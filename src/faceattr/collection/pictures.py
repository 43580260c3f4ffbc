"""Pictures of what an index holds: a face's thumbnail, a whole image, as JPEG bytes. A
video's face (a track) has its best crop stored in the index (:func:`crop_thumbnail`).

The paths come from the index (never from a request) and the files are untrusted like any
other: they are decoded by :func:`~faceattr.data.images.load_image` (regular files only, within
a pixel limit), so a path that is not an image gives no picture (None), never its bytes.
"""

from __future__ import annotations

import io
import math
import os
import stat

from PIL import Image

THUMBNAIL_PIXELS = 128
MARGIN = 0.25  # around a face's box, as a fraction of its larger side


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """``image`` as JPEG (RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
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
    return jpeg_bytes(image)


def image_jpeg(path: str, *, max_pixels: int | None = None) -> bytes | None:
    """The image at ``path`` upright (EXIF orientation applied: the coordinates of its faces'
    boxes), re-encoded as JPEG; None when it cannot be read."""
    image = _load(path, max_pixels)
    return None if image is None else jpeg_bytes(image, quality=90)


CROP_PIXELS = 1024 * 1024  # a stored crop is an aligned face (about 178 x 218); more is no crop


def crop_thumbnail(jpeg: bytes, size: int = THUMBNAIL_PIXELS) -> bytes | None:
    """A stored crop (a video face's) at most ``size`` pixels a side, as JPEG; None when the
    bytes are not a picture of a crop's size (a damaged or tampered index)."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.format != "JPEG" or image.width * image.height > CROP_PIXELS:
                return None
            image.load()
            image.thumbnail((size, size))
            return jpeg_bytes(image)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


# A video's container (faceattr.video.probe.container_of) -> the type it is served as.
VIDEO_TYPES = {"mp4": "video/mp4", "matroska": "video/x-matroska", "avi": "video/x-msvideo",
               "mpeg": "video/mpeg", "mpegts": "video/mp2t", "flv": "video/x-flv",
               "ogg": "video/ogg", "asf": "video/x-ms-asf"}  # fmt: skip


def indexed_video(path: str) -> tuple[os.stat_result, str] | None:
    """``(stat, media type)`` when ``path`` (an index's entry) is a regular file whose first
    bytes name a video container, checked on the open file; None otherwise (gone, not a
    regular file, or not a video whatever its name): its bytes are then never served."""
    from faceattr.reading import open_regular
    from faceattr.video.probe import container_of

    try:
        with open_regular(path) as fh:
            st = os.fstat(fh.fileno())
            container = container_of(fh.read(400))
    except (OSError, ValueError):
        return None
    if container is None or not stat.S_ISREG(st.st_mode):
        return None
    kind = VIDEO_TYPES[container]
    if container == "matroska" and path.lower().endswith(".webm"):
        kind = "video/webm"
    return st, kind
