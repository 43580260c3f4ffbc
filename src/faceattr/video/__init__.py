"""Videos, cameras and streams (the ``video`` extra; docs/video.md): each person's face
followed through the frames and given one answer.

:func:`predict_video` (with :class:`VideoOptions`) returns a :class:`VideoResult` of
:class:`TrackResult` objects. Importing this package imports neither PyAV nor numpy: the
names resolve on first use, and :mod:`faceattr.video.probe` (which inputs are videos) needs
neither.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_NAMES = {
    "predict_video": "faceattr.video.pipeline",
    "VideoOptions": "faceattr.video.pipeline",
    "VideoResult": "faceattr.video.results",
    "TrackResult": "faceattr.video.results",
    "FrameResult": "faceattr.video.results",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'faceattr.video' has no attribute {name!r}")
