"""What makes a database a faceattr index, checked when one is opened, before anything else
reads or writes it (:func:`check_index`).

An index has the ``meta``, ``images`` and ``faces`` tables with their columns (from schema
version 2 also ``faces.start_time``/``end_time`` and the ``face_crops`` table), a numeric
``schema_version``, a ``generation`` counter, and a ``model`` record: JSON of the model's
identity (name, weights digest, attributes, thresholds), whose attributes are the ``a<i>``
columns of ``faces``. An empty database becomes one (when creating); anything else, another
application's database or a damaged index, is refused with a :class:`CollectionError` and is
never written to.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from faceattr.collection.store import MIGRATIONS, SCHEMA_VERSION, CollectionError

if TYPE_CHECKING:
    from faceattr.collection.store import Store

_IMAGES = ("id", "path", "size", "mtime_ns", "sha256", "status", "error", "width", "height",
           "indexed_at")  # fmt: skip
_FACES = ("id", "image_id", "face", "x", "y", "w", "h", "score", "landmarks")
_FACES_2 = ("start_time", "end_time")  # schema version 2 on (videos)
_CROPS = ("face_id", "jpeg")
_VERSION = re.compile(r"[0-9]{1,9}")
_GENERATION = re.compile(r"-?[0-9]{1,19}")  # a counter, and a part of file names


def _foreign(location: str, why: str) -> CollectionError:
    return CollectionError(
        f"{location} is not a faceattr index: {why}.",
        "faceattr writes only to its own index or to an empty database, and leaves this one "
        "as it is. Pass the database `faceattr index` made, or a new file name to start an "
        "index (`db=photos.db`).",
    )


def _damaged(location: str, why: str) -> CollectionError:
    return CollectionError(
        f"{location} is a damaged faceattr index, or not one: {why}.",
        "faceattr leaves it as it is. Index the photos into a new database (`db=photos.db`), "
        "or restore this one from a backup.",
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_model(raw: Any, location: str) -> dict[str, Any]:
    """The ``model`` record of an index: its JSON, checked to be a model's identity."""
    try:
        model = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise _damaged(location, f"its model record is not valid JSON ({_short(raw)})") from None
    attributes = model.get("attributes") if isinstance(model, dict) else None
    thresholds = model.get("thresholds") if isinstance(model, dict) else None
    if not (
        isinstance(model, dict)
        and isinstance(model.get("name"), str)
        and isinstance(model.get("sha256"), str)
        and isinstance(attributes, list)
        and attributes
        and all(isinstance(a, str) and a for a in attributes)
        and len(set(attributes)) == len(attributes)
        and isinstance(thresholds, list)
        and len(thresholds) == len(attributes)
        and all(_is_probability(t) for t in thresholds)
    ):
        raise _damaged(location, "its model record is not a model's name, digest, attributes "
                      "and thresholds")  # fmt: skip
    return model


def _is_probability(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)  # fmt: skip


def check_index(store: Store, *, create: bool) -> bool:
    """Whether ``store`` holds a faceattr index (True, upgraded to this schema version) or is
    empty (False: a new index may be made in it). Anything else is refused
    (:class:`CollectionError`); nothing is written to it before this returns."""
    location = store.location
    tables = {t.lower() for t in store.tables()}
    if "meta" not in tables:
        if tables:
            shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
            raise _foreign(location, f"it holds another application's tables ({shown})")
        return False
    if not {"key", "value"} <= store.columns_of("meta"):
        raise _foreign(location, "its meta table is not faceattr's (no key and value columns)")
    meta = store.meta_values(("schema_version", "model", "generation"))
    raw = meta.get("schema_version")
    if raw is None:
        raise _foreign(location, "its meta table has no schema_version")
    if not (isinstance(raw, str) and _VERSION.fullmatch(raw) and int(raw) >= 1):
        raise _damaged(location, f"its schema_version {_short(raw)} is not a version number")
    version = int(raw)
    if version > SCHEMA_VERSION:
        raise CollectionError(
            f"{location} was written by a newer faceattr (schema {version}; this one reads up "
            f"to {SCHEMA_VERSION}).",
            "Upgrade faceattr (pip install -U faceattr).",
        )
    if meta.get("model") is None:
        raise _damaged(location, "its meta table has no model record")
    model = parse_model(meta["model"], location)
    generation = meta.get("generation")
    if generation is not None and not (isinstance(generation, str)
                                       and _GENERATION.fullmatch(generation)):  # fmt: skip
        raise _damaged(location, f"its generation {_short(generation)} is not a number")
    faces = (*_FACES, *(f"a{i}" for i in range(len(model["attributes"]))))
    needs = [("images", _IMAGES), ("faces", faces)]
    if version >= 2:
        needs += [("faces", _FACES_2), ("face_crops", _CROPS)]
    for table, needed in needs:
        missing = [c for c in needed if c not in store.columns_of(table)] if table in tables \
            else ["the table"]  # fmt: skip
        if missing:
            raise _damaged(location, f"its {table} table lacks {', '.join(missing[:5])}"
                          + (", ..." if len(missing) > 5 else ""))  # fmt: skip
    if version < SCHEMA_VERSION:
        _upgrade(store, version)
    return True


def _upgrade(store: Store, version: int) -> None:
    """Run the migrations from ``version`` to this one, in one transaction. The generation's
    row is locked first and the version read again under it, so of two processes opening an
    old index at once (PostgreSQL) one upgrades it and the other then finds it upgraded."""
    with store.transaction():
        store.changed()
        now = store.get_meta("schema_version")
        version = int(now) if now and _VERSION.fullmatch(now) else version
        if version >= SCHEMA_VERSION:  # another process upgraded it meanwhile
            return
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v](store.dialect):
                store.conn.execute(statement)
        store.set_meta("schema_version", str(SCHEMA_VERSION))
