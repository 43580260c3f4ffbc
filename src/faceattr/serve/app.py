"""The ASGI application of ``faceattr serve`` (Starlette): routes, limits, token, metrics.

Decoding, detection and alignment are the predictor's own (:class:`~faceattr.inference.
predictor._Prepare`, in worker threads, within one :class:`~faceattr.inference.predictor.
PixelBudget`); the faces of all requests go through one :class:`~faceattr.serve.batcher.
Batcher`; each answer is :meth:`ImageResult.to_json`, the schema of ``faceattr predict
--json``. Every error is ``{"error": {"message", "hint"}}`` with its HTTP status.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faceattr import __version__
from faceattr.config import (
    MIN_FACE_SIZE,
    NUMBER_LIMITS,
    PIPELINE_PIXELS,
    SERVE_MAX_BATCH,
    SERVE_MAX_BODY_MB,
    SERVE_MAX_QUEUE,
    SERVE_MAX_WAIT_MS,
    check_number,
)
from faceattr.errors import FaceAttrError, UsageError
from faceattr.inference.detect import Detector, create_detector
from faceattr.inference.predictor import PixelBudget, Predictor, Upload, _Item, _Prepare
from faceattr.inference.results import ImageResult
from faceattr.models.file import ModelRef
from faceattr.redaction import redact
from faceattr.serve.batcher import Batcher, Expected
from faceattr.serve.metrics import Metrics
from faceattr.serve.openapi import openapi_document
from faceattr.serve.page import page_response
from faceattr.utils import default_workers

MAX_IMAGES = 64  # images in one multipart request
RETRY_AFTER_S = 1
BODY_TIMEOUT_S = 60.0  # a body that has not arrived by then: 408 (a slow client frees its place)

logger = logging.getLogger("faceattr.serve")
QUERY_PARAMETERS = ("detect", "threshold", "tta", "max_faces", "min_face_size")


class HTTPError(FaceAttrError):
    """An answer other than 200: its status, message and hint (and headers, e.g.
    Retry-After)."""

    def __init__(
        self, status: int, message: str, hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, hint)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, message: str, hint: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse({"error": {"message": message, "hint": hint}}, status, headers=headers)


def _parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise HTTPError(400, f"Query parameter {name}={value!r} is not a boolean.",
                    f"Use {name}=true or {name}=false.")  # fmt: skip


def _parse_number(name: str, value: str, kind: type) -> Any:
    try:
        number = kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise HTTPError(400, f"Query parameter {name}={value!r} is not {what}.") from None
    try:
        return check_number(name, number, NUMBER_LIMITS[name])
    except UsageError as exc:
        raise HTTPError(400, f"Query parameter {exc.message}", exc.hint) from None


class PredictOptions:
    """A predict request's query: ``detect``, ``threshold``, ``tta``, ``max_faces``,
    ``min_face_size``; 400 for an unknown parameter or a bad value."""

    def __init__(self, query: dict[str, str]) -> None:
        unknown = sorted(set(query) - set(QUERY_PARAMETERS))
        if unknown:
            raise HTTPError(400, f"Unknown query parameter {unknown[0]!r}.",
                            f"The parameters are {', '.join(QUERY_PARAMETERS)}.")  # fmt: skip
        self.detect = _parse_bool("detect", query["detect"]) if "detect" in query else True
        self.threshold: float | None = (
            _parse_number("threshold", query["threshold"], float) if "threshold" in query else None
        )
        self.tta: str | None = query.get("tta")
        self.max_faces: int | None = (
            _parse_number("max_faces", query["max_faces"], int) if "max_faces" in query else None
        )
        self.min_face_size: float | None = (
            _parse_number("min_face_size", query["min_face_size"], float)
            if "min_face_size" in query else None
        )  # fmt: skip


class Service:
    """What one server process holds: the model, the detector, the worker threads, the pixel
    budget, the batcher and the metrics."""

    def __init__(
        self,
        model: ModelRef | Predictor,
        *,
        backend: str,
        detector: str | Detector | None,
        no_detect: bool,
        workers: int | None,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        max_body_mb: float,
        max_pixels: int | None,
        token: str | None,
        db: str | Path | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_wait_ms", max_wait_ms),
                            ("max_queue", max_queue), ("max_body_mb", max_body_mb)):  # fmt: skip
            check_number(name, value, NUMBER_LIMITS[name])
        if max_pixels is not None:
            check_number("max_pixels", max_pixels, NUMBER_LIMITS["max_pixels"])
        self.model = model
        self.backend = backend
        self.detector_spec = detector
        self.no_detect = no_detect
        self.workers = max(1, workers if workers is not None else default_workers())
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.max_body = int(max_body_mb * 1_000_000)
        self.max_pixels = max_pixels
        self.token = token.encode() if token else None
        self.body_timeout_s = body_timeout_s
        self.db = db  # an index (faceattr serve --db): the routes of serve/index.py
        self.metrics = Metrics()
        self.predictor: Predictor | None = None
        self.detector: Detector | None = None
        self.detector_lock = threading.Lock()
        self.batcher: Batcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.budget = PixelBudget(PIPELINE_PIXELS)
        self.ticket = 0
        self.active = 0  # requests admitted (reading, preparing, predicting)
        self.load_error: FaceAttrError | None = None

    # -- life --------------------------------------------------------------------------------
    def _load(self) -> tuple[Predictor, Detector | None]:
        if isinstance(self.model, Predictor):
            predictor = self.model.configured()
        else:
            predictor = Predictor(self.model, backend=self.backend, batch_size=self.max_batch)
        predictor.batch_size = max(predictor.batch_size, self.max_batch)
        if self.db is not None:
            from faceattr.serve.index import check_index

            check_index(self.db, predictor)
        if self.no_detect:
            return predictor, None
        if self.detector_spec is None or isinstance(self.detector_spec, str):
            return predictor, create_detector(self.detector_spec)
        return predictor, self.detector_spec

    async def start(self) -> None:
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="faceattr-prepare")
        try:
            predictor, self.detector = await asyncio.to_thread(self._load)
        except FaceAttrError as exc:
            self.load_error = exc
            return
        self.predictor = predictor
        self.batcher = Batcher(predictor, max_batch=self.max_batch,
                               max_wait_ms=self.max_wait_ms,
                               on_batch=self.metrics.batch.observe)  # fmt: skip
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.budget.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    # -- checks ------------------------------------------------------------------------------
    def check_token(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token)
        if not ok:
            raise HTTPError(401, "A valid token is needed: the Authorization header is "
                            + ("missing." if not given else "wrong."),
                            "Send `Authorization: Bearer TOKEN` with the server's token.",
                            {"WWW-Authenticate": "Bearer"})  # fmt: skip

    def check_ready(self) -> tuple[Predictor, Batcher]:
        if self.load_error is not None:
            raise HTTPError(503, f"The model could not be loaded: {self.load_error.message}",
                            self.load_error.hint)  # fmt: skip
        if self.predictor is None or self.batcher is None:
            raise HTTPError(503, "The model is still loading.", "Retry when /readyz answers 200.",
                            {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        return self.predictor, self.batcher

    async def read_body(self, request: Request) -> bytes:
        """The body, at most ``max_body`` bytes (413 beyond, told by Content-Length or seen
        while reading)."""
        too_large = HTTPError(
            413, f"The request body is larger than the server's limit of "
            f"{self.max_body / 1_000_000:g} MB.",
            "Send fewer or smaller images per request (the limit is the server's max_body_mb).",
        )  # fmt: skip
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise too_large

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.body_timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise HTTPError(
                408, f"The request body did not arrive within {self.body_timeout_s:g} s.",
                "Send the whole body at once; a slow upload holds a place in the queue.",
            ) from None  # fmt: skip

    async def uploads(self, request: Request) -> list[Upload]:
        kind = request.headers.get("content-type", "")
        main = kind.split(";")[0].strip().lower()
        if main.startswith("image/"):
            body = await self.read_body(request)
            return [Upload("upload-1", body)]
        if main != "multipart/form-data":
            raise HTTPError(
                415, f"Unsupported Content-Type {kind or '(none)'!r}.",
                "Post multipart/form-data with one or more `image` fields, or one image as "
                "the body with Content-Type image/jpeg, image/png, ...",
            )  # fmt: skip
        body = await self.read_body(request)

        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        parser = MultiPartParser(Headers(raw=request.headers.raw), stream(),
                                 max_files=MAX_IMAGES, max_fields=MAX_IMAGES)  # fmt: skip
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise HTTPError(400, f"The multipart body cannot be read: {exc.message}",
                            f"At most {MAX_IMAGES} images per request.") from None  # fmt: skip
        out: list[Upload] = []
        try:
            for key, value in form.multi_items():
                if key != "image":
                    raise HTTPError(400, f"Unknown form field {key!r}.",
                                    "Post each image in a field named `image`.")  # fmt: skip
                if not isinstance(value, UploadFile):
                    raise HTTPError(
                        400,
                        "The field `image` holds text, not a file.",
                        "Post each image as a file: curl -F image=@photo.jpg ...",
                    )
                name = value.filename or f"upload-{len(out) + 1}"
                out.append(Upload(name, await value.read()))
        finally:
            await form.close()
        if not out:
            raise HTTPError(400, "The request has no image.",
                            "Post each image in a multipart field named `image`.")  # fmt: skip
        return out

    def detector_for(self, options: PredictOptions) -> Detector | None:
        """The server's detector with the request's ``min_face_size`` and ``max_faces`` (a
        shallow copy: the detection model is shared)."""
        if not options.detect or self.detector is None:
            return None
        if options.min_face_size is None and options.max_faces is None:
            return self.detector
        view = copy.copy(self.detector)
        view.min_face_size = (  # type: ignore[attr-defined]
            options.min_face_size if options.min_face_size is not None else MIN_FACE_SIZE
        )
        view.max_faces = options.max_faces  # type: ignore[attr-defined]
        return view

    # -- predicting --------------------------------------------------------------------------
    async def predict(self, request: Request) -> list[ImageResult]:
        """The results of the images of a predict request, with its query's options."""
        self.check_ready()
        options = PredictOptions(dict(request.query_params))
        return await self.predict_uploads(await self.uploads(request), options)

    async def predict_uploads(
        self, uploads: list[Upload], options: PredictOptions
    ) -> list[ImageResult]:
        base, batcher = self.check_ready()
        try:
            predictor = base.configured(threshold=options.threshold, tta=options.tta)
        except UsageError as exc:
            raise HTTPError(400, exc.message, exc.hint) from None
        expected = batcher.expect()  # a batch being gathered waits for these faces
        try:
            return await self._predict(uploads, options, predictor, batcher, expected)
        finally:
            expected.done()

    async def _predict(self, uploads: list[Upload], options: PredictOptions,
                       predictor: Predictor, batcher: Batcher,
                       expected: Expected) -> list[ImageResult]:  # fmt: skip
        prepare = _Prepare(predictor.preprocessing, self.detector_for(options), self.max_pixels,
                           False, self.budget)  # fmt: skip
        if prepare.lock is not None:
            prepare.lock = self.detector_lock  # copies of one detector share its lock
        loop = asyncio.get_running_loop()
        jobs = []
        for upload in uploads:  # tickets in the order they reach the (FIFO) pool
            ticket, self.ticket = self.ticket, self.ticket + 1
            # Shielded: a cancelled request must not cancel a queued job, whose ticket the
            # pixel budget waits for.
            job = loop.run_in_executor(self.pool, prepare, (ticket, upload))
            jobs.append(asyncio.shield(job))
        items: list[_Item] = list(await asyncio.gather(*jobs))
        faces = [face for item in items for face in item.faces]
        pixels = (np.stack([f.pixels for f in faces if f.pixels is not None]) if faces
                  else np.zeros((0,), np.uint8))  # fmt: skip
        try:
            probs = await batcher.probabilities(pixels, predictor, expected)
        except FaceAttrError as exc:  # the model failed (e.g. non-finite outputs): not the client
            raise HTTPError(500, exc.message, exc.hint) from None
        results, k = [], 0
        for item in items:
            results.append(predictor.image_result(item, probs[k : k + len(item.faces)]))
            k += len(item.faces)
        self.metrics.images.inc(len(results))
        self.metrics.faces.inc(len(faces))
        return results

    def model_json(self) -> dict[str, Any]:
        predictor, _ = self.check_ready()
        info = predictor.info
        return {
            "name": predictor.file.name,
            "sha256": predictor.file.digest,
            "arch": info.arch,
            "attributes": list(predictor.attributes),
            "thresholds": dict(zip(predictor.attributes,
                                   [float(t) for t in predictor.thresholds], strict=True)),
            "threshold_sources": dict(zip(predictor.attributes, predictor.threshold_sources,
                                          strict=True)),
            "input_size": info.img_size,
            "tta": predictor.tta,
            "dataset": info.dataset,
            "license": info.license,
            "detector": None if self.detector is None else type(self.detector).__name__,
            "faceattr_version": __version__,
        }  # fmt: skip

    def index_json(self) -> dict[str, Any] | None:
        """What ``GET /v1/model`` says of the index served: its location (no password) and
        counts; None without one."""
        if self.db is None:
            return None
        from faceattr.serve.index import index_counts

        return {"db": redact(str(self.db)), **index_counts(self.db)}


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    model: ModelRef | Predictor = "default",
    *,
    backend: str = "auto",
    detector: str | Detector | None = None,
    no_detect: bool = False,
    workers: int | None = None,
    max_batch: int = SERVE_MAX_BATCH,
    max_wait_ms: float = SERVE_MAX_WAIT_MS,
    max_queue: int = SERVE_MAX_QUEUE,
    max_body_mb: float = SERVE_MAX_BODY_MB,
    max_pixels: int | None = None,
    token: str | None = None,
    db: str | Path | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> Starlette:
    """The ASGI app of ``faceattr serve``: mount it in an application or run it with any ASGI
    server. ``model``: a MODEL (``default``, a run directory, a file) or a loaded
    :class:`Predictor` (shared, not copied); it is loaded in the background when the app
    starts (``/readyz`` answers 200 once it is). ``detector``: a detector name, a
    :class:`Detector`, or None for the default one; ``no_detect=True``: none at all (every
    request is taken as aligned crops). ``max_batch`` faces or ``max_wait_ms`` make one model
    call across requests; ``max_queue`` requests at once (more: 503 with Retry-After);
    ``max_body_mb`` per request (more: 413); ``max_pixels`` per image (more: that image's
    error); ``token``: the bearer token every route but /, /healthz, /readyz and
    /openapi.json asks for; ``db``: an index (a SQLite file or a PostgreSQL URL) made by
    the same model, searched by /v1/search, /v1/search/like and shown by
    /v1/faces/{id}/thumbnail and /v1/images/{id}; ``body_timeout_s``: a body not received
    by then is answered 408."""
    service = Service(model, backend=backend, detector=detector, no_detect=no_detect,
                      workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      max_queue=max_queue, max_body_mb=max_body_mb, max_pixels=max_pixels,
                      token=token, db=db, body_timeout_s=body_timeout_s)  # fmt: skip
    metrics = service.metrics

    def endpoint(route: str, handler: Handler, *, auth: bool = True,
                 admit: bool = False) -> Handler:  # fmt: skip
        async def run(request: Request) -> Response:
            start = time.perf_counter()
            admitted = False
            try:
                if auth:
                    service.check_token(request)
                if admit:
                    if service.active >= service.max_queue:
                        raise HTTPError(
                            503, f"The server is busy: {service.active} requests are in "
                            "progress, its queue's limit.",
                            f"Retry after {RETRY_AFTER_S} s.",
                            {"Retry-After": str(RETRY_AFTER_S)},
                        )  # fmt: skip
                    service.active += 1
                    admitted = True
                    metrics.active.set(service.active)
                response = await handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message, exc.hint, exc.headers)
            except FaceAttrError as exc:  # a setting the library refused
                response = error_response(400, exc.message, exc.hint)
            except Exception as exc:  # a bug: the server answers 500 and goes on
                logger.exception("Error in %s", route)
                response = error_response(500, f"Internal error: {type(exc).__name__}.",
                                          "The server's log has the traceback.")  # fmt: skip
            finally:
                if admitted:
                    service.active -= 1
                    metrics.active.set(service.active)
            metrics.observe(route, response.status_code, time.perf_counter() - start)
            return response

        return run

    async def predict(request: Request) -> Response:
        results = await service.predict(request)
        answers = [r.to_json() for r in results]
        if results and all(r.error is not None for r in results):
            first = results[0].error or ""
            raise HTTPError(
                422, first,
                "Post image files (JPEG, PNG, WebP, BMP, TIFF) within the server's pixel "
                "limit (`max_pixels`)." if len(results) == 1 else
                "No image of the request could be read; each entry's `error` says why.",
            )  # fmt: skip
        return JSONResponse(answers)

    async def model_info(request: Request) -> Response:
        answer = service.model_json()
        answer["index"] = await asyncio.to_thread(service.index_json)
        return JSONResponse(answer)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        service.check_ready()
        return JSONResponse({"status": "ready"})

    async def metrics_text(request: Request) -> Response:
        if service.batcher is not None:
            metrics.queue.set(service.batcher.faces_waiting)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(__version__, index=db is not None))

    async def page(request: Request) -> Response:
        return page_response()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            response = error_response(
                405,
                f"{request.method} is not allowed on {request.url.path}.",
                "See /openapi.json for the routes and their methods.",
            )
        else:
            response = error_response(status, f"No route {request.url.path}.",
                                      "See /openapi.json for the routes.")  # fmt: skip
        metrics.observe("other", status, 0.0)
        return response

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/v1/predict", endpoint("/v1/predict", predict, admit=True), methods=["POST"]),
        Route("/v1/model", endpoint("/v1/model", model_info), methods=["GET"]),
        Route("/healthz", endpoint("/healthz", healthz, auth=False), methods=["GET"]),
        Route("/readyz", endpoint("/readyz", readyz, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", metrics_text), methods=["GET"]),
        Route("/openapi.json", endpoint("/openapi.json", openapi, auth=False), methods=["GET"]),
        Route("/", endpoint("/", page, auth=False), methods=["GET"]),  # the web page
    ]
    if db is not None:
        from faceattr.serve.index import index_routes

        routes += index_routes(service, endpoint)
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})  # fmt: skip
    app.state.service = service
    return app
