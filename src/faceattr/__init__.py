"""faceattr: facial attribute recognition (the 40 CelebA attributes) from one command line.

Python API::

    import faceattr
    results = faceattr.predict("photo.jpg")          # default model, faces detected + aligned
    results[0]["faces"][0]["attributes"]            # e.g. ["Smiling", "Young", ...]
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def predict(images: Any, model: Any = "default", **kwargs: Any) -> list[dict[str, Any]]:
    """Attributes of the faces in ``images``; see :func:`faceattr.inference.predictor.predict`."""
    from faceattr.inference.predictor import predict as _predict

    return _predict(images, model, **kwargs)


__all__ = ["__version__", "predict"]
