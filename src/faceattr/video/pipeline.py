"""Predicting the attributes of the people in a video: frames -> faces (the photo pipeline's
detection, alignment and preprocessing, :mod:`faceattr.inference.predictor`) -> tracks
(:mod:`faceattr.video.tracker`) -> one answer per track (:class:`~faceattr.video.results.
TrackFaces`), the model called on batches of faces across frames.

Worker threads decode nothing (FFmpeg decodes with threads of its own) but detect and align
the faces of the next frames while the main thread tracks and runs the model. With
``every=N`` only every Nth frame processed is searched for faces and predicted; the frames
between carry each face by its track's motion (their boxes, for drawing and ``frames=True``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceattr.config import PIPELINE_PIXELS, VIDEO_TRACK_GAP
from faceattr.errors import FaceAttrError
from faceattr.extras import MissingExtraError, has_module, missing_extra_error
from faceattr.inference.detect import Detector
from faceattr.inference.predictor import Predictor, _Face, faces_detected, faces_whole_image
from faceattr.progress import NullProgress, Progress
from faceattr.redaction import redact
from faceattr.utils import default_workers, ordered_map
from faceattr.video.reader import Frame, VideoReader, import_av, open_source, open_video
from faceattr.video.results import (
    FrameFace,
    FrameResult,
    TrackFaces,
    TrackResult,
    VideoResult,
    face_weight,
)
from faceattr.video.tracker import Tracker

# ByteTrack's second stage: weak detections down to this score may keep a track alive.
LOW_SCORE = 0.3


@dataclass
class VideoOptions:
    """How a video is read and tracked (the ``predict``/``index`` options of the same names).

    ``every``: search every Nth processed frame for faces; ``start``/``end``: seconds;
    ``fps``: process at most this many frames a second (None: every frame);
    ``max_frames``: stop after this many frames; ``track_gap``: seconds a track may go
    unseen before it ends; ``frames``: keep per-frame results (``frame_results``);
    ``crops``: keep each track's best aligned crop."""

    every: int = 1
    start: float = 0.0
    end: float | None = None
    fps: float | None = None
    max_frames: int | None = None
    track_gap: float = VIDEO_TRACK_GAP
    frames: bool = False
    crops: bool = False
    boxes: bool = False  # keep each frame's track boxes (for drawing the annotated video)

    def check(self) -> None:
        from faceattr.config import NUMBER_LIMITS, check_number

        for name in ("every", "start", "end", "fps", "max_frames", "track_gap"):
            value = getattr(self, name)
            if value is not None:
                check_number(name, value, NUMBER_LIMITS[name])
        if self.end is not None and self.end <= self.start:
            from faceattr.errors import UsageError

            raise UsageError(
                f"end ({self.end:g} s) must be after start ({self.start:g} s).",
                "Pass `end=` later than `start=`, or leave it out for the rest of the video.",
            )


@dataclass
class _Seen:
    """A frame and, when it was searched, its faces (aligned and preprocessed)."""

    frame: Frame
    faces: list[_Face] | None
    picture_kept: bool = False


@dataclass
class _Pending:
    track: int
    frame: Frame
    face: _Face
    weight: float
    out: FrameFace | None = None


@dataclass
class _Run:
    """One video's state while it is predicted."""

    predictor: Predictor
    options: VideoOptions
    on_track: Callable[[TrackResult], None] | None
    tracks: dict[int, TrackFaces] = field(default_factory=dict)
    done: list[TrackResult] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    boxes: dict[int, list[tuple[int, list[float]]]] = field(default_factory=dict)
    frame_results: list[FrameResult] = field(default_factory=list)

    def flush(self) -> None:
        if not self.pending:
            return
        p = self.predictor
        pixels = [x.face.pixels for x in self.pending if x.face.pixels is not None]
        probs = p.probabilities_of_pixels(np.stack(pixels))
        for item, row in zip(self.pending, probs, strict=True):
            faces = self.tracks.setdefault(item.track, TrackFaces(item.track, len(p.attributes)))
            crop = item.face.crop if self.options.crops else None
            faces.add(row, item.weight, item.frame.index, item.frame.time, item.face.box, crop)
            if item.out is not None:
                item.out.probabilities = {
                    a: round(float(v), 4) for a, v in zip(p.attributes, row, strict=True)
                }
                item.out.attributes = p.present(row)
        self.pending.clear()

    def end(self, track_ids: list[int]) -> None:
        """The tracks that ended: their answers (their pending faces predicted first)."""
        if any(x.track in track_ids for x in self.pending):
            self.flush()
        for tid in sorted(track_ids):
            faces = self.tracks.pop(tid, None)
            if faces is None:
                continue
            result = faces.result(self.predictor.attributes, self.predictor.thresholds)
            self.done.append(result)
            if self.on_track is not None:
                self.on_track(result)


