"""Predict attributes of face images: the engine behind ``faceattr predict`` and
:func:`faceattr.predict`.

:class:`Predictor` holds a loaded model (ONNX Runtime or PyTorch, see
:mod:`faceattr.inference.backends`) with its preprocessing, test-time augmentation and
thresholds. :func:`iter_predictions` is a pipeline: worker threads decode, detect and align the
next images while the model runs on the current batch (Pillow, OpenCV and ONNX Runtime
release the GIL, so threads are enough). Its memory is bounded by decoded pixels, not by a
count of images (:class:`PixelBudget`, ``config.PIPELINE_PIXELS``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.config import NUMBER_LIMITS, PIPELINE_PIXELS, PREDICT_BATCH_SIZE, check_number
from faceattr.data.images import load_image
from faceattr.data.transforms import Preprocessing
from faceattr.errors import FaceAttrError
from faceattr.inference.align import align_face
from faceattr.inference.backends import check_finite
from faceattr.inference.detect import Detector
from faceattr.inference.results import FaceResult, ImageResult
from faceattr.malloc import release_free_memory
from faceattr.models.file import ModelFile, ModelRef
from faceattr.models.info import check_tta
from faceattr.progress import NullProgress, Progress
from faceattr.utils import default_workers, ordered_map


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


class Predictor:
    """A loaded model with its preprocessing, test-time augmentation and thresholds.

    ``model``: ``default``, a run directory, a ``.safetensors`` or an ``.onnx`` file (or a
    :class:`~faceattr.models.file.ModelFile`); ``backend``: ``auto`` (ONNX Runtime for
    ``.onnx`` files and the default model, PyTorch otherwise), ``onnx`` or ``torch``.
    ``threshold`` overrides the per-attribute thresholds stored in the model file, ``tta``
    ("none" or "flip") the model's test-time augmentation.
    """

    def __init__(
        self,
        model: ModelRef = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = PREDICT_BATCH_SIZE,
        threshold: float | None = None,
        tta: str | None = None,
        threads: int | None = None,
    ) -> None:
        if tta is not None:
            check_tta(tta)  # before the model is loaded
        if threshold is not None:
            check_number("threshold", threshold, NUMBER_LIMITS["threshold"])
        self.file = ModelFile.for_backend(model, backend)
        self.backend = self.file.open(device=device, threads=threads)
        self.path = self.file.path
        self.info = self.backend.info
        self.tta = tta if tta is not None else self.info.tta
        self.preprocessing = Preprocessing.from_info(self.info)
        self.attributes: list[str] = list(self.info.attributes)
        self.batch_size = batch_size
        self._set_thresholds(threshold)

    def _set_thresholds(self, threshold: float | None) -> None:
        if threshold is not None:
            self.thresholds = np.full(len(self.attributes), float(threshold))
        elif self.info.thresholds:
            self.thresholds = np.asarray(self.info.thresholds, dtype=np.float64)
        else:
            self.thresholds = np.full(len(self.attributes), 0.5)
        # Where each threshold comes from (FaceResult.threshold_sources): the caller's, or
        # the model's, tuned or 0.5 (a model keeps 0.5 where tuning did not beat it).
        self.threshold_sources: list[str] = [
            "given" if threshold is not None else "0.5" if t == 0.5 else "tuned"
            for t in self.thresholds
        ]
        self._threshold_map = {a: float(t) for a, t in zip(self.attributes, self.thresholds,
                                                           strict=True)}  # fmt: skip
        self._source_map = dict(zip(self.attributes, self.threshold_sources, strict=True))

    def configured(self, *, threshold: float | None = None, tta: str | None = None) -> Predictor:
        """This predictor with another ``threshold`` and/or ``tta`` (None: the model's), as
        if constructed with them; the loaded model is shared, not loaded again (the server
        answers each request with its own options from one model)."""
        if tta is not None:
            check_tta(tta)
        if threshold is not None:
            check_number("threshold", threshold, NUMBER_LIMITS["threshold"])
        view = copy.copy(self)
        view.tta = tta if tta is not None else self.info.tta
        view._set_thresholds(threshold)
        return view

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels ``[B, 3, S, S]`` (:meth:`Preprocessing.batch`) -> logits ``[B, A]``.

        With flip TTA each image and its mirror image go through the model in one batch of
        2B and their logits are averaged (as :class:`~faceattr.models.AttributeModel` does).
        """
        n = len(pixels)
        if self.tta == "flip":
            pixels = np.concatenate([pixels, pixels[..., ::-1]])
        out = check_finite(self.backend.logits(self.preprocessing.normalize(pixels)), self.path)
        if self.tta == "flip":
            out = (out[:n] + out[n:]) / 2
        return out

    def probabilities_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """``[B, A]`` probabilities for uint8 pixels ``[B, 3, S, S]``, in batches."""
        out = [
            sigmoid(self.logits(pixels[start : start + self.batch_size]))
            for start in range(0, len(pixels), self.batch_size)
        ]
        if not out:
            return np.zeros((0, len(self.attributes)), np.float32)
        return np.concatenate(out)

    def probabilities(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """``[N, A]`` probabilities for face crops laid out like CelebA's aligned images."""
        return self.probabilities_of_pixels(self.preprocessing.batch(crops))

    def present(self, probs: np.ndarray) -> list[str]:
        """The attributes present in one face's probabilities ``[A]`` at the thresholds, most
        probable first."""
        order = np.argsort(-probs)
        above = probs >= self.thresholds
        return [self.attributes[i] for i in order if above[i]]

    def face_result(self, face: _Face, probs: np.ndarray) -> FaceResult:
        """One face's :class:`FaceResult` from its probabilities ``[A]``."""
        return FaceResult(
            box=face.box,
            score=face.score,
            landmarks=face.landmarks,
            probabilities={
                a: round(float(p), 4) for a, p in zip(self.attributes, probs, strict=True)
            },
            attributes=self.present(probs),
            thresholds=dict(self._threshold_map),
            threshold_sources=dict(self._source_map),
            probability_array=probs,
        )

    def image_result(self, item: _Item, probs: np.ndarray) -> ImageResult:
        """One image's :class:`ImageResult` from its prepared item and its faces'
        probabilities ``[len(item.faces), A]`` (in the item's face order)."""
        result = ImageResult(image=item.image, error=item.error)
        if item.size is not None:
            result.width, result.height = item.size
        result.faces = [self.face_result(f, p) for f, p in zip(item.faces, probs, strict=True)]
        return result


@dataclass
class _Face:
    box: list[float]
    score: float
    # Dropped once preprocessed unless a callback draws it (with no_detect it is the whole
    # image, which would otherwise stay in memory until the batch).
    crop: Image.Image | None
    landmarks: list[list[float]] | None = None
    pixels: np.ndarray | None = None  # the model's input, made by the worker thread


@dataclass
class _Item:
    image: str
    faces: list[_Face] = field(default_factory=list)
    size: tuple[int, int] | None = None
    error: str | None = None
    picture: Image.Image | None = None  # kept only when a callback wants to draw on it
    pixels: int = 0  # the picture's share of the pixel budget, given back by the consumer


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


# An image this large gives the memory it was decoded into back to the kernel when it is
# done (faceattr.malloc keeps freed heap otherwise, per worker thread).
TRIM_PIXELS = 8_000_000


class PipelineStopped(Exception):
    """The pipeline was left (an error, or its consumer stopped): a worker waiting for the
    pixel budget gives up."""


class PixelBudget:
    """The decoded pixels the pipeline holds at once.

    An image takes its pixels (:meth:`take`) once its header is read, before it is decoded,
    and waits while the pixels in flight plus its own would pass ``limit``; an image larger
    than the limit goes alone (nothing else in flight). Images take their turn in input order
    (``ticket``): a later image never takes the pixels an earlier one waits for, so the
    consumer, which needs them in order, is never left waiting for an image that waits for
    it. ``peak`` is the most pixels ever in flight.
    """

    def __init__(self, limit: int | None = PIPELINE_PIXELS) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._turn = 0
        self._passed: set[int] = set()  # tickets that took no pixels (failed before decoding)
        self._closed = False
        self._cond = threading.Condition()

    def fits(self, ticket: int, pixels: int) -> bool:
        """Whether ``ticket`` may take ``pixels`` now."""
        if ticket != self._turn:
            return False
        return self.limit is None or self.in_flight == 0 or self.in_flight + pixels <= self.limit

    def _advance(self) -> None:
        self._turn += 1
        while self._turn in self._passed:
            self._passed.discard(self._turn)
            self._turn += 1
        self._cond.notify_all()

    def take(self, ticket: int, pixels: int) -> None:
        """Wait for ``ticket``'s turn and room for ``pixels``, then hold them."""
        with self._cond:
            while not self._closed and not self.fits(ticket, pixels):
                self._cond.wait()
            if self._closed:
                raise PipelineStopped
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
            self._advance()

    def skip(self, ticket: int) -> None:
        """``ticket`` takes no pixels (its image failed before decoding): its turn passes."""
        with self._cond:
            if ticket == self._turn:
                self._advance()
            elif ticket > self._turn:
                self._passed.add(ticket)

    def give_back(self, pixels: int) -> None:
        with self._cond:
            self.in_flight -= pixels
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting worker (it raises :class:`PipelineStopped`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True)
class Upload:
    """An image given as its file's bytes (a server's upload): ``name`` names it in the result
    and in messages; the bytes are decoded as a file's would be."""

    name: str
    data: bytes = field(repr=False)

    def __str__(self) -> str:
        return self.name


Source = str | Path | Image.Image | Upload


def _load(
    source: Source,
    max_pixels: int | None,
    take: Callable[[tuple[int, int]], None],
) -> tuple[str, Image.Image]:
    if isinstance(source, Image.Image):
        take(source.size)
        return "<image>", source.convert("RGB")
    if isinstance(source, Upload):
        image = load_image(source.name, max_pixels=max_pixels, before_decode=take,
                           data=source.data)  # fmt: skip
        return source.name, image
    return str(source), load_image(source, max_pixels=max_pixels, before_decode=take)


class _Prepare:
    """One source -> an :class:`_Item` with its faces found, aligned and preprocessed; runs
    in the worker threads. Detectors that are not thread-safe run under a lock. Each image
    holds its pixels of the ``budget`` while it is decoded and worked on (and, when the
    picture is kept for a callback, until the consumer takes the item)."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        detector: Detector | None,
        max_pixels: int | None,
        keep_picture: bool,
        budget: PixelBudget,
    ) -> None:
        self.preprocessing = preprocessing
        self.detector = detector
        self.max_pixels = max_pixels
        self.keep_picture = keep_picture
        self.budget = budget
        safe = detector is None or getattr(detector, "thread_safe", False)
        self.lock: threading.Lock | None = None if safe else threading.Lock()

    def _detect(self, image: Image.Image) -> list[_Face]:
        if self.detector is None:
            return faces_whole_image(image)
        if self.lock is None:
            return faces_detected(image, self.detector)
        with self.lock:
            return faces_detected(image, self.detector)

    def __call__(self, job: tuple[int, Source]) -> _Item:
        ticket, source = job
        held = 0  # pixels this call holds
        taken = False

        def take(size: tuple[int, int]) -> None:
            nonlocal held, taken
            self.budget.take(ticket, size[0] * size[1])
            held, taken = size[0] * size[1], True

        try:
            try:
                name, image = _load(source, self.max_pixels, take)
            except FaceAttrError as exc:
                return _Item(image=str(source), error=exc.message)
            item = _Item(image=name, size=(image.width, image.height), faces=self._detect(image))
            for face in item.faces:
                assert face.crop is not None
                face.pixels = self.preprocessing.pixels(face.crop)
                if not self.keep_picture:
                    face.crop = None
            if self.keep_picture:
                item.picture, item.pixels, held = image, held, 0  # the consumer gives them back
            del image  # before the pixels go back to the budget (and the heap is trimmed)
            return item
        finally:
            if not taken:
                self.budget.skip(ticket)
            elif held:
                self.budget.give_back(held)
                if held >= TRIM_PIXELS:
                    release_free_memory()


# Called once per image with (result, the decoded image or None, aligned crops per face).
OnImage = Callable[[ImageResult, Image.Image | None, list[Image.Image]], None]


def iter_predictions(
    sources: Iterable[Source],
    predictor: Predictor,
    *,
    detector: Detector | None = None,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    on_image: OnImage | None = None,
    workers: int | None = None,
    budget: PixelBudget | None = None,
) -> Iterator[ImageResult]:
    """Yield one :class:`ImageResult` per source, in order, batching faces across images.

    With a ``detector`` every face found is aligned and predicted; without one the whole
    image is taken as an aligned face crop. An unreadable source yields a result with
    ``error`` set instead of raising. ``workers`` threads (default: one per core, at most 4;
    0: none) prepare the next images while the model runs, within ``budget`` (default:
    ``config.PIPELINE_PIXELS`` decoded pixels at once; with ``on_image``, the pictures
    waiting for their batch have a budget of the same size besides).
    """
    progress = progress or NullProgress()
    progress.start("predicting", total=total)
    workers = default_workers() if workers is None else workers
    budget = budget if budget is not None else PixelBudget(PIPELINE_PIXELS)
    prepare = _Prepare(predictor.preprocessing, detector, max_pixels, on_image is not None,
                       budget)  # fmt: skip
    pending: list[_Item] = []
    n_faces = pictures = 0

    def flush() -> Iterator[ImageResult]:
        faces = [f for item in pending for f in item.faces]
        probs = np.zeros((0, len(predictor.attributes)), np.float32)
        if faces:
            pixels = np.stack([f.pixels for f in faces if f.pixels is not None])
            probs = predictor.probabilities_of_pixels(pixels)
        k = 0
        for item in pending:
            result = predictor.image_result(item, probs[k : k + len(item.faces)])
            k += len(item.faces)
            if on_image is not None:
                on_image(result, item.picture, [f.crop for f in item.faces if f.crop])
            item.picture = None
            yield result
        progress.advance(len(pending))
        large = any(item.pixels >= TRIM_PIXELS for item in pending)
        pending.clear()
        if large:
            release_free_memory()

    ahead = max(2 * predictor.batch_size, 4 * workers)
    prepared = ordered_map(prepare, enumerate(sources), workers, ahead)
    try:
        for item in prepared:
            pending.append(item)
            n_faces += len(item.faces)
            # A kept picture leaves the budget here (the workers go on), and the pictures
            # waiting for their batch are bounded by a budget of their own.
            budget.give_back(item.pixels)
            pictures += item.pixels
            full = budget.limit is not None and pictures >= budget.limit
            if full or n_faces >= predictor.batch_size or len(pending) >= 4 * predictor.batch_size:
                yield from flush()
                n_faces = pictures = 0
        yield from flush()
    finally:
        budget.close()  # a worker still waiting gives up, so the pool can shut down
        prepared.close()
    progress.finish()
