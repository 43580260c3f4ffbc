"""faceattr: facial attribute recognition (the 40 CelebA attributes) from one command line.

Python API::

    import faceattr
    results = faceattr.predict("photo.jpg")          # default model, faces detected + aligned
    results[0]["faces"][0]["attributes"]            # e.g. ["Smiling", "Young", ...]
    faceattr.index(["photos/"], db="library.db")     # a searchable index of a collection
    faceattr.search("Eyeglasses and not Male", db="library.db")["results"]
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def predict(images: Any, model: Any = "default", **kwargs: Any) -> list[dict[str, Any]]:
    """Attributes of the faces in ``images``; see :func:`faceattr.inference.predictor.predict`."""
    from faceattr.inference.predictor import predict as _predict

    return _predict(images, model, **kwargs)


def index(paths: Any, db: Any = "library.db", **kwargs: Any) -> dict[str, Any]:
    """Index the photos under ``paths`` into ``db`` (incrementally); a summary dict. See
    :func:`faceattr.collection.indexer.index_folders`."""
    from dataclasses import asdict

    from faceattr.collection.indexer import index_folders

    paths = [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else paths
    return asdict(index_folders(paths, db, **kwargs))


def search(
    query: str | None = None, db: Any = "library.db", *, like: Any = None, limit: int | None = 20
) -> dict[str, Any]:
    """Faces of the index ``db`` matching ``query`` (e.g. ``"Eyeglasses and not Male"``), or
    nearest to the face in the image ``like``; ``{"results": [...]}`` best first."""
    from faceattr.collection.search import like_image, search_index

    if like is not None:
        return like_image(like, db, limit=limit)
    if query is None:
        raise TypeError("search() needs a query or like=IMAGE")
    return search_index(query, db, limit=limit)


__all__ = ["__version__", "index", "predict", "search"]