class _Detect:
    """Finds, aligns and preprocesses the faces of a frame to be searched (worker threads)."""

    def __init__(self, predictor: Predictor, detector: Detector | None, keep_crops: bool):
        self.preprocessing = predictor.preprocessing
        self.detector = detector
        self.keep_crops = keep_crops
        safe = detector is None or getattr(detector, "thread_safe", False)
        self.lock: threading.Lock | None = None if safe else threading.Lock()

    def __call__(self, job: tuple[Frame, bool]) -> _Seen:
        picture, search = job
        frame = Frame(picture.index, picture.time, None)  # the picture is not kept
        if not search:
            return _Seen(frame, None)
        assert picture.image is not None
        if self.detector is None:
            faces = faces_whole_image(picture.image)
        elif self.lock is None:
            faces = faces_detected(picture.image, self.detector)
        else:
            with self.lock:
                faces = faces_detected(picture.image, self.detector)
        for face in faces:
            assert face.crop is not None
            face.pixels = self.preprocessing.pixels(face.crop)
            if not self.keep_crops:
                face.crop = None
        return _Seen(frame, faces)


def tracking_detector(detector: Detector | None) -> tuple[Detector | None, float]:
    """A copy of ``detector`` that also returns the weak faces ByteTrack's second stage uses,
    and the score from which a face is confident (the detector's ``min_score``)."""
    high = float(getattr(detector, "min_score", 0.5))
    if detector is None or not hasattr(detector, "min_score"):
        return detector, high
    low = copy.copy(detector)
    low.min_score = min(LOW_SCORE, high)
    return low, high


def predict_video(
    source: str | Path,
    predictor: Predictor,
    *,
    detector: Detector | None = None,
    options: VideoOptions | None = None,
    live: str | None = None,
    on_track: Callable[[TrackResult], None] | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = None,
) -> VideoResult:
    """The tracks of the people in one video file (``live``: None), camera (``"camera"``)
    or stream (``"stream"``), with their attributes.

    A source that cannot be read gives a result with ``error`` set; frames that cannot be
    decoded are skipped and counted (``corrupt_frames``). ``on_track`` is called with each
    track as it ends (a live source's JSON lines). On a live source Ctrl-C ends the reading:
    the tracks so far are returned (``interrupted``). ``max_pixels`` refuses a video whose
    frames are larger (as predict refuses such a photo).
    """
    options = options or VideoOptions()
    options.check()
    progress = progress or NullProgress()
    name = redact(str(source)) if live else str(source)
    result = VideoResult(video=name)
    try:
        import_av()
        if not has_module("lap"):
            raise missing_extra_error("lap", "Tracking faces in videos")
        reader = open_source(str(source), live) if live else open_video(source)
    except MissingExtraError as exc:
        result.error = f"{exc.message} {exc.hint}"
        return result
    except FaceAttrError as exc:  # a camera or stream's error says what to check
        result.error = f"{exc.message} {exc.hint}" if live and exc.hint else exc.message
        return result
    with reader:
        result.video = reader.name
        result.width, result.height = reader.width, reader.height
        if max_pixels is not None and reader.width * reader.height > max_pixels:
            result.error = (
                f"its frames are {reader.width}x{reader.height} = "
                f"{reader.width * reader.height:,} pixels, more than `max_pixels={max_pixels}`"
            )
            return result
        result.fps = round(reader.fps, 3) if reader.fps else None
        result.duration = round(reader.duration, 3) if reader.duration else None
        _run_frames(
            reader,
            predictor,
            detector,
            options,
            result,
            on_track,
            workers,
            progress,
            live is not None,
        )
        result.corrupt_frames = reader.corrupt
    return result


