"""`faceattr serve --db`: search, like, thumbnails and images of an index over HTTP, by id;
the answers equal `faceattr search --json`'s; a real server (subprocess) and client. And
`--nproc`: several processes on one port, stopped together with exit code 0."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

import faceattr  # noqa: E402
from faceattr.collection.query import QueryError  # noqa: E402
from test_serve import AUTH, DEADLINE_S, PHOTOS, TOKEN, Server  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An index of copies of the example photos, and the folder of the copies."""
    tmp = tmp_path_factory.mktemp("library")
    photos = tmp / "photos"
    photos.mkdir()
    for p in PHOTOS:
        shutil.copy(p, photos / p.name)
    (photos / "notes.jpg").write_text("not an image: its picture must never be served\n")
    db = tmp / "library.db"
    faceattr.index(photos, db)
    return db, photos


@pytest.fixture(scope="module")
def server(library: tuple[Path, Path], tmp_path_factory) -> Iterator[Server]:
    db, _ = library
    srv = Server(tmp_path_factory.mktemp("srv"), "--db", str(db), "--workers", "2",
                 env={"FACEATTR_TOKEN": TOKEN})  # fmt: skip
    yield srv
    srv.stop()


def get(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.get(server.url + path, headers=AUTH, timeout=DEADLINE_S, **kw)


def post(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.post(server.url + path, headers=AUTH, timeout=DEADLINE_S, **kw)


def face_rows(db: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT f.id, i.id, i.path FROM faces f JOIN images i ON i.id = f.image_id "
            "ORDER BY f.id"
        ).fetchall()


def test_model_says_what_index_is_served(server: Server, library) -> None:
    index = get(server, "/v1/model").json()["index"]
    assert index == {"db": str(library[0]), "images": 2, "faces": 3}


@pytest.mark.parametrize("query", ["Smiling", "Male and not Eyeglasses", "Young > 0.3"])
def test_search_equals_the_command(server: Server, library, query: str) -> None:
    db, _ = library
    r = get(server, "/v1/search", params={"q": query, "limit": 2})
    assert r.status_code == 200, r.text
    want = faceattr.search(query, db, limit=2)
    got = r.json()
    assert got.keys() == want.keys() and got["query"] == query
    assert [m["id"] for m in got["results"]] == [m["id"] for m in want["results"]]
    assert got["results"] == want["results"]  # the same stored numbers: equal, not close
    assert len(got["results"]) <= 2


def test_search_results_name_faces_by_id(server: Server, library) -> None:
    db, _ = library
    found = get(server, "/v1/search", params={"q": "Smiling or not Smiling"}).json()["results"]
    rows = {fid: (iid, path) for fid, iid, path in face_rows(db)}
    assert len(found) == 3
    for m in found:
        assert rows[m["id"]] == (m["image_id"], m["image"])


def test_bad_query_gives_its_column(server: Server, library) -> None:
    r = get(server, "/v1/search", params={"q": "Smiling and (Male"})
    assert r.status_code == 400
    body = r.json()
    assert body["column"] == 18
    assert body["error"]["message"].startswith("Query error at column 18")
    with pytest.raises(QueryError, match="column 18"):  # the command's own error
        faceattr.search("Smiling and (Male", library[0])


@pytest.mark.parametrize(
    "params, words",
    [
        ({"q": "  "}, "empty"),
        ({"q": "Smiling", "limit": "0"}, "out of range"),
        ({"q": "Smiling", "limit": "x"}, "not an integer"),
        ({"q": "Smiling", "sort": "up"}, "Unknown query parameter"),
        ({"q": "Not_An_Attribute"}, "Not_An_Attribute"),
    ],
)
def test_bad_search_requests_are_400(server: Server, params, words: str) -> None:
    r = get(server, "/v1/search", params=params)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_like_a_face_of_the_index(server: Server, library) -> None:
    db, _ = library
    first = face_rows(db)[0][0]
    r = post(server, "/v1/search/like", params={"face": first, "limit": 5})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["like"] == f"face {first}"
    ids = [m["id"] for m in got["results"]]
    assert first not in ids and len(ids) == 2
    matches = [m["match"] for m in got["results"]]
    assert matches == sorted(matches, reverse=True) and all(-1 <= m <= 1 for m in matches)


def test_like_an_uploaded_photo(server: Server, library) -> None:
    db, photos = library
    photo = photos / "astronaut.jpg"
    r = post(server, "/v1/search/like", files={"image": (photo.name, photo.read_bytes())})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["like"] == "astronaut.jpg"
    # The same photo is in the index: its own face is the nearest, as the command finds its
    # faces nearest to that face (the command leaves the photo itself out).
    [own] = [fid for fid, _, path in face_rows(db) if path.endswith("astronaut.jpg")]
    assert got["results"][0]["id"] == own
    assert got["results"][0]["match"] == pytest.approx(1.0, abs=1e-4)
    want = faceattr.search(like=photo, db=db)
    assert [m["id"] for m in got["results"][1:]] == [m["id"] for m in want["results"]]


@pytest.mark.parametrize(
    "params, kw, status, words",
    [
        ({"face": "999999"}, {}, 404, "no face 999999"),
        ({"face": "-1"}, {}, 400, "not a face id"),
        ({}, {"files": [("image", ("a.jpg", b"x")), ("image", ("b.jpg", b"y"))]}, 400,
         "like takes one"),
        ({}, {"files": {"image": ("a.jpg", b"not a picture")}}, 422, "a.jpg"),
        ({"detect": "false", "limit": "2000"}, {"files": {"image": ("a.jpg", b"x")}}, 400,
         "out of range"),
    ],
)  # fmt: skip
def test_bad_like_requests(server: Server, params, kw, status: int, words: str) -> None:
    r = post(server, "/v1/search/like", params=params, **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_thumbnail_and_image_by_id(server: Server, library) -> None:
    db, _ = library
    for face_id, image_id, path in face_rows(db):
        r = get(server, f"/v1/faces/{face_id}/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(r.content))
        assert max(thumb.size) <= 128
        small = Image.open(io.BytesIO(get(server, f"/v1/faces/{face_id}/thumbnail?size=32")
                                      .content))  # fmt: skip
        assert max(small.size) <= 32
        r = get(server, f"/v1/images/{image_id}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == Image.open(path).size


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/faces/999999/thumbnail", 404),
        ("/v1/faces/abc/thumbnail", 404),
        ("/v1/faces/99999999999999999999999/thumbnail", 404),  # beyond 64 bits
        ("/v1/faces/1/thumbnail?size=4096", 400),
        ("/v1/images/999999", 404),
        ("/v1/images/..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/images/1?path=/etc/passwd", 400),
    ],
)
def test_bad_picture_requests(server: Server, path: str, status: int) -> None:
    r = get(server, path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"


def test_a_picture_whose_file_is_not_an_image_is_never_sent(server: Server, library,
                                                            tmp_path: Path) -> None:  # fmt: skip
    """The index is untrusted too: a row pointing at a file that is not an image (or is gone)
    gives 404, never the file's bytes."""
    db, photos = library
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO images (path, size, mtime_ns, status, indexed_at) "
                     "VALUES (?, 1, 1, 'ok', 0)", (str(secret),))  # fmt: skip
        image_id = conn.execute("SELECT id FROM images WHERE path = ?", (str(secret),)).fetchone()[
            0
        ]
        conn.execute("INSERT INTO faces (image_id, face, x, y, w, h) VALUES (?, 0, 0, 0, 1, 1)",
                     (image_id,))  # fmt: skip
        face_id = conn.execute("SELECT id FROM faces WHERE image_id = ?", (image_id,)).fetchone()[0]
    try:
        for path in (f"/v1/images/{image_id}", f"/v1/faces/{face_id}/thumbnail"):
            r = get(server, path)
            assert r.status_code == 404, r.text
            assert b"hunter2" not in r.content
            assert "cannot be read" in r.json()["error"]["message"]
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM faces WHERE image_id = ?", (image_id,))
            conn.execute("DELETE FROM images WHERE id = ?", (image_id,))


def test_index_routes_need_the_token(server: Server, library) -> None:
    face_id, image_id, _ = face_rows(library[0])[0]
    routes = [("GET", "/v1/search?q=Smiling"), ("POST", f"/v1/search/like?face={face_id}"),
              ("GET", f"/v1/faces/{face_id}/thumbnail"),
              ("GET", f"/v1/images/{image_id}")]  # fmt: skip
    for method, path in routes:
        r = httpx.request(method, server.url + path, timeout=DEADLINE_S)
        assert r.status_code == 401, (path, r.text)


def test_without_db_the_index_routes_are_not_there(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--workers", "1")
    try:
        assert httpx.get(srv.url + "/v1/model", timeout=DEADLINE_S).json()["index"] is None
        r = httpx.get(srv.url + "/v1/search?q=Smiling", timeout=DEADLINE_S)
        assert r.status_code == 404
    finally:
        srv.stop()


def serve_fails(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceattr", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=DEADLINE_S)  # fmt: skip


def test_an_index_of_another_model_is_refused_before_listening(library, tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    shutil.copy(library[0], db)
    with sqlite3.connect(db) as conn:
        model = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
        model["sha256"] = "0" * 64
        conn.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(model),))
    result = serve_fails("--db", str(db))
    assert result.returncode == 2  # a usage error: this model with that index
    assert "was indexed with the model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp: tmp / "missing.db", "No index at"),
        (lambda tmp: tmp, "not a file"),
    ],
)
def test_a_bad_db_is_one_message(tmp_path: Path, make, words: str) -> None:
    result = serve_fails("--db", str(make(tmp_path)))
    assert result.returncode == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_postgresql_index_shared_by_two_servers(postgres_server, tmp_path: Path) -> None:
    from conftest import new_database

    url = new_database(postgres_server, "serve_shared")
    faceattr.index(PHOTOS, url)
    servers = [Server(tmp_path, "--db", url, "--workers", "1") for _ in range(2)]
    try:
        answers = [httpx.get(s.url + "/v1/search", params={"q": "Smiling"}, timeout=DEADLINE_S)
                   for s in servers]  # fmt: skip
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert answers[0].json() == answers[1].json() == faceattr.search("Smiling", url)
        face_id = answers[0].json()["results"][0]["id"]
        r = httpx.get(f"{servers[1].url}/v1/faces/{face_id}/thumbnail", timeout=DEADLINE_S)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    finally:
        for s in servers:
            s.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_nproc_serves_from_several_processes_and_stops_them(library, tmp_path: Path) -> None:
    srv = Server(tmp_path, "--nproc", "2", "--workers", "1", "--db", str(library[0]))
    try:
        servers = [c for c in children(srv.proc.pid)
                   if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]  # fmt: skip
        assert len(servers) == 2
        photo = PHOTOS[0]
        want = faceattr.predict([photo])
        for _ in range(4):  # each answer, from whichever process, is the library's
            upload = {"image": (photo.name, photo.read_bytes())}
            r = httpx.post(srv.url + "/v1/predict", files=upload, timeout=DEADLINE_S)
            assert r.status_code in (200, 503), r.text  # 503: the other is still loading
            if r.status_code == 200:
                got = r.json()[0]["faces"][0]["probabilities"]
                for name, p in want[0]["faces"][0]["probabilities"].items():
                    assert got[name] == pytest.approx(p, abs=1e-4)
        assert get(srv, "/v1/search?q=Smiling").status_code in (200, 503)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(DEADLINE_S) == 0, srv.log.read_text()
        assert not any(os.path.exists(f"/proc/{pid}") for pid in servers)  # joined: reaped
    finally:
        srv.stop()


def test_openapi_lists_every_route(server: Server, library) -> None:
    from faceattr.serve.app import create_app

    app = create_app(db=library[0])  # the model loads when the app starts: not here
    routes = {route.path for route in app.routes} - {"/openapi.json"}
    documented = set(httpx.get(server.url + "/openapi.json", timeout=DEADLINE_S).json()["paths"])
    assert routes == documented
    assert {"/v1/search", "/v1/images/{id}"} <= routes
    plain = {route.path for route in create_app().routes} - {"/openapi.json"}
    assert "/v1/search" not in plain and plain < routes
