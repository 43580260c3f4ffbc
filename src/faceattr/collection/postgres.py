"""An index in PostgreSQL (the ``postgres`` extra): connecting, with the URL's password kept
out of every message; the :class:`~faceattr.collection.store.Store` then speaks its
:data:`~faceattr.collection.store.POSTGRES` dialect (all of the SQL is in store.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceattr.collection.store import POSTGRES, CollectionError, Store
from faceattr.errors import command
from faceattr.redaction import redact


class _Placeholders:
    """A psycopg connection whose ``execute`` takes SQLite's ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), params or None)

    def close(self) -> None:
        self._conn.close()


def open_postgres(url: str, create: bool) -> Store:
    """The index at the ``postgresql://`` URL ``url`` (checked, and upgraded, by
    :func:`~faceattr.collection.schema.check_index`); ``create``: an empty database may
    become one."""
    import hashlib
    import os

    from faceattr.extras import require

    require("psycopg", what='An index in PostgreSQL (`db="postgresql://..."`)')
    import psycopg

    from faceattr.collection.schema import check_index

    shown = redact(url)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except (psycopg.Error, ValueError) as e:
        reason = (redact(e, url).strip().splitlines() or ["(no reason given)"])[0][:300]
        raise CollectionError(
            f"Cannot connect to {shown}: {reason}",
            "Check the URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) and that the server "
            "is running and reachable.",
        ) from None  # the library's error quotes the URL, password included
    cache = Path(os.environ.get("FACEATTR_CACHE_DIR") or Path.home() / ".cache" / "faceattr")
    key = hashlib.sha256(shown.encode()).hexdigest()[:16]
    store = Store(_Placeholders(conn), shown, ready=False, dialect=POSTGRES,
                  columns_dir=cache / "index-columns" / key)  # fmt: skip
    try:
        store.ready = check_index(store, create=create)
        if not store.ready and not create:
            make = command("`faceattr index PHOTOS --db {db}`", db=shown)
            raise CollectionError(f"No index in {shown}.", f"Make one with {make}.")
    except BaseException as e:
        conn.close()
        if not isinstance(e, psycopg.Error):
            raise
        raise CollectionError(f"Cannot read {shown}: {redact(e, url)}") from None
    return store
