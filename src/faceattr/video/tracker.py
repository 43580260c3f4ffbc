"""Linking faces across frames into tracks: IoU with a constant-velocity motion model, matched
in two stages on the detector's score as ByteTrack does (Zhang et al., 2022).

Each frame with detections: every live track's box is moved to the frame's time by its
velocity; the confident faces (score >= ``high``) are matched to the tracks first (IoU >=
``match_iou``), then the weak ones (``low`` <= score < ``high``: a face turning away, blurred,
half hidden) to the tracks still unmatched (IoU >= ``low_iou``), which keeps a track alive
through a bad frame without letting a weak detection start one. A confident face still
unmatched then goes to a track still unmatched whose expected centre is within ``reach``
face sizes (and whose size is within a factor of 2): sampled sparsely (``fps=2``), or before
a track has a velocity, a face moves further between frames than its boxes overlap. A
confident face left over starts a track; a track unseen for more than ``gap`` seconds ends.
Assignments maximise the total IoU, or closeness (``lap.lapjv``, a linear assignment
solver). Velocities are in pixels per second, so frames sampled irregularly (``fps=``,
``every=``, a stream that drops frames) move boxes by the time that passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box of ``a`` [N, 4] with each of ``b`` [M, 4], boxes as x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax0, ay0 = a[:, None, 0], a[:, None, 1]
    ax1, ay1 = ax0 + a[:, None, 2], ay0 + a[:, None, 3]
    bx0, by0 = b[None, :, 0], b[None, :, 1]
    bx1, by1 = bx0 + b[None, :, 2], by0 + b[None, :, 3]
    w = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    h = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = w * h
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def assign(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs (row, column) of the assignment with the largest total IoU among pairs with IoU
    >= ``min_iou``."""
    if iou.size == 0:
        return []
    import lap

    _, rows, _ = lap.lapjv(1.0 - iou, extend_cost=True, cost_limit=1.0 - min_iou + 1e-9)
    return [(r, int(c)) for r, c in enumerate(rows) if c >= 0 and iou[r, c] >= min_iou]


def closeness_matrix(a: np.ndarray, b: np.ndarray, reach: float) -> np.ndarray:
    """1 - (centre distance / (``reach`` x the larger side of ``a``'s box)) of each box of
    ``a`` [N, 4] with each of ``b`` [M, 4] (x, y, w, h), 0 beyond that or when the sizes
    differ by more than a factor of 2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ca = a[:, None, :2] + a[:, None, 2:] / 2
    cb = b[None, :, :2] + b[None, :, 2:] / 2
    dist = np.linalg.norm(ca - cb, axis=2)
    size_a = np.maximum(a[:, None, 2], a[:, None, 3])
    size_b = np.maximum(b[None, :, 2], b[None, :, 3])
    ratio = size_b / np.maximum(size_a, 1e-9)
    close = 1.0 - dist / np.maximum(reach * size_a, 1e-9)
    return np.where((ratio >= 0.5) & (ratio <= 2.0), np.clip(close, 0.0, None), 0.0)


def _state(box: np.ndarray) -> np.ndarray:
    """x, y, w, h -> centre x, centre y, w, h."""
    x, y, w, h = box
    return np.array([x + w / 2, y + h / 2, w, h], dtype=np.float64)


def _box(state: np.ndarray) -> np.ndarray:
    cx, cy, w, h = state
    w, h = max(w, 1.0), max(h, 1.0)
    return np.array([cx - w / 2, cy - h / 2, w, h], dtype=np.float64)


@dataclass
class Track:
    """One face followed through the frames: its id (from 0 in order of appearance), its
    last seen state (centre, size), velocity per second and the times it was first and last
    seen."""

    id: int
    state: np.ndarray
    start: float
    last: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1

    def box_at(self, time: float) -> np.ndarray:
        """The box (x, y, w, h) the motion model expects at ``time``."""
        return _box(self.state + self.velocity * (time - self.last))

    def see(self, box: np.ndarray, time: float, smoothing: float = 0.5) -> None:
        state = _state(box)
        dt = time - self.last
        if dt > 0:
            seen = (state - self.state) / dt
            self.velocity = (
                seen if self.hits == 1 else (smoothing * seen + (1 - smoothing) * self.velocity)
            )
        self.state, self.last, self.hits = state, time, self.hits + 1


class Tracker:
    """Tracks from per-frame detections (:meth:`update`), ended after ``gap`` seconds unseen."""

    def __init__(
        self,
        *,
        gap: float,
        high: float = 0.7,
        low: float = 0.3,
        match_iou: float = 0.3,
        low_iou: float = 0.5,
        reach: float = 1.5,
    ) -> None:
        self.gap, self.high, self.low = gap, high, low
        self.match_iou, self.low_iou, self.reach = match_iou, low_iou, reach
        self.live: list[Track] = []
        self.next_id = 0

    def expire(self, time: float) -> list[Track]:
        """The tracks unseen for more than ``gap`` seconds at ``time``, removed."""
        ended = [t for t in self.live if time - t.last > self.gap + 1e-9]
        self.live = [t for t in self.live if time - t.last <= self.gap + 1e-9]
        return ended

    def update(
        self, time: float, boxes: np.ndarray, scores: np.ndarray
    ) -> tuple[list[int | None], list[Track]]:
        """Match the detections of the frame at ``time`` (``boxes`` [N, 4] x, y, w, h;
        ``scores`` [N]); returns each detection's track id (None: a weak face that matched
        no track, dropped) and the tracks that ended (unseen for more than ``gap``)."""
        ended = self.expire(time)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        ids: list[int | None] = [None] * len(boxes)
        predicted = np.array([t.box_at(time) for t in self.live]).reshape(-1, 4)
        free_tracks = list(range(len(self.live)))
        stages = (("high", self.match_iou), ("low", self.low_iou), ("near", 1e-6))
        for stage, min_similarity in stages:
            dets = [
                i
                for i, s in enumerate(scores)
                if ids[i] is None
                and ((self.low <= s < self.high) if stage == "low" else (s >= self.high))
            ]
            if not dets or not free_tracks:
                continue
            if stage == "near":
                similarity = closeness_matrix(predicted[free_tracks], boxes[dets], self.reach)
            else:
                similarity = iou_matrix(predicted[free_tracks], boxes[dets])
            matched = set()
            for r, c in assign(similarity, min_similarity):
                track = self.live[free_tracks[r]]
                track.see(boxes[dets[c]], time)
                ids[dets[c]] = track.id
                matched.add(free_tracks[r])
            free_tracks = [k for k in free_tracks if k not in matched]
        for i, s in enumerate(scores):
            if ids[i] is None and s >= self.high:
                track = Track(self.next_id, _state(boxes[i]), start=time, last=time)
                self.next_id += 1
                self.live.append(track)
                ids[i] = track.id
        return ids, ended

    def finish(self) -> list[Track]:
        """Every live track, ended (the video is over)."""
        ended, self.live = self.live, []
        return ended
