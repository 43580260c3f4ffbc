"""The routes of ``faceattr serve --db``: search an index, faces like a face, the pictures
of its faces and images, and its videos, by id (never by a path from the request).

The index is opened per request (a connection of its own, in a worker thread), so several
servers can share one PostgreSQL index, and an index updated by ``faceattr index`` while the
server runs is seen at once. The served model must be the one that made the index: a
like-this-photo search predicts the photo, and its probabilities must be comparable.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from faceattr.collection.pictures import (
    THUMBNAIL_PIXELS,
    crop_thumbnail,
    face_thumbnail,
    image_jpeg,
    indexed_video,
)
from faceattr.collection.query import QueryError
from faceattr.collection.search import (
    DEFAULT_LIMIT,
    FaceNotFound,
    like_face,
    like_probabilities,
    search_index,
)
from faceattr.collection.store import CollectionError, open_store
from faceattr.errors import UsageError, command
from faceattr.serve.app import HTTPError, PredictOptions, _parse_bool

if TYPE_CHECKING:
    from faceattr.inference.predictor import Predictor
    from faceattr.serve.app import Service

MAX_LIMIT = 1000  # faces in one answer
THUMBNAIL_SIZES = (16, 512)
_ID = re.compile(r"[0-9]{1,18}")  # fits a 64-bit id


def check_index(db: str | Path, predictor: Predictor) -> str:
    """The index's location (without a password) once it is known to be a faceattr index
    made by ``predictor``'s model; a :class:`CollectionError` or :class:`UsageError` saying
    what to do otherwise."""
    store = open_store(db, create=False)
    try:
        model = store.model
        if model is None:
            raise CollectionError(
                f"{store.location} holds no index yet.",
                command("Make it first: `faceattr index PHOTOS --db {db}`", db=store.location),
            )
        served = predictor.file.identity()
        if model["sha256"] != served["sha256"] or model["attributes"] != served["attributes"]:
            raise UsageError(
                f"{store.location} was indexed with the model {model['name']} "
                f"({model['sha256'][:12]}), not the one served, {served['name']} "
                f"({served['sha256'][:12]}): their faces are not comparable.",
                f'Serve the index\'s model (`model="{model["name"]}"`), or index the photos '
                "again with this one: `faceattr index PHOTOS --db DB --model MODEL --reindex`.",
            )
        return store.location
    finally:
        store.close()


def index_counts(db: str | Path) -> dict[str, int]:
    """Images indexed (read, with or without faces; not those that failed) and faces."""
    store = open_store(db, create=False)
    try:
        counts = store.counts()
    finally:
        store.close()
    images = counts.get("ok", 0) + counts.get("noface", 0)
    return {"images": images, "faces": counts["faces"]}


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    query = dict(request.query_params)
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise HTTPError(400, f"Unknown query parameter {unknown[0]!r}.",
                        f"The parameters are {', '.join(allowed)}.")  # fmt: skip
    return query


def _int_in(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, f"Query parameter {name}={raw[:40]!r} is not an integer.",
                        f"Use {low} to {high}.") from None  # fmt: skip
    if not low <= value <= high:
        raise HTTPError(400, f"Query parameter {name}={value} is out of range.",
                        f"Use {low} to {high}.")  # fmt: skip
    return value


def _limit(query: dict[str, str]) -> int:
    return _int_in("limit", query["limit"], 1, MAX_LIMIT) if "limit" in query else DEFAULT_LIMIT


def _id(request: Request, what: str) -> int:
    raw = request.path_params["id"]
    if not _ID.fullmatch(raw):
        raise HTTPError(404, f"The index holds no {what} {raw[:40]!r}.",
                        "Take ids from search results (`id`, `image_id`).")  # fmt: skip
    return int(raw)


class CheckedFile(FileResponse):
    """A video file checked by :func:`~faceattr.collection.pictures.indexed_video` (``st``:
    its stat then), streamed with Range support, and only while the file opened to send it is
    still that file (its device and inode): a file put in its place after the check is never
    sent (the answer stops before its first byte)."""

    def __init__(self, path: str, st: os.stat_result, media_type: str) -> None:
        super().__init__(path, media_type=media_type, stat_result=st,
                         headers={"Cache-Control": "private, max-age=300"})  # fmt: skip
        self.identity = (st.st_dev, st.st_ino, st.st_size)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        async with super()._open_file() as file:
            st = os.fstat(file.wrapped.fileno())
            if (st.st_dev, st.st_ino, st.st_size) != self.identity:
                raise OSError(f"{self.path} changed after it was checked; not sent")
            yield file


def index_routes(service: Service, endpoint: Callable[..., Any]) -> list[Route]:
    """The routes above for ``service`` (whose ``db`` is set), each wrapped by ``endpoint``
    (token, admission, metrics, errors)."""
    db = service.db
    assert db is not None

    async def in_pool(function: Callable[..., Any], *args: Any) -> Any:
        # The worker threads: pictures and searches are bounded like decoding is.
        return await asyncio.get_running_loop().run_in_executor(service.pool, function, *args)

    async def search(request: Request) -> Response:
        service.check_ready()
        query = _query(request, ("q", "limit"))
        text = query.get("q", "")
        if not text.strip():
            raise HTTPError(400, "The query is empty.",
                            "Pass a query: /v1/search?q=Smiling and not Eyeglasses")  # fmt: skip
        limit = _limit(query)
        try:
            found = await in_pool(lambda: search_index(text, db, limit=limit))
        except QueryError as exc:
            return JSONResponse({"error": {"message": exc.message, "hint": exc.hint},
                                 "column": exc.column}, 400)  # fmt: skip
        return JSONResponse(found.to_json())

    async def like(request: Request) -> Response:
        service.check_ready()
        query = _query(request, ("face", "limit", "detect"))
        limit = _limit(query)
        if "face" in query:
            if not _ID.fullmatch(query["face"]):
                raise HTTPError(
                    400, f"Query parameter face={query['face'][:40]!r} is not a face id.",
                    "Take face ids from search results (`id`).",
                )  # fmt: skip
            face_id = int(query["face"])
            try:
                found = await in_pool(lambda: like_face(face_id, db, limit=limit))
            except FaceNotFound as exc:
                raise HTTPError(404, exc.message, exc.hint) from None
            return JSONResponse(found.to_json())
        detect = _parse_bool("detect", query["detect"]) if "detect" in query else True
        uploads = await service.uploads(request)
        if len(uploads) != 1:
            raise HTTPError(400, f"The request has {len(uploads)} images; like takes one.",
                            "Post one image (or ?face=ID for a face of the index).")  # fmt: skip
        options = PredictOptions({"detect": str(detect)})
        [result] = await service.predict_uploads(uploads, options)
        if result.error is not None:
            raise HTTPError(422, result.error, "Post an image file (JPEG, PNG, ...).")
        if not result.faces:
            raise HTTPError(422, f"No face found in {uploads[0].name}.",
                            "Post a photo with a clearly visible face, or detect=false for "
                            "an aligned crop.")  # fmt: skip
        probabilities = result.faces[0].probability_array
        found = await in_pool(lambda: like_probabilities(probabilities, db, name=uploads[0].name,
                                                         limit=limit))  # fmt: skip
        return JSONResponse(found.to_json())

    def picture_response(data: bytes | None, what: str) -> Response:
        if data is None:
            raise HTTPError(
                404, f"The picture of {what} cannot be read: its file is gone, unreadable or "
                "not an image.", "Index the photos again: `faceattr index PHOTOS --db DB --prune`.",
            )  # fmt: skip
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})  # fmt: skip

    def read_store(function: Callable[[Any], Any]) -> Any:
        store = open_store(db, create=False)
        try:
            return function(store)
        finally:
            store.close()

    async def thumbnail(request: Request) -> Response:
        face_id = _id(request, "face")
        query = _query(request, ("size",))
        size = _int_in("size", query["size"], *THUMBNAIL_SIZES) if "size" in query \
            else THUMBNAIL_PIXELS  # fmt: skip
        found, crop = await in_pool(
            read_store, lambda store: (store.face_picture(face_id), store.face_crop(face_id))
        )
        if found is None:
            raise HTTPError(404, f"The index holds no face {face_id}.",
                            "Take face ids from search results (`id`).")  # fmt: skip
        path, box = found
        if crop is not None:  # a video's face: its stored best crop
            data = await in_pool(lambda: crop_thumbnail(crop, size))
        else:
            data = await in_pool(lambda: face_thumbnail(path, box, size,
                                                        max_pixels=service.max_pixels))  # fmt: skip
        return picture_response(data, f"face {face_id}")

    async def image(request: Request) -> Response:
        image_id = _id(request, "image")
        _query(request, ())
        path = await in_pool(read_store, lambda store: store.image_path(image_id))
        if path is None:
            raise HTTPError(404, f"The index holds no image {image_id}.",
                            "Take image ids from search results (`image_id`).")  # fmt: skip
        data = await in_pool(lambda: image_jpeg(path, max_pixels=service.max_pixels))
        return picture_response(data, f"image {image_id}")

    async def video(request: Request) -> Response:
        video_id = _id(request, "video")
        _query(request, ())
        path = await in_pool(read_store, lambda store: store.image_path(video_id))
        if path is None:
            raise HTTPError(404, f"The index holds no video {video_id}.",
                            "Take video ids from search results (`image_id` of a result "
                            "with `video`).")  # fmt: skip
        found = await in_pool(lambda: indexed_video(path))
        if found is None:
            raise HTTPError(
                404, f"Entry {video_id} of the index is not a video that can be sent: its file "
                "is gone, unreadable, not a regular file or not a video.",
                "Index the folder again: `faceattr index FOLDER --db DB --prune`.",
            )  # fmt: skip
        st, media_type = found
        return CheckedFile(path, st, media_type)

    handlers = (
        ("/v1/search", search, "GET"),
        ("/v1/search/like", like, "POST"),
        ("/v1/faces/{id}/thumbnail", thumbnail, "GET"),
        ("/v1/images/{id}", image, "GET"),
        ("/v1/videos/{id}", video, "GET"),
    )
    return [Route(path, endpoint(path, handler, admit=True), methods=[method])
            for path, handler, method in handlers]  # fmt: skip
