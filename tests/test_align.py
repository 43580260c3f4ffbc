"""Similarity estimation and CelebA-style alignment (pure numpy/PIL: no detector needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from faceattr.errors import UsageError
from faceattr.inference.align import (
    CELEBA_SIZE,
    CELEBA_TEMPLATE,
    CELEBA_TEMPLATES,
    PUBLISHED_CELEBA_MEANS,
    align_face,
    estimate_similarity,
    invert_affine,
    output_template,
    template_for,
    transform_points,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    t = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return np.hstack([rot, np.array(shift)[:, None]])


def test_estimate_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    m = similarity(23.0, 1.7, (-40.0, 12.5))
    est = estimate_similarity(src, transform_points(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)
    # Angle and scale read back from the matrix.
    assert math.degrees(math.atan2(est[1, 0], est[0, 0])) == pytest.approx(23.0)
    assert math.hypot(est[0, 0], est[1, 0]) == pytest.approx(1.7)


def test_estimate_similarity_is_least_squares_with_noise() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(200, 2))
    m = similarity(-15.0, 0.6, (30.0, 5.0))
    dst = transform_points(m, src) + rng.normal(0, 0.5, size=src.shape)
    est = estimate_similarity(src, dst)
    np.testing.assert_allclose(est[:, :2], m[:, :2], atol=0.01)
    np.testing.assert_allclose(est[:, 2], m[:, 2], atol=0.5)
    # Its residual is no bigger than the true transform's (it is the least-squares fit).
    res = np.linalg.norm(transform_points(est, src) - dst)
    assert res <= np.linalg.norm(transform_points(m, src) - dst) + 1e-9


def test_estimate_similarity_never_mirrors() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [3.0, 7.0]])
    mirrored = src * [-1.0, 1.0]
    est = estimate_similarity(src, mirrored)
    assert np.linalg.det(est[:, :2]) > 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.zeros((5, 3)), np.zeros((5, 3))),  # not 2-D points
        (np.ones((5, 2)), np.ones((4, 2))),  # different counts
        (np.ones((5, 2)), np.ones((5, 2))),  # all source points coincide
        (np.ones((1, 2)), np.ones((1, 2))),  # one pair
        (np.full((5, 2), np.nan), np.ones((5, 2))),
    ],
)
def test_estimate_similarity_rejects_bad_points(src: np.ndarray, dst: np.ndarray) -> None:
    with pytest.raises(UsageError):
        estimate_similarity(src, dst)


def test_templates_are_in_the_celeba_frame_and_near_the_published_means() -> None:
    assert CELEBA_TEMPLATE.shape == (5, 2)
    for name, tpl in CELEBA_TEMPLATES.items():
        assert tpl.shape == (5, 2), name
        # Measured templates agree with the published means to within a few pixels.
        assert np.abs(tpl - PUBLISHED_CELEBA_MEANS).max() < 5.0, name
    np.testing.assert_array_equal(template_for(None), CELEBA_TEMPLATE)
    np.testing.assert_array_equal(template_for("no-such-detector"), CELEBA_TEMPLATE)


def test_output_template_scales_with_the_output_size() -> None:
    np.testing.assert_allclose(output_template(CELEBA_SIZE), CELEBA_TEMPLATE, atol=1e-6)
    np.testing.assert_allclose(output_template((356, 436)), CELEBA_TEMPLATE * 2, atol=1e-5)
    # A square output keeps the face undistorted and centred.
    sq = output_template((218, 218))
    np.testing.assert_allclose(sq[:, 1], CELEBA_TEMPLATE[:, 1], atol=1e-5)
    np.testing.assert_allclose(sq[:, 0], CELEBA_TEMPLATE[:, 0] + 20, atol=1e-5)


def dotted_photo(m: np.ndarray, size: tuple[int, int], radius: float) -> Image.Image:
    """A grey photo with a coloured disc at each template point carried by ``m``."""
    img = Image.new("RGB", size, (90, 90, 90))
    draw = ImageDraw.Draw(img)
    for (x, y), c in zip(transform_points(m, CELEBA_TEMPLATE), COLOURS, strict=True):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=c)
    return img


def disc_centres(img: Image.Image) -> np.ndarray:
    """Centroid (continuous pixels) of each colour's disc, weighted by closeness to it.

    Any blend of a disc colour with grey or another disc differs from the pure colour by at
    least 90 in some channel at half coverage, so the weights ignore other discs' edges.
    """
    a = np.asarray(img).astype(np.float64)
    out = []
    for c in COLOURS:
        w = np.clip(1.0 - np.abs(a - c).max(axis=2) / 90.0, 0, None)  # 1 on the disc, 0 on grey
        ys, xs = np.nonzero(w)
        out.append(
            [
                (xs * w[ys, xs]).sum() / w[ys, xs].sum() + 0.5,
                (ys * w[ys, xs]).sum() / w[ys, xs].sum() + 0.5,
            ]
        )
    return np.array(out)


@pytest.mark.parametrize(
    ("angle", "scale", "shift", "size"),
    [
        (0.0, 1.0, (0.0, 0.0), (178, 218)),  # already aligned: a no-op
        (25.0, 2.3, (150.0, -80.0), (700, 600)),
        (-18.0, 0.8, (40.0, 60.0), (300, 340)),  # a small face: enlarged
        (170.0, 6.0, (1500.0, 1600.0), (1600, 1500)),  # upside down, big: reduce path
    ],
)
def test_align_face_puts_the_landmarks_on_the_template(
    angle: float, scale: float, shift: tuple[float, float], size: tuple[int, int]
) -> None:
    m = similarity(angle, scale, shift)
    photo = dotted_photo(m, size, radius=3.0 * scale)
    landmarks = transform_points(m, CELEBA_TEMPLATE)
    crop = align_face(photo, landmarks)
    assert crop.size == CELEBA_SIZE and crop.mode == "RGB"
    np.testing.assert_allclose(disc_centres(crop), CELEBA_TEMPLATE, atol=0.6)


def test_align_face_output_size_and_inputs() -> None:
    m = similarity(10.0, 1.5, (20.0, 10.0))
    photo = dotted_photo(m, (400, 420), radius=4.0)
    landmarks = transform_points(m, CELEBA_TEMPLATE)
    # numpy input, a Face-like object, and a bigger output of the same aspect ratio.
    face = type("FaceLike", (), {"landmarks": landmarks})()
    crop = align_face(np.asarray(photo), face, output_size=(356, 436))
    assert crop.size == (356, 436)
    np.testing.assert_allclose(disc_centres(crop), CELEBA_TEMPLATE * 2, atol=1.0)


def test_align_face_fills_outside_the_photo() -> None:
    # Landmarks far outside the photo: the crop is all fill colour, not an error.
    landmarks = CELEBA_TEMPLATE + 5000
    crop = align_face(Image.new("RGB", (64, 64), (200, 0, 0)), landmarks, fill=(1, 2, 3))
    assert crop.getcolors() == [(178 * 218, (1, 2, 3))]


def test_align_face_rejects_bad_landmarks() -> None:
    with pytest.raises(UsageError, match=r"\[5, 2\]"):
        align_face(Image.new("RGB", (64, 64)), np.zeros((4, 2)))
    with pytest.raises(UsageError, match="output_size"):
        align_face(Image.new("RGB", (64, 64)), CELEBA_TEMPLATE, output_size=(0, 10))


def test_invert_affine_round_trips() -> None:
    m = similarity(33.0, 0.4, (7.0, -3.0))
    pts = np.array([[1.0, 2.0], [30.0, -4.0]])
    np.testing.assert_allclose(transform_points(invert_affine(m), transform_points(m, pts)), pts)
