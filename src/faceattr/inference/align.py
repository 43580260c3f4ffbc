"""CelebA-style face alignment from 5 landmarks.

CelebA's ``img_align_celeba`` crops (178x218) were made by moving each face's landmarks onto
fixed positions. :func:`align_face` does the same for any photo: it fits a similarity
transform (rotation, uniform scale, translation; :func:`estimate_similarity`) from the 5
detected landmarks to :data:`CELEBA_TEMPLATE` and warps the image with it, so the model then
sees a crop like the ones it was trained on (its own centre crop/resize runs afterwards).

Coordinates are continuous pixels (pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``), the
convention of :mod:`faceattr.inference.detect` and of PIL's affine warp.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from faceattr.errors import UsageError

if TYPE_CHECKING:
    from faceattr.inference.detect import Face

CELEBA_SIZE: tuple[int, int] = (178, 218)  # (width, height) of img_align_celeba

# Published approximate means of CelebA's aligned landmarks (list_landmarks_align_celeba.txt),
# in the 178x218 frame: left eye, right eye, nose, left and right mouth corner. Kept for
# reference and tests; alignment uses the templates measured below.
PUBLISHED_CELEBA_MEANS = np.array(
    [[69, 111], [108, 111], [88, 136], [72, 152], [105, 152]], dtype=np.float32
)

# Where each detector puts the 5 landmarks on CelebA's own aligned 178x218 images, derived
# from data by tools/derive_template.py: each detector (default settings) on all 4,560
# native-size aligned images of the development sample (real CelebA, train partition), best
# face per image, images whose points average over 0.15 inter-ocular distances from the median
# dropped (turned heads, background faces: 7% / 11% / 6%), then a 20% trimmed mean per
# coordinate. RetinaFace's template is within 0.7 px on average (max 1.2 px) of the published
# means above. A per-detector template cancels each detector's own offsets (MTCNN puts every
# point about 3 px right of and below the others), so every detector reproduces CelebA's
# framing.
CELEBA_TEMPLATES: dict[str, np.ndarray] = {
    name: np.array(points, dtype=np.float32)
    for name, points in {
        "retinaface": [[69.6, 111.9], [108.4, 112.1], [88.5, 136.0], [72.0, 151.6], [105.0, 151.8]],
        "yunet": [[67.9, 111.3], [107.5, 112.1], [86.9, 134.4], [69.6, 151.2], [104.1, 152.0]],
        "mtcnn": [[71.6, 114.2], [110.9, 114.2], [90.9, 138.9], [73.6, 155.0], [108.6, 155.0]],
    }.items()
}
DEFAULT_TEMPLATE_DETECTOR = "retinaface"
CELEBA_TEMPLATE: np.ndarray = CELEBA_TEMPLATES[DEFAULT_TEMPLATE_DETECTOR]


def template_for(detector: str | None = None) -> np.ndarray:
    """The [5, 2] CelebA template measured with ``detector`` (None or unknown: the default)."""
    return CELEBA_TEMPLATES.get(detector or DEFAULT_TEMPLATE_DETECTOR, CELEBA_TEMPLATE).copy()


def _points(name: str, value: object, n: int | None = None) -> np.ndarray:
    pts = np.asarray(getattr(value, "landmarks", value), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or (n is not None and pts.shape[0] != n):
        want = f"[{n}, 2]" if n else "[N, 2]"
        raise UsageError(f"{name} must be an array of shape {want}, got shape {pts.shape}.")
    if not np.isfinite(pts).all():
        raise UsageError(f"{name} contains NaN or infinite values: {pts.tolist()}.")
    return pts


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity [2, 3] mapping points ``src`` [N, 2] onto ``dst`` [N, 2].

    Umeyama's closed form (rotation without reflection, uniform scale, translation):
    ``dst ~= M[:, :2] @ src + M[:, 2]``. Needs N >= 2 points that are not all equal.
    """
    src = _points("src", src)
    dst = _points("dst", dst, len(src))
    if len(src) < 2:
        raise UsageError(f"A similarity needs at least 2 point pairs, got {len(src)}.")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s < 1e-12:
        raise UsageError(f"The source points all coincide at {mu_s.tolist()}; cannot align.")
    cov = dc.T @ sc / len(src)  # [2, 2]
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # forbid a mirror image
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` [N, 2] mapped by the affine ``matrix`` [2, 3]."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of an affine ``matrix`` [2, 3]."""
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def output_template(
    output_size: tuple[int, int] = CELEBA_SIZE, template: np.ndarray | None = None
) -> np.ndarray:
    """The [5, 2] target points for an output of ``output_size`` (width, height).

    The 178x218 template is scaled uniformly to fit and centred, so an output with CelebA's
    aspect ratio is an exact rescale and any other keeps the face undistorted.
    """
    tpl = CELEBA_TEMPLATE if template is None else _points("template", template, 5)
    ow, oh = output_size
    s = min(ow / CELEBA_SIZE[0], oh / CELEBA_SIZE[1])
    offset = np.array([ow - CELEBA_SIZE[0] * s, oh - CELEBA_SIZE[1] * s]) / 2
    return np.asarray(tpl, dtype=np.float64) * s + offset


def alignment_matrix(
    landmarks: np.ndarray,
    *,
    output_size: tuple[int, int] = CELEBA_SIZE,
    template: np.ndarray | None = None,
) -> np.ndarray:
    """The similarity [2, 3] from image pixels to the aligned crop's pixels."""
    return estimate_similarity(
        _points("landmarks", landmarks, 5), output_template(output_size, template)
    )


def align_face(
    image: Image.Image | np.ndarray,
    landmarks: np.ndarray | Face,
    *,
    output_size: tuple[int, int] = CELEBA_SIZE,
    template: np.ndarray | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """A CelebA-like aligned crop (PIL RGB, ``output_size`` = (width, height)) of one face.

    ``landmarks`` [5, 2] (or a detected ``Face``) are in ``image`` pixels, in the detector's
    order. ``template`` defaults to the one measured with the detector that found the ``Face``
    (``template_for(face.detector)``), or :data:`CELEBA_TEMPLATE` for a bare array. Parts of
    the crop outside the photo are filled with ``fill``.
    """
    if template is None:
        template = template_for(getattr(landmarks, "detector", None))
    ow, oh = (int(v) for v in output_size)
    if ow < 1 or oh < 1:
        raise UsageError(f"output_size must be positive (width, height), got {output_size}.")
    if isinstance(image, np.ndarray):
        from faceattr.inference.detect import as_rgb_array

        image = Image.fromarray(as_rgb_array(image))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    points = _points("landmarks", landmarks, 5)  # a Face gives its .landmarks
    fwd = alignment_matrix(points, output_size=(ow, oh), template=template)
    inv = invert_affine(fwd)  # crop pixel -> image pixel, what PIL's transform wants

    # Only the part of the photo the crop sees matters: cut it out first (cheap on big photos).
    corners = transform_points(inv, np.array([[0, 0], [ow, 0], [0, oh], [ow, oh]], float))
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.width), min(y1, image.height)
    if x1 <= x0 or y1 <= y0:  # the face lies entirely outside the photo
        return Image.new("RGB", (ow, oh), fill)
    region = image.crop((x0, y0, x1, y1))
    inv = inv.copy()
    inv[:, 2] -= (x0, y0)
    # A bilinear warp that shrinks by more than 2x aliases; box-reduce the region first.
    scale = math.sqrt(abs(np.linalg.det(fwd[:, :2])))  # crop pixels per image pixel
    factor = int(1.0 / scale) if scale < 0.5 else 1
    if factor > 1:
        region = region.reduce(factor)
        inv /= factor
    return region.transform(
        (ow, oh),
        Image.Transform.AFFINE,
        inv.ravel().tolist(),
        resample=Image.Resampling.BILINEAR,
        fillcolor=fill,
    )


__all__ = [
    "CELEBA_SIZE",
    "CELEBA_TEMPLATE",
    "CELEBA_TEMPLATES",
    "PUBLISHED_CELEBA_MEANS",
    "align_face",
    "alignment_matrix",
    "estimate_similarity",
    "invert_affine",
    "output_template",
    "template_for",
    "transform_points",
]
