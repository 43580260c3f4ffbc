"""``faceattr search``: faces of an index that match a query, or that look like a face.

The answer is a :class:`SearchResult`: the faces best first, each a :class:`Match`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.collection.query import attributes_of, evaluate, parse
from faceattr.collection.store import CollectionError, Store, open_store
from faceattr.errors import command
from faceattr.redaction import redact
from faceattr.utils import JSON_OPTIONAL, JsonResult

DEFAULT_LIMIT = 20


@dataclass
class Match(JsonResult):
    """One face of the index that matches. A video's face (a person's track) also has
    ``video`` (True), ``start`` and ``end`` (seconds); a photo's face has none of the three."""

    id: int  # the face's id in the index (GET /v1/faces/{id}/thumbnail of `faceattr serve`)
    image_id: int  # the image's id in the index (GET /v1/images/{id})
    image: str  # the image's path
    face: int  # the face's number within the image (from 0)
    box: list[float]  # [x, y, w, h] in image pixels
    detector_score: float | None
    match: float  # the query's combined probability, or the cosine similarity for --like
    probabilities: dict[str, float]  # the attributes the query names (all for --like)
    video: bool | None = field(default=None, metadata=JSON_OPTIONAL)  # True: a video's track
    start: float | None = field(default=None, metadata=JSON_OPTIONAL)  # its span (seconds)
    end: float | None = field(default=None, metadata=JSON_OPTIONAL)


@dataclass
class SearchResult:
    """``faceattr search --json``: the query (or the ``like`` image), the index, the faces."""

    db: str  # without its password: what every output of the result shows
    query: str | None = None
    like: str | None = None
    results: list[Match] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = redact(self.db)

    def to_json(self) -> dict[str, Any]:
        asked = {"query": self.query} if self.like is None else {"like": self.like}
        return {**asked, "db": self.db, "results": [m.to_json() for m in self.results]}


def _model(store: Store) -> dict[str, Any]:
    model = store.model
    if model is None:
        make = command("`faceattr index PHOTOS --db {db}`", db=store.location)
        raise CollectionError(f"{store.location} holds no index yet.", f"Run {make} first.")
    return model


def _top(score: np.ndarray, ids: np.ndarray, candidates: np.ndarray, limit: int | None):
    """``candidates`` (positions) ordered best score first, ties by face id; the first
    ``limit``."""
    if limit is not None and len(candidates) > limit:
        s = score[candidates]
        kth = np.partition(s, len(s) - limit)[len(s) - limit]
        candidates = candidates[s >= kth]  # every face that can be in the first `limit`
    order = np.lexsort((ids[candidates], -score[candidates]))
    return candidates[order][:limit]


def _results(store: Store, ids, chosen, score, names: list[str], used: list[int]) -> list[Match]:
    found = store.faces_by_id(ids[chosen].tolist(), used)
    results = []
    for pos in chosen:
        row = found.get(int(ids[pos]))
        if row is None:  # deleted (pruned, re-indexed) since the column store was read
            continue
        values = row["values"]
        video = row["start"] is not None
        results.append(Match(
            id=int(ids[pos]), image_id=row["image_id"], image=row["image"], face=row["face"],
            box=row["box"],
            detector_score=row["detector_score"], match=float(score[pos]),
            probabilities={names[i]: float(v) for i, v in zip(used, values, strict=True)},
            video=True if video else None, start=row["start"] if video else None,
            end=row["end"] if video else None,
        ))  # fmt: skip
    return results


def search_index(query: str, db: str | Path, *, limit: int | None = DEFAULT_LIMIT) -> SearchResult:
    """The faces matching ``query``, best first."""
    store = open_store(db, create=False)
    try:
        model = _model(store)
        names = model["attributes"]
        node = parse(query, names)
        ids, probs = store.columns()
        matches, score = evaluate(node, lambda i: np.asarray(probs[i]), model["thresholds"])
        chosen = _top(score, ids, np.flatnonzero(matches), limit)
        results = _results(store, ids, chosen, score, names, attributes_of(node))
    finally:
        store.close()
    return SearchResult(db=str(db), query=query, results=results)


def _logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _like(store: Store, probabilities, exclude: list[int], limit: int | None) -> list[Match]:
    """Faces whose attribute profile is nearest (cosine over logits) to ``probabilities``,
    best first, the faces ``exclude`` left out."""
    names = _model(store)["attributes"]
    target = _logits(np.asarray(probabilities, np.float64))
    target /= np.linalg.norm(target) or 1.0
    ids, probs = store.columns()
    logits = _logits(np.asarray(probs))  # [A, N]
    sims = target @ logits / np.maximum(np.linalg.norm(logits, axis=0), 1e-12)
    keep = ~np.isin(ids, exclude)
    chosen = _top(sims, ids, np.flatnonzero(keep), limit)
    return _results(store, ids, chosen, sims, names, list(range(len(names))))


def like_image(
    image: str | Path, db: str | Path, *, limit: int | None = DEFAULT_LIMIT, detect: bool = True
) -> SearchResult:
    """Faces whose attribute profile is nearest (cosine over logits) to the best face found in
    ``image``, predicted with the index's own model; the image itself is left out."""
    from faceattr.collection.indexer import stored_path
    from faceattr.errors import UsageError
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions

    store = open_store(db, create=False)
    try:
        model = _model(store)
        face_detector = create_detector(None) if detect else None
        [result] = iter_predictions([str(image)], Predictor(model["name"]), detector=face_detector)
        if result.error:
            raise UsageError(f'`like="{image}"`: {result.error}')
        if not result.faces:
            raise UsageError(
                f'`like="{image}"`: no face found.',
                "Pass a photo with a clearly visible face.",
            )
        own = store.face_ids_of(str(stored_path(image)))
        results = _like(store, result.faces[0].probability_array, own, limit)
    finally:
        store.close()
    return SearchResult(db=str(db), like=str(image), results=results)


def like_probabilities(
    probabilities, db: str | Path, *, name: str, limit: int | None = DEFAULT_LIMIT
) -> SearchResult:
    """Faces like a face already predicted (by the index's model) whose ``probabilities`` are
    given: ``faceattr serve``'s like-this-upload; ``name`` is the answer's ``like``."""
    store = open_store(db, create=False)
    try:
        results = _like(store, probabilities, [], limit)
    finally:
        store.close()
    return SearchResult(db=str(db), like=name, results=results)


class FaceNotFound(CollectionError):
    """No face with this id in the index."""


def like_face(face_id: int, db: str | Path, *, limit: int | None = DEFAULT_LIMIT) -> SearchResult:
    """Faces like the indexed face ``face_id`` (itself left out), from its stored
    probabilities."""
    store = open_store(db, create=False)
    try:
        probabilities = store.face_probabilities(face_id)
        if probabilities is None:
            raise FaceNotFound(f"The index holds no face {face_id}.",
                               "Take face ids from search results (`id`).")  # fmt: skip
        results = _like(store, probabilities, [face_id], limit)
    finally:
        store.close()
    return SearchResult(db=str(db), like=f"face {face_id}", results=results)
