"""The index database: one SQLite file by default (the standard library's ``sqlite3``).

Tables (schema version :data:`SCHEMA_VERSION`, upgraded in place by :data:`MIGRATIONS`):

- ``meta(key, value)``: ``schema_version``; ``model``, the JSON identity of the model the
  faces were predicted with (file name, SHA-256, attributes, thresholds): an index is never
  mixed across models.
- ``images``: one row per file (``path`` unique, ``size``, ``mtime_ns``, ``sha256``,
  ``status`` = ok | noface | error, ``error``, ``width``, ``height``, ``indexed_at``).
- ``faces``: one row per face (``image_id``, ``face`` number, box ``x y w h``, detector
  ``score``, ``landmarks`` JSON, and one column ``a<i>`` per attribute holding its
  probability), with an index on each attribute column, so that a query of a few attributes
  reads only the faces that can match.

Writes happen in transactions of whole images: a process killed at any moment leaves every
image either indexed completely or not at all, and a re-run does the rest. WAL mode lets
searches run while an index is being written, and a second ``index`` process wait its turn.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceattr.errors import FaceAttrError, UsageError

SCHEMA_VERSION = 1
# version -> the statements that upgrade version - 1 to it (none yet beyond the first).
MIGRATIONS: dict[int, list[str]] = {}


class CollectionError(FaceAttrError):
    """The index database is missing, damaged, or made by another model (exit 1)."""


@dataclass
class ImageRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: str


def _schema(n_attributes: int) -> list[str]:
    columns = ", ".join(f"a{i} DOUBLE PRECISION" for i in range(n_attributes))
    statements = [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS images (
            id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, sha256 TEXT, status TEXT NOT NULL, error TEXT,
            width INTEGER, height INTEGER, indexed_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256)",
        f"""CREATE TABLE IF NOT EXISTS faces (
            id INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            face INTEGER NOT NULL, x DOUBLE PRECISION, y DOUBLE PRECISION,
            w DOUBLE PRECISION, h DOUBLE PRECISION, score DOUBLE PRECISION, landmarks TEXT,
            {columns})""",
        "CREATE INDEX IF NOT EXISTS faces_image ON faces(image_id)",
    ]
    statements += [
        f"CREATE INDEX IF NOT EXISTS faces_a{i} ON faces(a{i})" for i in range(n_attributes)
    ]
    return statements


class Store:
    """An open index database (SQLite; see :func:`open_store`)."""

    greatest = "max"  # SQL for the larger of several values

    def __init__(self, conn: sqlite3.Connection, location: str, *, ready: bool) -> None:
        self.conn = conn
        self.location = location
        self.ready = ready  # the tables exist (False: a new, empty database)

    # ---- metadata

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def model(self) -> dict[str, Any] | None:
        raw = self.get_meta("model") if self.ready else None
        return json.loads(raw) if raw else None

    def initialise(self, model: dict[str, Any]) -> None:
        """Create the tables for ``model``'s attributes and record it (a new index)."""
        with self.transaction():
            for statement in _schema(len(model["attributes"])):
                self.conn.execute(statement)
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            self.set_meta("model", json.dumps(model, sort_keys=True))
        self.ready = True

    def clear(self, model: dict[str, Any]) -> None:
        """Drop everything (``--reindex`` with another model) and start again for ``model``."""
        with self.transaction():
            for table in ("faces", "images", "meta"):
                self.conn.execute(f"DROP TABLE IF EXISTS {table}")
        self.initialise(model)

    # ---- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- images

    def image(self, path: str) -> ImageRow | None:
        row = self.conn.execute(
            "SELECT id, path, size, mtime_ns, sha256, status FROM images WHERE path = ?",
            (path,),
        ).fetchone()
        return ImageRow(*row) if row else None

    def images_under(self, roots: Sequence[str]) -> list[str]:
        """Indexed paths inside any of ``roots`` (folders or files, as absolute paths)."""
        found = []
        for (path,) in self.conn.execute("SELECT path FROM images"):
            if any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                found.append(path)
        return found

    def touch(self, image_id: int, size: int, mtime_ns: int) -> None:
        """The file's time changed but not its contents."""
        self.conn.execute(
            "UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, image_id)
        )

    def faces_of_content(self, sha256: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """An indexed image with these contents (a duplicate): its row and faces."""
        row = self.conn.execute(
            "SELECT id, status, error, width, height FROM images WHERE sha256 = ? "
            "AND status != 'error' LIMIT 1",
            (sha256,),
        ).fetchone()
        if row is None:
            return None
        n = self.n_attributes
        cols = ", ".join(f"a{i}" for i in range(n))
        faces = []
        for f in self.conn.execute(
            f"SELECT x, y, w, h, score, landmarks, {cols} FROM faces WHERE image_id = ? "
            "ORDER BY face",
            (row[0],),
        ):
            faces.append({"box": list(f[:4]), "score": f[4],
                          "landmarks": json.loads(f[5]) if f[5] else None,
                          "probabilities": list(f[6:])})  # fmt: skip
        return {"status": row[1], "error": row[2], "width": row[3], "height": row[4]}, faces

    @property
    def n_attributes(self) -> int:
        model = self.model
        return len(model["attributes"]) if model else 0

    def put_image(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        sha256: str | None,
        status: str,
        error: str | None,
        width: int | None,
        height: int | None,
        faces: Iterable[dict[str, Any]],
    ) -> int:
        """Insert or replace one image and its faces (inside the caller's transaction)."""
        row = self.conn.execute(
            "INSERT INTO images(path, size, mtime_ns, sha256, status, error, width, height, "
            "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
            "status = excluded.status, error = excluded.error, width = excluded.width, "
            "height = excluded.height, indexed_at = excluded.indexed_at RETURNING id",
            (path, size, mtime_ns, sha256, status, error, width, height, time.time()),
        ).fetchone()
        image_id = int(row[0])
        self.conn.execute("DELETE FROM faces WHERE image_id = ?", (image_id,))
        n = self.n_attributes
        cols = ", ".join(f"a{i}" for i in range(n))
        marks = ", ".join("?" * (n + 8))
        sql = (
            f"INSERT INTO faces(image_id, face, x, y, w, h, score, landmarks, {cols}) "
            f"VALUES ({marks})"
        )
        for k, face in enumerate(faces):
            probs = [float(p) for p in face["probabilities"]]
            if len(probs) != n:
                raise CollectionError(f"A face of {path} has {len(probs)} probabilities, not {n}.")
            landmarks = json.dumps(face["landmarks"]) if face.get("landmarks") else None
            self.conn.execute(sql, (image_id, k, *map(float, face["box"]),
                                    float(face["score"]), landmarks, *probs))  # fmt: skip
        return image_id

    def delete(self, paths: Iterable[str]) -> int:
        n = 0
        for path in paths:
            cur = self.conn.execute("DELETE FROM images WHERE path = ?", (path,))
            n += cur.rowcount
        return n

    # ---- reading

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status")
        out = {status: int(n) for status, n in rows}
        out["faces"] = int(self.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
        return out

    def query(
        self, condition: str, score: str, columns: Sequence[int], limit: int | None
    ) -> list[dict[str, Any]]:
        """Faces matching ``condition`` (SQL over ``a<i>``), best ``score`` first."""
        cols = "".join(f", f.a{i}" for i in columns)
        sql = (
            f"SELECT i.path, f.face, f.x, f.y, f.w, f.h, f.score, {score} AS match{cols} "
            f"FROM faces f JOIN images i ON i.id = f.image_id WHERE {condition} "
            "ORDER BY match DESC, f.id"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        out = []
        for row in self.conn.execute(sql):
            out.append({"image": row[0], "face": row[1], "box": list(row[2:6]),
                        "detector_score": row[6], "match": row[7],
                        "values": list(row[8:])})  # fmt: skip
        return out

    def count_capped(self, condition: str, index: int, cap: int) -> int:
        """How many faces match ``condition`` (a term on column ``a<index>``), up to ``cap``."""
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM faces INDEXED BY faces_a{index} "
            f"WHERE {condition} LIMIT {int(cap)})"
        ).fetchone()
        return int(row[0])

    def query_best_first(
        self,
        condition: str,
        score: str,
        columns: Sequence[int],
        limit: int,
        drive: int,
        descending: bool,
    ) -> list[dict[str, Any]]:
        """The ``limit`` best faces by ``score``, reading column ``a<drive>``'s index in
        ``descending`` order (the score is that column's factor, p or 1 - p, times factors
        at most 1): once the factor falls below the worst score kept, no later face can
        enter, so only the best part of the index is read. Same results as :meth:`query`."""
        import heapq

        cols = "".join(f", f.a{i}" for i in columns)
        order = "DESC" if descending else "ASC"
        cur = self.conn.execute(
            f"SELECT i.path, f.face, f.x, f.y, f.w, f.h, f.score, {score} AS match, f.id, "
            f"f.a{drive}{cols} FROM faces f INDEXED BY faces_a{drive} JOIN images i ON "
            f"i.id = f.image_id WHERE {condition} ORDER BY f.a{drive} {order}"
        )
        kept: list[tuple[float, int, tuple]] = []  # min-heap of (match, -id, row)
        for row in cur:
            bound = row[9] if descending else 1.0 - row[9]
            if len(kept) >= limit and bound < kept[0][0]:
                break
            item = (row[7], -row[8], row)
            if len(kept) < limit:
                heapq.heappush(kept, item)
            elif item > kept[0]:
                heapq.heapreplace(kept, item)
        cur.close()
        best = sorted(kept, key=lambda t: (-t[0], -t[1]))
        return [{"image": r[0], "face": r[1], "box": list(r[2:6]), "detector_score": r[6],
                 "match": r[7], "values": list(r[10:])} for _, _, r in best]  # fmt: skip

    def all_faces(self, batch: int = 10_000) -> Iterator[tuple[list[dict[str, Any]], Any]]:
        """Every face in chunks: (their descriptions, an [n, A] array of probabilities)."""
        import numpy as np

        cols = ", ".join(f"f.a{i}" for i in range(self.n_attributes))
        cur = self.conn.execute(
            f"SELECT i.path, f.face, f.x, f.y, f.w, f.h, f.score, {cols} "
            "FROM faces f JOIN images i ON i.id = f.image_id ORDER BY f.id"
        )
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            faces = [{"image": r[0], "face": r[1], "box": list(r[2:6]), "detector_score": r[6]}
                     for r in rows]  # fmt: skip
            yield faces, np.asarray([r[7:] for r in rows], dtype=np.float64)

    def close(self) -> None:
        self.conn.close()


def _check_schema(store: Store) -> None:
    raw = store.get_meta("schema_version")
    version = int(raw) if raw and raw.isdigit() else 0
    if version > SCHEMA_VERSION:
        raise CollectionError(
            f"{store.location} was written by a newer faceattr (schema {version}; this one "
            f"reads up to {SCHEMA_VERSION}).",
            "Upgrade faceattr (pip install -U faceattr).",
        )
    if version < SCHEMA_VERSION:
        with store.transaction():
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(v, []):
                    store.conn.execute(statement)
            store.set_meta("schema_version", str(SCHEMA_VERSION))


def open_store(db: str | Path, *, create: bool) -> Store:
    """Open the index ``db`` (a file path); ``create`` makes a new one when it is missing."""
    text = str(db)
    if "://" in text:
        raise UsageError(
            f"--db {text}: only SQLite files are supported in this version.",
            "Pass a file path, e.g. --db library.db.",
        )
    path = Path(text).expanduser()
    if not path.exists() and not create:
        raise CollectionError(
            f"No index at {path}.",
            f"Make one with `faceattr index PHOTOS_FOLDER --db {path}`.",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        store = Store(conn, str(path), ready=bool(has_meta))
        if has_meta:
            _check_schema(store)
        elif not create:
            raise CollectionError(f"{path} is not a faceattr index (no meta table).")
        return store
    except sqlite3.DatabaseError as e:
        raise CollectionError(
            f"{path} is not a readable SQLite database ({e}).",
            "Pass the file `faceattr index --db` made, or a new name to start an index.",
        ) from e
