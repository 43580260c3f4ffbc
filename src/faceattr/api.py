"""The Python API: ``faceattr.predict``, ``faceattr.index`` and ``faceattr.search``.

Each is its command as a function: the same inputs (files and folders), the option names of
the command line (``--no-detect`` is ``no_detect=True``, ``--min-face-size 40`` is
``min_face_size=40``), and the same answer as the command's ``--json`` output (see
docs/formats.md). Importing this module is cheap; each function imports what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faceattr.config import MIN_FACE_SIZE, PREDICT_BATCH_SIZE, VIDEO_TRACK_GAP

if TYPE_CHECKING:
    from PIL import Image

    from faceattr.models.file import ModelRef

PathLike = str | os.PathLike[str]


def predict(
    images: PathLike | Image.Image | Iterable[PathLike | Image.Image],
    model: ModelRef = "default",
    *,
    backend: str = "auto",
    threshold: float | None = None,
    tta: str | None = None,
    no_detect: bool = False,
    detector: str | None = None,
    min_score: float | None = None,
    min_face_size: float = MIN_FACE_SIZE,
    max_faces: int | None = None,
    recursive: bool = False,
    batch_size: int = PREDICT_BATCH_SIZE,
    workers: int | None = None,
    device: str = "auto",
    max_pixels: int | None = None,
    every: int = 1,
    start: float = 0.0,
    end: float | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    track_gap: float = VIDEO_TRACK_GAP,
    frames: bool = False,
) -> list[dict[str, Any]]:
    """The attributes of the faces in ``images``, as ``faceattr predict --json`` says them.

    ``images``: image files, folders (their images; ``recursive`` for subfolders) or PIL
    images, one or several. Each face is found, aligned like CelebA's crops and predicted;
    ``no_detect=True`` takes each whole image as an aligned crop. One dict per image::

        {"image", "width", "height",
         "faces": [{"box": [x, y, w, h], "score", "landmarks": [[x, y] x 5],
                    "probabilities": {attribute: p}, "attributes": [present, most probable first],
                    "thresholds": {attribute: t}, "threshold_sources": {attribute: source}}],
         "error"}

    An attribute is present when its probability is at or above its threshold; its source is
    ``"tuned"`` (the model's, tuned on validation data), ``"0.5"`` or ``"given"``
    (``threshold``).

    A video among them (``pip install "faceattr[video]"``) gets ``predict --json``'s entry for
    a video: one track per person, read and tracked as ``every``, ``start``, ``end``, ``fps``,
    ``max_frames``, ``track_gap`` and ``frames`` say (docs/video.md).

    An image that cannot be read has ``error`` set and no faces. ``model``: ``default``, a
    run directory, a ``.safetensors`` or ``.onnx`` file; ``backend``: ``auto`` (ONNX Runtime
    for ``.onnx`` files and the default model), ``onnx`` or ``torch``; ``threshold``: one
    decision threshold instead of the model's; ``tta``: ``none`` or ``flip`` instead of the
    model's test-time augmentation.
    """
    from PIL import Image

    from faceattr.data.images import IMAGE_EXTENSIONS, expand_image_paths
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions
    from faceattr.video.pipeline import VideoOptions, predict_video
    from faceattr.video.probe import VIDEO_EXTENSIONS, in_input_order, is_video_input

    options = VideoOptions(every=every, start=start, end=end, fps=fps, max_frames=max_frames,
                           track_gap=track_gap, frames=frames)  # fmt: skip
    options.check()

    items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)
    sources: list[Any] = []
    for item in items:  # folders expand in place: results come in the order given
        if isinstance(item, Image.Image):
            sources.append(item)
        else:
            found = expand_image_paths([os.fspath(item)], recursive,
                                       IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)  # fmt: skip
            sources.extend(found[0])
    predictor = Predictor(model, backend=backend, device=device, batch_size=batch_size,
                          threshold=threshold, tta=tta)  # fmt: skip
    face_detector = None if no_detect else create_detector(
        detector, min_score=min_score, min_face_size=min_face_size, max_faces=max_faces
    )  # fmt: skip
    is_video = [is_video_input(s) for s in sources]
    photos = [s for s, v in zip(sources, is_video, strict=True) if not v]
    results = list(iter_predictions(photos, predictor, detector=face_detector, workers=workers,
                                    max_pixels=max_pixels))  # fmt: skip
    videos = [predict_video(s, predictor, detector=face_detector, options=options,
                            workers=workers, max_pixels=max_pixels)
              for s, v in zip(sources, is_video, strict=True) if v]  # fmt: skip
    return [r.to_json() for r in in_input_order(is_video, results, videos)]


def index(
    paths: PathLike | Iterable[PathLike],
    db: PathLike = "library.db",
    *,
    model: ModelRef = "default",
    no_detect: bool = False,
    detector: str | None = None,
    min_score: float | None = None,
    min_face_size: float = MIN_FACE_SIZE,
    max_faces: int | None = None,
    workers: int | None = None,
    reindex: bool = False,
    prune: bool = False,
    every: int = 1,
    fps: float | None = None,
) -> dict[str, Any]:
    """Index the faces of the images and videos under ``paths`` into ``db`` (an SQLite file,
    or a ``postgresql://`` URL), incrementally, as ``faceattr index`` does; its ``--json``
    summary. A video's faces are its tracks (``every``, ``fps``: as :func:`predict` reads it).
    ``no_detect=True``: each whole image is an aligned face crop (as in :func:`predict`).
    A path is stored in one form however it is spelled (absolute, its folders' links
    resolved), so indexing ``"../photos"`` and then ``"/abs/photos"`` adds nothing twice.
    """
    from faceattr.collection.indexer import index_folders

    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    roots = [os.fspath(p) for p in given]
    summary = index_folders(
        roots, os.fspath(db), model=model, no_detect=no_detect, detector=detector,
        min_score=min_score, min_face_size=min_face_size, max_faces=max_faces, workers=workers,
        reindex=reindex, prune=prune, every=every, fps=fps,
    )  # fmt: skip
    return summary.to_json()


def search(
    query: str | None = None,
    db: PathLike = "library.db",
    *,
    like: PathLike | None = None,
    limit: int | None = 20,
) -> dict[str, Any]:
    """Faces of the index ``db`` matching ``query`` (e.g. ``"Eyeglasses and not Male"``), or
    (``like=IMAGE``) nearest to the face in an image, best first, as ``faceattr search
    --json`` says them: ``{"query" or "like", "db", "results": [...]}``. ``limit``: at most
    this many faces (None: all)."""
    from faceattr.collection.search import like_image, search_index
    from faceattr.errors import UsageError

    if (query is None) == (like is None):
        raise UsageError("Pass a query or `like=IMAGE` (one of them).")
    if like is not None:
        return like_image(os.fspath(like), os.fspath(db), limit=limit).to_json()
    assert query is not None
    return search_index(query, os.fspath(db), limit=limit).to_json()
