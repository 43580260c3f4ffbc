"""The OpenAPI document of the HTTP interface (``GET /openapi.json``), written out: the
interface is versioned (``/v1``) and its answers are the typed results' ``to_json()``
(docs/formats.md), so the document is kept here beside the routes rather than generated."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "An error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _query(name: str, kind: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": text,
            "schema": {"type": kind, **extra}}  # fmt: skip


def _index_paths(ok_json: dict[str, Any]) -> dict[str, Any]:
    """The routes of ``--db`` (serve/index.py)."""
    jpeg = {
        "description": "A JPEG",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    }
    limit = _query(
        "limit", "integer", "At most this many faces", minimum=1, maximum=1000, default=20
    )

    def by_id(what: str) -> dict[str, Any]:
        return {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer"},
            "description": f"The {what}'s id in the index (from search results)",
        }

    return {
        "/v1/search": {
            "get": {
                "summary": "Faces of the index matching a query "
                "(the JSON of `faceattr search --json`)",
                "parameters": [
                    {
                        **_query("q", "string", "The query, e.g. Smiling and not Male"),
                        "required": True,
                    },
                    limit,
                ],
                "responses": {
                    "200": ok_json,
                    "400": {
                        **_ERROR,
                        "description": "A bad query: the error and its `column` (from 1)",
                    },
                    "401": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/v1/search/like": {
            "post": {
                "summary": "Faces like an uploaded photo's first face, or like an indexed face",
                "parameters": [
                    _query("face", "integer", "An indexed face's id (then no body)"),
                    limit,
                    _query(
                        "detect",
                        "boolean",
                        "Find the face (false: the image is an aligned crop)",
                        default=True,
                    ),
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"image": {"type": "string", "format": "binary"}},
                            }
                        },
                        "image/*": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": ok_json,
                    "400": _ERROR,
                    "401": _ERROR,
                    "404": _ERROR,
                    "422": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/v1/faces/{id}/thumbnail": {
            "get": {
                "summary": "A face's picture, with a margin",
                "parameters": [
                    by_id("face"),
                    _query(
                        "size",
                        "integer",
                        "The longest side (pixels)",
                        minimum=16,
                        maximum=512,
                        default=128,
                    ),
                ],
                "responses": {"200": jpeg, "400": _ERROR, "401": _ERROR, "404": _ERROR},
            }
        },
        "/v1/images/{id}": {
            "get": {
                "summary": "An indexed image, upright (its faces' boxes are in its pixels)",
                "parameters": [by_id("image")],
                "responses": {"200": jpeg, "401": _ERROR, "404": _ERROR},
            }
        },
        "/v1/videos/{id}": {
            "get": {
                "summary": "An indexed video file (`image_id` of a video's search result), "
                "streamed; a Range header gets that part (206)",
                "parameters": [by_id("video")],
                "responses": {
                    "200": {
                        "description": "The video file",
                        "content": {"video/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {"description": "The part of the file the Range header asked for"},
                    "401": _ERROR,
                    "404": {
                        **_ERROR,
                        "description": "No such entry, or its file is gone or "
                        "not a video (never sent)",
                    },
                    "416": {"description": "The range is outside the file"},
                },
            }
        },
    }


def openapi_document(version: str, *, index: bool = False) -> dict[str, Any]:
    """The document; ``index``: with the routes of ``--db``."""
    face = {
        "type": "object",
        "required": ["box", "score", "probabilities", "attributes"],
        "properties": {
            "box": {"type": "array", "items": {"type": "number"}, "description": "[x, y, w, h]"},
            "score": {"type": "number"},
            "landmarks": {"type": "array", "items": {"type": "array",
                                                     "items": {"type": "number"}}},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "attributes": {"type": "array", "items": {"type": "string"}},
            "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
            "threshold_sources": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }  # fmt: skip
    image = {
        "type": "object",
        "required": ["image", "faces", "error"],
        "properties": {
            "image": {"type": "string", "description": "the upload's file name, or upload-N"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
            "error": {"type": ["string", "null"]},
        },
    }
    error = {
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "hint": {"type": ["string", "null"]}}}},
    }  # fmt: skip
    ok_json = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    predict = {
        "summary": "Attributes of the faces in one or more images (the JSON of predict)",
        "parameters": [
            _query("detect", "boolean", "Find and align faces (false: each image is an aligned "
                   "crop)", default=True),
            _query("threshold", "number", "One decision threshold instead of the model's",
                   minimum=0, maximum=1),
            _query("tta", "string", "Test-time augmentation", enum=["none", "flip"]),
            _query("max_faces", "integer", "Keep the best-scoring faces", minimum=1),
            _query("min_face_size", "number", "Drop faces smaller than this (pixels)", minimum=0),
        ],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }},
        "responses": {
            "200": {"description": "One entry per image, in order", "content": {
                "application/json": {"schema": {"type": "array",
                                                "items": {"$ref": "#/components/schemas/Image"}}}}},
            "400": _ERROR, "401": _ERROR, "413": _ERROR, "415": _ERROR, "422": _ERROR,
            "503": _ERROR,
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "faceattr", "version": version,
                 "description": "Facial attributes (40 CelebA attributes) over HTTP."},
        "paths": {
            "/": {"get": {"summary": "The web page (photos; the index "
                          "with `faceattr serve --db`)",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {}}}}}},
            "/v1/predict": {"post": predict},
            "/v1/model": {"get": {"summary": "The model: attributes, thresholds, input size, "
                                  "digest, licence", "responses": {"200": ok_json, "401": _ERROR}}},
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": ok_json}}},
            "/readyz": {"get": {"summary": "The model is loaded",
                                "responses": {"200": ok_json, "503": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            **(_index_paths(ok_json) if index else {}),
        },
        "components": {"schemas": {"Face": face, "Image": image, "Error": error},
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    }  # fmt: skip
