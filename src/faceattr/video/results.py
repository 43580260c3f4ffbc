"""What predicting a video returns: a :class:`VideoResult` with one :class:`TrackResult` per
person (a face followed through the frames), and with ``frames=True`` a :class:`FrameResult`
per frame. ``to_json()`` is the schema of ``faceattr predict --json`` for a video
(docs/video.md, docs/formats.md).

How a track's frames make its attributes (:class:`TrackFaces`): the mean of the frames'
logits, each weighted by the detector's score times the face's size relative to the model's
input (capped at 1). The mean logit is how the model already combines views of one face (flip
TTA averages logits); it is the log of the geometric mean of the frames' odds, so a run of
frames that agree moves the answer more than a probability mean would, and one frame cannot
push a probability to 0 or 1 by itself. The weight trusts a surely found face more than a
doubtful one and a face the model sees at its full resolution more than a small one (a face
larger than the model's input gains nothing more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from faceattr.utils import JSON_OMIT, JSON_OPTIONAL, JsonResult

_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def face_weight(score: float, box: list[float], model_side: int) -> float:
    """A frame's weight in its track: the detector's score x the face's shorter side relative
    to the model's input side (capped at 1)."""
    size = min(box[2], box[3])
    return float(score) * min(1.0, max(size, 1.0) / max(model_side, 1))


@dataclass
class FrameFace(JsonResult):
    """One face in one frame: its track, box and score; its probabilities and attributes when
    the model saw it (``detected``), none on a frame between detections (``every=N``), where
    the box is the motion model's."""

    track: int
    box: list[float]
    score: float | None
    detected: bool
    probabilities: dict[str, float] | None = field(default=None, metadata=JSON_OPTIONAL)
    attributes: list[str] | None = field(default=None, metadata=JSON_OPTIONAL)


@dataclass
class FrameResult(JsonResult):
    """One frame processed: its number in the video (from 0), time (seconds) and faces."""

    frame: int
    time: float
    faces: list[FrameFace] = field(default_factory=list)


@dataclass
class TrackResult(JsonResult):
    """One person: the frames their face was seen in, and what the model says of them."""

    id: int  # from 0, in order of appearance
    start: float  # seconds: the first and last frame the face was found in
    end: float
    frames: int  # the frames the model saw this face in
    box: list[float]  # x, y, w, h in the best frame
    best_frame: int  # the frame number of the frame with the highest weight
    probabilities: dict[str, float]  # attribute -> aggregated probability, 4 decimals
    attributes: list[str]  # present at the model's thresholds, most probable first
    agreement: dict[str, float]  # attribute -> share of frames whose own decision agrees
    best_time: float = field(default=0.0, metadata=JSON_OMIT)
    probability_array: np.ndarray | None = field(
        default=None, repr=False, compare=False, metadata=JSON_OMIT
    )
    # The best frame's aligned face crop (save_crops, the index's picture of this person).
    crop: Image.Image | None = field(default=None, repr=False, compare=False, metadata=JSON_OMIT)


@dataclass
class VideoResult(JsonResult):
    """One video, camera or stream: its size, rate, the frames processed, its tracks (in
    order of appearance), or why it could not be read."""

    video: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int = 0  # frames processed (in start..end, at the sample rate, up to max_frames)
    duration: float | None = None  # the video's length in seconds (None: unknown, live)
    tracks: list[TrackResult] = field(default_factory=list)
    corrupt_frames: int = 0  # frames that could not be decoded, skipped
    error: str | None = None
    interrupted: bool | None = field(default=None, metadata=JSON_OPTIONAL)  # Ctrl-C (live)
    frame_results: list[FrameResult] | None = field(default=None, metadata=JSON_OPTIONAL)
    # Frame number -> (track id, box) of each face drawn there (the annotated video).
    track_boxes: dict[int, list[tuple[int, list[float]]]] | None = field(
        default=None, repr=False, compare=False, metadata=JSON_OMIT
    )

    @property
    def image(self) -> str:
        """The input's name, as an image result's ``image``."""
        return self.video


class TrackFaces:
    """The faces of one track seen so far: their weights and per-frame probabilities, the
    weighted logit sum, and the best frame (highest weight) with its crop."""

    def __init__(self, track_id: int, n_attributes: int) -> None:
        self.id = track_id
        self.probs: list[np.ndarray] = []
        self.weights: list[float] = []
        self.logit_sum = np.zeros(n_attributes)
        self.weight_sum = 0.0
        self.start = self.end = 0.0
        self.best: tuple[float, int, float, list[float], Image.Image | None] | None = None

    def add(
        self,
        probs: np.ndarray,
        weight: float,
        frame: int,
        time: float,
        box: list[float],
        crop: Image.Image | None,
    ) -> None:
        if not self.probs:
            self.start = time
        self.end = max(self.end, time)
        self.probs.append(np.asarray(probs, dtype=np.float32))
        self.weights.append(weight)
        self.logit_sum += weight * logit(probs)
        self.weight_sum += weight
        if self.best is None or weight > self.best[0]:
            self.best = (weight, frame, time, box, crop)

    def result(self, attributes: list[str], thresholds: np.ndarray) -> TrackResult:
        mean = self.logit_sum / self.weight_sum if self.weight_sum > 0 else self.logit_sum
        probs = (1.0 / (1.0 + np.exp(-mean))).astype(np.float32)
        present = probs >= thresholds
        frames = np.stack(self.probs) >= thresholds[None, :]
        agree = (frames == present[None, :]).mean(axis=0)
        order = np.argsort(-probs)
        assert self.best is not None
        _, frame, time, box, crop = self.best
        return TrackResult(
            id=self.id,
            start=round(self.start, 3),
            end=round(self.end, 3),
            frames=len(self.probs),
            box=box,
            best_frame=frame,
            probabilities={a: round(float(p), 4) for a, p in zip(attributes, probs, strict=True)},
            attributes=[attributes[i] for i in order if present[i]],
            agreement={a: round(float(x), 4) for a, x in zip(attributes, agree, strict=True)},
            best_time=time,
            probability_array=probs,
            crop=crop,
        )


def track_line(video: str, track: TrackResult) -> dict[str, Any]:
    """A live source's JSON line for a track that ended: the source, then the track."""
    return {"video": video, **track.to_json()}
