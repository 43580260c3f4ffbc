"""What prediction returns: one :class:`ImageResult` per image, one :class:`FaceResult` per
face. ``to_json()`` is the schema of ``faceattr predict --json`` and of :func:`faceattr.predict`
(docs/formats.md), which the index and the CSV writer read too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FaceResult:
    """One face: where it is and what the model says of it."""

    box: list[float]  # [x, y, w, h] in image pixels (the whole image with --no-detect)
    score: float  # the detector's confidence (1.0 with --no-detect)
    probabilities: dict[str, float]  # attribute -> probability, rounded to 4 decimals
    attributes: list[str]  # the attributes present at the model's thresholds, most probable first
    landmarks: list[list[float]] | None = None  # 5 points [x, y]: eyes, nose, mouth corners
    # attribute -> the threshold that decided it (present when probability >= threshold), and
    # where that threshold came from: "tuned" (the model's, tuned on validation data), "0.5"
    # (the model's default: more likely than not) or "given" (the caller's `threshold=`).
    thresholds: dict[str, float] | None = None
    threshold_sources: dict[str, str] | None = None
    # [A] float32, unrounded, in the model's attribute order (the index stores these).
    probability_array: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": self.box, "score": self.score}
        if self.landmarks is not None:
            out["landmarks"] = self.landmarks
        out["probabilities"] = self.probabilities
        out["attributes"] = self.attributes
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds
        if self.threshold_sources is not None:
            out["threshold_sources"] = self.threshold_sources
        return out


@dataclass
class ImageResult:
    """One image: its size and faces, or why it could not be read."""

    image: str  # the path (or name) as given
    faces: list[FaceResult] = field(default_factory=list)
    width: int | None = None  # None when the image could not be read
    height: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image}
        if self.width is not None:
            out["width"], out["height"] = self.width, self.height
        out["faces"] = [f.to_json() for f in self.faces]
        out["error"] = self.error
        return out
