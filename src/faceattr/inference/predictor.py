"""Predict attributes of face images: the engine behind ``faceattr predict`` and
:func:`faceattr.predict`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from faceattr.data.images import load_image
from faceattr.data.transforms import Preprocessing
from faceattr.errors import FaceAttrError
from faceattr.inference.align import align_face
from faceattr.inference.detect import Detector, create_detector
from faceattr.progress import NullProgress, Progress
from faceattr.runs import resolve_model
from faceattr.utils import resolve_device


class Predictor:
    """A loaded model with its preprocessing and decision thresholds.

    ``threshold`` overrides the per-attribute thresholds stored in the model file, ``tta``
    ("none" or "flip") the model's test-time augmentation.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        threshold: float | None = None,
        tta: str | None = None,
    ) -> None:
        from faceattr.models import load_model_file
        from faceattr.models.head import check_tta

        if tta is not None:
            check_tta(tta)  # before the model is loaded
        self.path = resolve_model(model)
        self.device = resolve_device(device)
        self.model, self.info = load_model_file(self.path, device=str(self.device))
        if tta is not None:
            self.model.tta = tta
        self.preprocessing = Preprocessing.from_info(self.info)
        self.attributes: list[str] = list(self.info.attributes)
        self.batch_size = batch_size
        if threshold is not None:
            self.thresholds = np.full(len(self.attributes), float(threshold))
        elif self.info.thresholds:
            self.thresholds = np.asarray(self.info.thresholds, dtype=np.float64)
        else:
            self.thresholds = np.full(len(self.attributes), 0.5)

    @torch.no_grad()
    def probabilities(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """``[N, A]`` probabilities for face crops laid out like CelebA's aligned images."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            pixels = self.preprocessing.batch(crops[start : start + self.batch_size])
            x = torch.from_numpy(pixels).to(self.device)
            logits = self.model(self.preprocessing.normalize(x))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.attributes)), np.float32)
        return np.concatenate(out)

    def describe(self, probs: np.ndarray) -> dict[str, Any]:
        """One face's ``probabilities`` (name -> p) and present ``attributes`` (by probability)."""
        present = probs >= self.thresholds
        order = np.argsort(-probs)
        return {
            "probabilities": {
                a: round(float(p), 4) for a, p in zip(self.attributes, probs, strict=True)
            },
            "attributes": [self.attributes[i] for i in order if present[i]],
        }


@dataclass
class _Face:
    box: list[float]
    score: float
    crop: Image.Image
    landmarks: list[list[float]] | None = None


@dataclass
class _Item:
    image: str
    faces: list[_Face] = field(default_factory=list)
    size: tuple[int, int] | None = None
    error: str | None = None
    picture: Image.Image | None = None  # kept only when a callback wants to draw on it


def faces_whole_image(image: Image.Image) -> list[_Face]:
    """``--no-detect``: the whole image is one face already aligned like CelebA's crops."""
    return [_Face(box=[0.0, 0.0, float(image.width), float(image.height)], score=1.0, crop=image)]


def faces_detected(image: Image.Image, detector: Detector) -> list[_Face]:
    """Each face ``detector`` finds, aligned onto the CelebA template (178x218 crop)."""
    faces = []
    for face in detector.detect(image):
        d = face.to_dict()
        faces.append(
            _Face(box=d["box"], score=d["score"], crop=align_face(image, face),
                  landmarks=d["landmarks"])
        )  # fmt: skip
    return faces


def _load(source: str | Path | Image.Image, max_pixels: int | None) -> tuple[str, Image.Image]:
    if isinstance(source, Image.Image):
        return "<image>", source.convert("RGB")
    return str(source), load_image(source, max_pixels=max_pixels)


# Called once per image with (result, the decoded image or None, aligned crops per face).
OnImage = Callable[[dict[str, Any], Image.Image | None, list[Image.Image]], None]


def iter_predictions(
    sources: Iterable[str | Path | Image.Image],
    predictor: Predictor,
    *,
    detector: Detector | None = None,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    on_image: OnImage | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one result dict per source, in order, batching faces across images.

    With a ``detector`` every face found is aligned and predicted; without one the whole
    image is taken as an aligned face crop. An unreadable source yields an entry with
    ``error`` set instead of raising.
    """
    progress = progress or NullProgress()
    progress.start("predicting", total=total)
    pending: list[_Item] = []
    n_faces = 0

    def flush() -> Iterator[dict[str, Any]]:
        probs = predictor.probabilities([f.crop for item in pending for f in item.faces])
        k = 0
        for item in pending:
            faces = []
            for face in item.faces:
                entry: dict[str, Any] = {"box": face.box, "score": face.score}
                if face.landmarks is not None:
                    entry["landmarks"] = face.landmarks
                entry.update(predictor.describe(probs[k]))
                faces.append(entry)
                k += 1
            result: dict[str, Any] = {"image": item.image}
            if item.size is not None:
                result["width"], result["height"] = item.size
            result.update(faces=faces, error=item.error)
            if on_image is not None:
                on_image(result, item.picture, [f.crop for f in item.faces])
            yield result
        progress.advance(len(pending))
        pending.clear()

    for source in sources:
        try:
            name, image = _load(source, max_pixels)
        except FaceAttrError as exc:
            pending.append(_Item(image=str(source), error=exc.message))
            continue
        item = _Item(image=name, size=(image.width, image.height))
        item.faces = faces_whole_image(image) if detector is None else faces_detected(
            image, detector
        )  # fmt: skip
        if on_image is not None:
            item.picture = image
        pending.append(item)
        n_faces += len(item.faces)
        if n_faces >= predictor.batch_size or len(pending) >= 4 * predictor.batch_size:
            yield from flush()
            n_faces = 0
    yield from flush()
    progress.finish()


def predict(
    images: str | Path | Image.Image | Iterable[str | Path | Image.Image],
    model: str | Path | None = "default",
    *,
    threshold: float | None = None,
    detect: bool = True,
    detector: str | None = None,
    min_score: float | None = None,
    min_face_size: float = 20.0,
    max_faces: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
    tta: str | None = None,
) -> list[dict[str, Any]]:
    """Attributes of the faces in ``images`` (paths or PIL images).

    Each face is found by a detector (``detector`` names one; None: the default) and aligned
    like CelebA's crops; ``detect=False`` takes each whole image as an aligned crop.
    Returns one dict per image: ``{"image", "width", "height", "faces": [{"box": [x, y, w,
    h], "score", "landmarks": [[x, y] x 5], "probabilities": {attribute: p}, "attributes":
    [present, most probable first]}], "error"}``. ``tta`` ("none" or "flip") overrides the
    model's test-time augmentation.
    """
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    predictor = Predictor(model, device=device, batch_size=batch_size, threshold=threshold, tta=tta)
    found = None
    if detect:
        found = create_detector(
            detector, min_score=min_score, min_face_size=min_face_size, max_faces=max_faces
        )
    return list(iter_predictions(images, predictor, detector=found))
