"""Hostile input to the index and its neighbours: passwords in URLs (never shown, never in a
lock file), queries nested past any sensible depth, damaged column stores, and databases that
are not faceattr indexes (refused, never written to)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import new_database
from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.cli.app import app
from faceattr.collection.query import MAX_DEPTH, MAX_TERMS, QueryError, evaluate, parse
from faceattr.collection.search import SearchResult, search_index
from faceattr.collection.store import CollectionError, open_store
from faceattr.errors import UsageError
from faceattr.fileio import LockedError, hold_lock
from faceattr.redaction import redact

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = list(CELEBA_ATTRIBUTES)
SECRET = "Hunter2-s3cret"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def _fill(db: str | Path, n_images: int = 3) -> str | Path:
    """A small index without predicting: the default model's identity, made-up faces."""
    from faceattr.models.file import ModelFile

    store = open_store(db, create=True)
    store.initialise(ModelFile.for_backend("default").identity())
    rng = np.random.default_rng(0)
    with store.transaction():
        for k in range(n_images):
            face = {"box": [10, 10, 50, 50], "score": 0.9, "probabilities": rng.random(40)}
            store.put_image(str(EXAMPLES / "astronaut.jpg") if k == 0 else f"/p/{k}.jpg",
                            size=1, mtime_ns=1, sha256=None, status="ok", error=None,
                            width=100, height=100, faces=[face])  # fmt: skip
    store.close()
    return db


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://me:{SECRET}@db.example:5432/photos",
        f"postgres://me:{SECRET}@db.example:notaport/photos",  # raised ValueError before
        f"postgresql://me:{SECRET}@[::1/photos",  # an unclosed IPv6 bracket
        f"postgresql://me:p@{SECRET}@host/db",  # unescaped "@" in the password
        f"postgresql://me:pa/{SECRET}@host/db",  # unescaped "/"
        f"postgresql://me:pa?{SECRET}#x@host/db",  # "?" and "#"
        f"postgresql://me:two {SECRET}@host/db",  # a space
        f"postgresql://:{SECRET}@host/db",  # no user name
        f"postgresql://me@host/db?password={SECRET}&sslmode=require",
        f"postgresql://me@host/db?pass%77ord={SECRET}",  # an escaped parameter name
        f"host=db user=me password={SECRET} dbname=photos",  # libpq key=value
        f"host=db password='{SECRET} x' dbname=photos",
        f"mysql+pymysql://root:{SECRET}@localhost/x",
        f"HTTPS://token:{SECRET}@example.com/x",
        f"sqlite:///study.db?token={SECRET}",
    ],
)
def test_redact_hides_every_password(url):
    shown = redact(f"Cannot connect to {url}: it failed")
    assert SECRET not in shown and "***" in shown and shown.startswith("Cannot connect to ")


def test_redact_keeps_what_is_no_secret_and_never_raises():
    for text in [
        "postgresql://me@host:5432/db",
        "postgresql://host:5432/db",
        "/home/me/lib.db",
        "sqlite:////tmp/a:b@c/x.db",
        "faceattr search 'Smiling' --db lib.db",
        "",
    ]:
        assert redact(text) == text
    for odd in [None, 12, b"\xff", object(), "\x00://:@", "://" * 1000, "a" * 100_000 + "://",
                "a://b:" * 10_000]:  # fmt: skip
        assert isinstance(redact(odd), str)
    # A library's error quoting a piece of the password is cleaned too.
    url = f"postgresql://me:{SECRET}%zz@host/db"
    assert SECRET not in redact(f'invalid percent-encoded token: "{SECRET}%zz"', url)


def test_search_result_never_holds_a_password():
    found = SearchResult(db=f"postgresql://me:{SECRET}@host/db", query="Smiling")
    assert SECRET not in json.dumps(found.to_json()) and found.db.startswith("postgresql://me:***@")


# --- secrets in the commands' output -----------------------------------------------------------


@pytest.fixture(scope="module")
def secret_url(postgres_server):
    """A PostgreSQL index whose URL holds a password (the test server trusts any)."""
    url = new_database(postgres_server, "secrets")
    url = url.replace("postgresql://faceattr@", f"postgresql://faceattr:{SECRET}@")
    _fill(url)
    return url