def _jobs(frames: Iterator[Frame], every: int) -> Iterator[tuple[Frame, bool]]:
    for k, frame in enumerate(frames):
        yield frame, k % every == 0


def _run_frames(
    reader: VideoReader,
    predictor: Predictor,
    detector: Detector | None,
    options: VideoOptions,
    result: VideoResult,
    on_track: Callable[[TrackResult], None] | None,
    workers: int | None,
    progress: Progress,
    live: bool,
) -> None:
    av = import_av()
    search_detector, high = tracking_detector(detector)
    tracker = Tracker(gap=options.track_gap, high=high, low=min(LOW_SCORE, high))
    run = _Run(predictor, options, on_track)
    prepare = _Detect(predictor, search_detector, options.crops)
    workers = default_workers() if workers is None else workers
    frames = reader.frames(
        start=options.start, end=options.end, fps=options.fps, max_frames=options.max_frames
    )
    total = None
    if not live and reader.frames_in_header and options.fps is None and options.end is None:
        total = reader.frames_in_header
        if options.max_frames:
            total = min(total, options.max_frames)
    progress.start(f"video {reader.name}", total=total, unit="frame")
    # Frames in flight: as many as the photo pipeline's images, within its pixel budget.
    in_budget = PIPELINE_PIXELS // max(1, reader.width * reader.height)
    ahead = max(2, min(max(4 * workers, 2 * predictor.batch_size), in_budget))
    seen = ordered_map(prepare, _jobs(frames, options.every), workers, ahead)
    carried: list[int] = []  # the tracks found in the last searched frame
    try:
        for item in seen:
            frame = item.frame
            result.frames += 1
            faces_out: list[FrameFace] = []
            if options.boxes:  # every frame processed has its (maybe empty) list
                run.boxes.setdefault(frame.index, [])
            if item.faces is not None:
                boxes = np.array([f.box for f in item.faces]).reshape(-1, 4)
                scores = np.array([f.score for f in item.faces])
                ids, ended = tracker.update(frame.time, boxes, scores)
                run.end([t.id for t in ended])
                carried = []
                side = predictor.preprocessing.img_size
                for face, tid in zip(item.faces, ids, strict=True):
                    if tid is None:
                        continue
                    carried.append(tid)
                    out = FrameFace(tid, face.box, face.score, True) if options.frames else None
                    weight = face_weight(face.score, face.box, side)
                    run.pending.append(_Pending(tid, frame, face, weight, out))
                    if out is not None:
                        faces_out.append(out)
                    if options.boxes:
                        run.boxes.setdefault(frame.index, []).append((tid, face.box))
            else:
                run.end([t.id for t in tracker.expire(frame.time)])
                live_ids = {t.id: t for t in tracker.live}
                carried = [tid for tid in carried if tid in live_ids]
                for tid in carried:
                    box = [round(float(v), 2) for v in live_ids[tid].box_at(frame.time)]
                    if options.frames:
                        faces_out.append(FrameFace(tid, box, None, False))
                    if options.boxes:
                        run.boxes.setdefault(frame.index, []).append((tid, box))
            if options.frames:
                run.frame_results.append(FrameResult(frame.index, frame.time, faces_out))
            if len(run.pending) >= predictor.batch_size:
                run.flush()
            progress.advance(1)
    except KeyboardInterrupt:
        if not live:
            raise
        result.interrupted = True
    except av.error.FFmpegError as exc:
        result.error = f"decoding stopped after {result.frames} frame(s): {exc}"
    finally:
        seen.close()
    run.flush()
    run.end([t.id for t in tracker.finish()])
    progress.finish()
    result.tracks = sorted(run.done, key=lambda t: t.id)
    if options.frames:
        result.frame_results = run.frame_results
    if options.boxes:
        result.track_boxes = run.boxes