def test_search_outputs_never_show_the_password(secret_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(tmp_path / "cache"))
    page, table = tmp_path / "sheet.html", tmp_path / "found.csv"
    runs = [
        invoke("search", "Smiling or not Smiling", "--db", secret_url, "--json"),
        invoke("search", "Smiling or not Smiling", "--db", secret_url),
        invoke("search", "Smiling", "--db", secret_url, "--html", page, "--csv", table),
        invoke("search", "--like", EXAMPLES / "two-portraits.jpg", "--db", secret_url, "--json"),
    ]
    for r in runs:
        assert r.exit_code == 0, r.output
        assert SECRET not in r.output
    assert json.loads(runs[0].stdout)["db"] == secret_url.replace(SECRET, "***")
    assert json.loads(runs[3].stdout)["results"]
    assert SECRET not in page.read_text() and "faceattr:***@" in page.read_text()
    assert SECRET not in table.read_text()
    for folder, _, files in os.walk(tmp_path / "cache"):
        assert SECRET not in folder and not any(SECRET in f for f in files)


def test_index_and_connection_errors_never_show_the_password(secret_url, postgres_server):
    port = postgres_server.rsplit(":", 1)[1]
    bad = [
        (secret_url.replace("/secrets", "/missing"), 1, "Cannot connect"),
        (f"postgresql://me:{SECRET}@127.0.0.1:notaport/db", 1, "Cannot connect"),
        (f"postgresql://me:{SECRET}%zz@127.0.0.1:{port}/db", 1, "Cannot connect"),
        (f"postgresql://me:p@{SECRET}@127.0.0.1:{port}/db", 1, "Cannot connect"),
        (f"mysql://me:{SECRET}@127.0.0.1/db", 2, "not an SQLite file"),
    ]
    for url, code, says in bad:
        r = invoke("search", "Smiling", "--db", url)
        assert r.exit_code == code and says in said(r), (url, r.output)
        assert SECRET not in r.output and "Traceback" not in r.output
    r = invoke("index", EXAMPLES / "astronaut.jpg", "--db", secret_url, "--json")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output and json.loads(r.stdout)["db"].startswith("postgresql://")


def test_tune_storage_errors_never_show_the_password(synthetic_root, tmp_path):
    pytest.importorskip("optuna")
    for url in (f"postgresql://me:{SECRET}@127.0.0.1:1/study",
                f"postgresql://me:{SECRET}@127.0.0.1:notaport/study",
                f"postgres://me:p@{SECRET}@127.0.0.1:1/study",
                f"nosuchdb://me:{SECRET}@host/study"):  # fmt: skip
        r = invoke("tune", "--root", synthetic_root, "--param", "lr=0.01,0.02", "--study-dir",
                   tmp_path / "s", "--storage", url)  # fmt: skip
        assert r.exit_code == 1 and "Cannot open the study storage" in said(r), r.output
        assert SECRET not in r.output and "Traceback" not in r.output
        r = invoke("tune", "--summary", tmp_path / "s", "--storage", url)
        assert r.exit_code == 1 and SECRET not in r.output and "Traceback" not in r.output


# --- lock files ----------------------------------------------------------------------------------


def test_a_lock_file_holds_no_secret_and_is_private(tmp_path, monkeypatch):
    argv = ["faceattr", "tune", "--storage", f"postgresql://me:{SECRET}@db/study",
            "--param", "lr=0.1,0.2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    out = tmp_path / "run"
    with hold_lock(out, "faceattr.lock", what="run directory"):
        lock = out / "faceattr.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        holder = json.loads(lock.read_text())
        assert SECRET not in lock.read_text() and "me:***@db/study" in holder["command"]
        second = hold_lock(out, "faceattr.lock", what="run directory")
        with pytest.raises(LockedError) as caught, second:  # told who holds it
            pass
        assert "me:***@db" in str(caught.value) and SECRET not in str(caught.value)
        # A lock an older faceattr wrote (the password in full) is never shown either.
        lock.write_text(json.dumps({**holder, "command": " ".join(argv).replace("***", SECRET),
                                    "host": f"postgresql://x:{SECRET}@h"}))  # fmt: skip
        with pytest.raises(LockedError) as caught, hold_lock(out, "faceattr.lock", what="x"):
            pass
        assert SECRET not in str(caught.value)


def test_an_old_public_lock_is_made_private(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / "faceattr.lock"
    lock.write_text(json.dumps({"pid": 2**22 + 7, "host": "gone", "command": f"x:{SECRET}@y"}))
    lock.chmod(0o644)
    notes: list[str] = []
    with hold_lock(out, "faceattr.lock", what="run directory", note=notes.append):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600 and SECRET not in lock.read_text()
    assert notes and SECRET not in notes[0]
    lock.write_text("[" * 100_000)  # nested past any sense: a stale lock all the same
    with hold_lock(out, "faceattr.lock", what="run directory", note=notes.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_file_that_is_a_link_or_a_fifo_is_never_opened(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for kind in ("link", "fifo"):
        out = tmp_path / kind
        out.mkdir()
        lock = out / "faceattr.lock"
        if kind == "link":
            lock.symlink_to(target)
        else:
            os.mkfifo(lock)
        refused = pytest.raises(LockedError, match="link or not a regular file")
        with refused, hold_lock(out, "faceattr.lock", what="run directory"):
            pass
        assert target.read_text() == "keep me" and lock.is_symlink() == (kind == "link")


# --- the query parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "column"),
    [
        ("(" * 250 + "Smiling" + ")" * 250, MAX_DEPTH + 1),
        ("not " * 1000 + "Smiling", 4 * MAX_DEPTH + 1),
        ("not (" * 60 + "Smiling" + ")" * 60, 5 * 50 + 1),  # "not" and "(" count together
        ("!" * 5000 + "Smiling", MAX_DEPTH + 1),
    ],
)
def test_deep_nesting_is_a_query_error(query, column):
    with pytest.raises(QueryError) as caught:
        parse(query, NAMES)
    message = caught.value.message
    assert f"column {column}:" in message and f"more than {MAX_DEPTH} levels" in message
    assert caught.value.exit_code == 2 and len(message) < 400  # the query is shown cut


def test_the_limits_themselves_parse_and_evaluate():
    deep = "(" * MAX_DEPTH + "Smiling" + ")" * MAX_DEPTH
    nots = "not " * MAX_DEPTH + "Smiling"
    wide = " or ".join(["Smiling > 0.5", "Male"] * (MAX_TERMS // 2))
    probs = np.random.default_rng(0).random((40, 7))
    for query in (deep, nots, wide):
        matches, score = evaluate(parse(query, NAMES), lambda i: probs[i], [0.5] * 40)
        assert matches.shape == score.shape == (7,)
    with pytest.raises(QueryError, match=f"more than {MAX_TERMS} attribute names"):
        parse(wide + " or Male", NAMES)


def test_long_and_odd_queries_give_short_messages():
    for query in ["x" * 200_000, "Smiling and " + "\x00\n\t" * 50, "Smiling > " + "9" * 5000,
                  "Smiling " * 10_000, "\ud800", "Smiling > 0.5.5"]:  # fmt: skip
        with pytest.raises(QueryError) as caught:
            parse(query, NAMES)
        assert len(caught.value.message) < 500
    with pytest.raises(QueryError):
        parse(None, NAMES)  # type: ignore[arg-type]


def test_deep_query_on_the_command_line(tmp_path):
    _fill(tmp_path / "lib.db")
    r = invoke("search", "(" * 250 + "Smiling" + ")" * 250, "--db", tmp_path / "lib.db")
    assert r.exit_code == 2 and "levels of parentheses" in said(r)
    assert "Traceback" not in r.output and "RecursionError" not in r.output


# --- the column store ----------------------------------------------------------------------------


def _column_files(db: Path) -> list[Path]:
    return sorted(Path(f"{db}-columns").glob("*.npy"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "zip", "shape", "pickle"])
def test_a_damaged_column_store_is_rebuilt(tmp_path, damage):
    db = tmp_path / "lib.db"
    _fill(db, n_images=5)
    before = search_index("Smiling or Male", db, limit=None).results
    ids_file, probs_file = sorted(_column_files(db))  # ids-<gen>, probs-<gen>
    target = probs_file if damage != "shape" else ids_file
    if damage == "garbage":
        target.write_bytes(os.urandom(300))
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-9])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "zip":
        np.savez(target.with_suffix(".tmpz"), a=np.zeros(3))
        target.write_bytes(target.with_suffix(".tmpz.npz").read_bytes())
    elif damage == "shape":
        np.save(target, np.zeros(3, np.int64))
    else:
        np.save(target, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    after = search_index("Smiling or Male", db, limit=None).results
    assert after == before
    ids, probs = open_store(db, create=False).columns()  # rebuilt whole
    assert probs.shape == (40, len(ids)) == (40, 5)


def test_a_column_store_that_stays_unreadable_is_an_error(tmp_path, monkeypatch):
    from faceattr.collection.store import Store

    db = tmp_path / "lib.db"
    _fill(db)
    builds = []

    def broken_build(self, folder, ids_file, probs_file):
        builds.append(ids_file)
        folder.mkdir(parents=True, exist_ok=True)
        ids_file.write_bytes(b"not numpy")
        probs_file.write_bytes(b"not numpy")

    monkeypatch.setattr(Store, "_build_columns", broken_build)
    with pytest.raises(CollectionError, match="cannot be read even after rebuilding"):
        search_index("Smiling", db)
    assert len(builds) == 2  # built, then rebuilt once: no loop, no recursion


def test_only_the_column_stores_own_files_are_removed(tmp_path):
    db = tmp_path / "lib.db"
    _fill(db)
    search_index("Smiling", db)
    mine = Path(f"{db}-columns") / "my-embeddings.npy"  # someone's file in the folder
    np.save(mine, np.zeros(3))
    store = open_store(db, create=False)
    with store.transaction():
        store.delete(["/p/1.jpg"])  # a new generation: the old column files go
    store.close()
    search_index("Smiling", db)
    assert mine.exists() and len(_column_files(db)) == 3


# --- databases that are not faceattr indexes --------------------------------------------------


def _other_app(path: Path, *statements: str) -> Path:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path


def _our_index_with(path: Path, **meta: str | None) -> Path:
    _fill(path)
    conn = sqlite3.connect(path)
    for key, value in meta.items():
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (
            lambda p: _other_app(
                p, "CREATE TABLE images (id INTEGER, url TEXT)", "CREATE TABLE users (name TEXT)"
            ),
            "another application's tables (images, users)",
        ),
        (
            lambda p: _other_app(p, "CREATE TABLE meta (name TEXT, data BLOB)"),
            "no key and value columns",
        ),
        (
            lambda p: _other_app(
                p,
                "CREATE TABLE meta (key TEXT, value TEXT)",
                "INSERT INTO meta VALUES ('theme', 'dark')",
            ),
            "no schema_version",
        ),
        (lambda p: _our_index_with(p, model="{not json"), "not valid JSON"),
        (lambda p: _our_index_with(p, model="[1, 2]"), "not a model's name"),
        (
            lambda p: _our_index_with(
                p, model='{"name": "x", "sha256": "0", "attributes": ["A"], "thresholds": [NaN]}'
            ),
            "not a model's name",
        ),
        (lambda p: _our_index_with(p, model="[" * 100_000), "not valid JSON"),
        (lambda p: _our_index_with(p, model=None), "no model record"),
        (lambda p: _our_index_with(p, schema_version="abc"), "not a version number"),
        (lambda p: _our_index_with(p, schema_version="\u00b2"), "not a version number"),
        (lambda p: _our_index_with(p, schema_version="0"), "not a version number"),
        (lambda p: _our_index_with(p, schema_version=None), "no schema_version"),
        (lambda p: _our_index_with(p, generation="../../../x"), "generation"),
    ],
)
def test_what_is_not_an_index_is_refused_and_left_alone(tmp_path, make, says):
    db = make(tmp_path / "other.db")
    before = _digest(db)
    for command in (["search", "Smiling"], ["index", EXAMPLES / "astronaut.jpg"]):
        r = invoke(*command, "--db", db)
        assert r.exit_code == 1 and says in said(r), r.output
        assert "faceattr index" in said(r) and "Traceback" not in r.output
    assert _digest(db) == before  # not written to (the journal mode either)
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-columns").exists()


def test_an_index_missing_its_columns_is_refused(tmp_path):
    db = _fill(tmp_path / "lib.db")
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE faces DROP COLUMN a39")
    conn.commit()
    conn.close()
    with pytest.raises(CollectionError, match="its faces table lacks a39"):
        open_store(db, create=False)


def test_an_empty_database_becomes_an_index(tmp_path):
    db = _other_app(tmp_path / "empty.db", "CREATE TABLE t (x)", "DROP TABLE t")
    with pytest.raises(CollectionError, match="it is empty"):
        open_store(db, create=False)
    _fill(db)
    assert search_index("Smiling or not Smiling", db).results


def test_paths_that_are_not_files_are_refused(tmp_path):
    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    for db in (fifo, tmp_path):
        r = invoke("search", "Smiling", "--db", db)
        assert r.exit_code == 1 and "is not a file" in said(r), r.output
    with pytest.raises(UsageError):
        open_store("lib\x00.db", create=True)


def test_another_applications_postgres_database_is_left_alone(postgres_server):
    import psycopg

    url = new_database(postgres_server, "otherapp")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE images (id INT, url TEXT)")
    r = invoke("index", EXAMPLES / "astronaut.jpg", "--db", url)
    assert r.exit_code == 1 and "another application's tables (images)" in said(r), r.output
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = 'public'").fetchall()  # fmt: skip
    assert tables == [("images",)]
