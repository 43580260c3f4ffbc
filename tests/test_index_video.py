"""Videos in the index: `faceattr index` on a folder of photos and videos (each track a
searchable face with its time span and best crop), search results that say so, thumbnails,
re-indexing and pruning a video, the upgrade of a version-1 index, and `faceattr serve`
streaming an indexed video (Range) but never another file's bytes. The clips are made here
with PyAV from the example photos (the helpers of test_video.py), so every track is known."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.collection.indexer import index_folders
from faceattr.collection.search import search_index
from faceattr.collection.store import SCHEMA_VERSION, CollectionError, open_store

pytest.importorskip("av")
pytest.importorskip("lap")

from test_video import FPS, MOVING, TRUE_SPANS, scene, write_clip  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
EVERYTHING = "Male or not Male"  # every face matches
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A folder of the example photos, the moving clip in a subfolder (the walk recurses),
    and a text file named like a video; indexed once."""
    d = tmp_path_factory.mktemp("library")
    folder = d / "media"
    (folder / "clips").mkdir(parents=True)
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    clip = write_clip(folder / "clips" / "moving.mp4", scene(30, MOVING))
    (folder / "broken.mp4").write_text("not a video, named like one\n")
    db = d / "library.db"
    summary = index_folders([folder], db)
    return {"db": db, "folder": folder, "clip": clip, "summary": summary}


def video_matches(db, query=EVERYTHING):
    return [m for m in search_index(query, db, limit=None).results if m.video]


def test_a_folder_of_photos_and_videos_is_indexed(library):
    s = library["summary"]
    # 2 photos and the clip added; the text file named .mp4 is an error of its own.
    assert (s.added, s.failed) == (3, 1), s.to_json()
    assert s.errors[0]["image"].endswith("broken.mp4")
    assert "video" in s.errors[0]["error"].lower()
    assert s.faces == 3 + 2  # the photos' 3 faces and the clip's 2 tracks
    store = open_store(library["db"], create=False)
    try:
        row = store.image(str(library["clip"]))
        assert row is not None and row.status == "ok"
    finally:
        store.close()


def test_search_finds_the_tracks_with_their_spans(library):
    found = video_matches(library["db"])
    assert len(found) == 2
    spans = sorted((m.start, m.end) for m in found)
    want = sorted(TRUE_SPANS.values())
    for (start, end), (ws, we) in zip(spans, want, strict=True):
        assert abs(start - ws) <= 2 / FPS and abs(end - we) <= 2 / FPS, (spans, want)
    for m in found:
        assert m.image == str(library["clip"]) and m.video is True
        assert m.detector_score is None  # a track has no single detection score
    js = search_index(EVERYTHING, library["db"], limit=None).to_json()["results"]
    videos = [r for r in js if r.get("video")]
    photos = [r for r in js if not r.get("video")]
    assert len(videos) == 2 and len(photos) == 3
    assert all({"video", "start", "end"} <= set(r) for r in videos)
    assert not any({"video", "start", "end"} & set(r) for r in photos)  # photos' JSON as before
    json.dumps(js, allow_nan=False)


def test_a_track_s_probabilities_are_those_predict_gives(library):
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor
    from faceattr.video.pipeline import VideoOptions, predict_video

    r = predict_video(library["clip"], Predictor(), detector=create_detector(None),
                      options=VideoOptions(), workers=1)  # fmt: skip
    stored = {(m.start, m.end): m for m in video_matches(library["db"], "Smiling > 0")}
    assert len(stored) == len(r.tracks) == 2
    for t in r.tracks:
        m = stored[(t.start, t.end)]
        assert m.probabilities["Smiling"] == pytest.approx(t.probabilities["Smiling"], abs=1e-4)


def test_video_faces_have_their_stored_crop_as_picture(library):
    from faceattr.collection.pictures import crop_thumbnail
    from faceattr.report.contact_sheet import contact_sheet

    db = library["db"]
    found = search_index(EVERYTHING, db, limit=None)
    store = open_store(db, create=False)
    try:
        crops = {m.id: store.face_crop(m.id) for m in found.results}
    finally:
        store.close()
    for m in found.results:
        if m.video:
            crop = Image.open(io.BytesIO(crops[m.id]))
            assert crop.format == "JPEG" and min(crop.size) >= 64
            thumb = Image.open(io.BytesIO(crop_thumbnail(crops[m.id], 48)))
            assert max(thumb.size) == 48
        else:
            assert crops[m.id] is None  # a photo's face is cut from its photo
    assert crop_thumbnail(b"not a jpeg") is None
    page = contact_sheet(found, "everything", db)
    without = contact_sheet(found, "everything")  # no index to read the crops from
    spans = [f"{m.start:.1f}-{m.end:.1f} s" for m in found.results if m.video]
    assert all(s in page for s in spans)
    # The video faces' pictures are the crops; without them the video is no picture.
    assert page.count("data:image/jpeg") == 5 and without.count("data:image/jpeg") == 3


def test_search_command_shows_the_time_span(library):
    db = library["db"]
    r = invoke("search", EVERYTHING, "--db", db, "--limit", "0")
    assert r.exit_code == 0, r.output
    assert "time" in r.output
    for m in video_matches(db):
        assert f"{m.start:.1f}-{m.end:.1f} s" in r.output
    r = invoke("search", EVERYTHING, "--db", db, "--limit", "0", "--json")
    results = json.loads(r.stdout)["results"]
    assert sorted(r.get("start", -1) for r in results)[-2:] == sorted(
        m.start for m in video_matches(db)
    )


def test_a_changed_video_is_indexed_again_a_copy_keeps_its_crops_a_removed_one_pruned(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    clip = write_clip(folder / "clip.mp4", scene(30, MOVING))
    db = tmp_path / "v.db"
    s = index_folders([folder], db)
    assert (s.added, s.faces) == (1, 2)
    again = index_folders([folder], db)
    assert (again.unchanged, again.added, again.changed) == (1, 0, 0)
    # Changed: only the astronaut, for 12 frames.
    write_clip(clip, scene(12, {"astronaut": MOVING["astronaut"]}))
    s = index_folders([folder], db)
    assert (s.changed, s.faces) == (1, 1)
    [m] = video_matches(db)
    assert m.start == pytest.approx(0.0, abs=2 / FPS) and m.end == pytest.approx(1.1, abs=2 / FPS)
    # A copy takes the faces (and crops) of the original without predicting.
    shutil.copy(clip, folder / "copy.mp4")
    s = index_folders([folder], db)
    assert (s.added, s.duplicates) == (1, 1)
    found = video_matches(db)
    assert len(found) == 2 and len({(m.start, m.end) for m in found}) == 1
    store = open_store(db, create=False)
    try:
        crops = [store.face_crop(m.id) for m in found]
    finally:
        store.close()
    assert crops[0] is not None and crops[0] == crops[1]
    clip.unlink()
    s = index_folders([folder], db, prune=True)
    assert s.pruned == 1
    [m] = video_matches(db)
    assert m.image.endswith("copy.mp4")
    with sqlite3.connect(db) as conn:  # the pruned video's crop went with its face
        assert conn.execute("SELECT COUNT(*) FROM face_crops").fetchone()[0] == 1


def test_without_the_video_extra_a_video_is_one_error_and_the_photos_are_indexed(
    tmp_path, monkeypatch
):
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(PHOTOS[0], folder / PHOTOS[0].name)
    write_clip(folder / "clip.mp4", scene(4, {"astronaut": MOVING["astronaut"]}))
    monkeypatch.setitem(sys.modules, "av", None)
    s = index_folders([folder], tmp_path / "x.db")
    assert (s.added, s.failed) == (1, 1)
    assert s.errors[0]["image"].endswith("clip.mp4")
    assert 'pip install "faceattr[video]"' in s.errors[0]["error"]


# The tables of schema version 1, as faceattr wrote them before videos.
V1_TABLES = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE images (id {serial}, path TEXT NOT NULL UNIQUE,
       size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, sha256 TEXT, status TEXT NOT NULL,
       error TEXT, width INTEGER, height INTEGER, indexed_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX images_sha256 ON images(sha256)",
    """CREATE TABLE faces (id {serial},
       image_id BIGINT NOT NULL REFERENCES images(id) ON DELETE CASCADE, face INTEGER NOT NULL,
       x DOUBLE PRECISION, y DOUBLE PRECISION, w DOUBLE PRECISION, h DOUBLE PRECISION,
       score DOUBLE PRECISION, landmarks TEXT, {columns})""",
    "CREATE INDEX faces_image ON faces(image_id)",
]


def make_v1_index(db: Path | str, photo: Path) -> dict[str, float]:
    """A version-1 index holding one face of ``photo`` (``db``: an SQLite file or a
    PostgreSQL URL); its probabilities."""
    from faceattr.collection.store import POSTGRES, SQLITE
    from faceattr.models.file import ModelFile

    model = ModelFile.for_backend("default").identity()
    n = len(model["attributes"])
    probs = [round(0.01 + i / (n + 1), 4) for i in range(n)]
    if str(db).startswith("postgresql://"):
        import psycopg

        from faceattr.collection.postgres import _Placeholders

        conn, serial = _Placeholders(psycopg.connect(str(db), autocommit=True)), POSTGRES.serial
    else:
        conn, serial = sqlite3.connect(db, isolation_level=None), SQLITE.serial
    try:
        columns = ", ".join(f"a{i} DOUBLE PRECISION" for i in range(n))
        for statement in V1_TABLES:
            conn.execute(statement.format(columns=columns, serial=serial))
        for key, value in (("schema_version", "1"), ("generation", "7"),
                           ("model", json.dumps(model, sort_keys=True))):  # fmt: skip
            conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        st = photo.stat()
        conn.execute("INSERT INTO images(path, size, mtime_ns, sha256, status, width, height, "
                     "indexed_at) VALUES (?, ?, ?, NULL, 'ok', 10, 10, 0)",
                     (str(photo.resolve()), st.st_size, st.st_mtime_ns))  # fmt: skip
        marks = ", ".join("?" * n)
        conn.execute(f"INSERT INTO faces(image_id, face, x, y, w, h, score, "
                     f"{', '.join(f'a{i}' for i in range(n))}) VALUES (1, 0, 1, 2, 3, 4, 0.9, "
                     f"{marks})", probs)  # fmt: skip
    finally:
        conn.close()
    return dict(zip(model["attributes"], probs, strict=True))


def test_a_version_1_postgresql_index_is_upgraded_too(tmp_path, postgres_server):
    from conftest import new_database

    url = new_database(postgres_server, "version1")
    photo = shutil.copy(PHOTOS[0], tmp_path / PHOTOS[0].name)
    probs = make_v1_index(url, Path(photo))
    [m] = search_index(EVERYTHING, url, limit=None).results
    assert m.probabilities == pytest.approx({"Male": probs["Male"]}) and m.video is None
    store = open_store(url, create=False)
    try:
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert {"start_time", "end_time"} <= store.columns_of("faces")
        assert store.columns_of("face_crops") == {"face_id", "jpeg"}
    finally:
        store.close()


def test_a_version_1_index_is_upgraded_in_place_and_keeps_its_faces(tmp_path):
    photo = shutil.copy(PHOTOS[0], tmp_path / PHOTOS[0].name)
    db = tmp_path / "v1.db"
    probs = make_v1_index(db, Path(photo))
    found = search_index("Male or not Male", db, limit=None)  # opening upgrades it
    [m] = found.results
    assert m.box == [1, 2, 3, 4] and m.video is None
    assert m.probabilities == pytest.approx({"Male": probs["Male"]})
    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = {r[1] for r in conn.execute("PRAGMA table_info(faces)")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert version == (str(SCHEMA_VERSION),) == ("2",)
    assert {"start_time", "end_time"} <= columns and "face_crops" in tables
    # The upgraded index takes videos; its photo is unchanged (same size and time).
    write_clip(tmp_path / "clip.mp4", scene(6, {"astronaut": MOVING["astronaut"]}))
    s = index_folders([tmp_path], db)
    assert (s.unchanged, s.added) == (1, 1) and len(video_matches(db)) == 1


def test_a_version_2_index_without_its_crops_table_is_refused(tmp_path):
    db = tmp_path / "bad.db"
    index_folders([PHOTOS[0]], db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE face_crops")
    with pytest.raises(CollectionError, match="face_crops table"):
        open_store(db, create=False)


def test_postgresql_stores_video_faces_and_their_crops(tmp_path, postgres_server):
    from conftest import new_database

    url = new_database(postgres_server, "videos")
    folder = tmp_path / "media"
    folder.mkdir()
    write_clip(folder / "clip.mp4", scene(30, MOVING))
    s = index_folders([folder], url)
    assert (s.added, s.faces) == (1, 2)
    found = video_matches(url)
    spans = sorted((m.start, m.end) for m in found)
    assert len(spans) == 2
    for (start, end), (ws, we) in zip(spans, sorted(TRUE_SPANS.values()), strict=True):
        assert abs(start - ws) <= 2 / FPS and abs(end - we) <= 2 / FPS, spans
    store = open_store(url, create=False)
    try:
        crop = store.face_crop(found[0].id)
    finally:
        store.close()
    assert Image.open(io.BytesIO(crop)).format == "JPEG"


# ---- faceattr serve --db: the video's thumbnail and the video itself


@pytest.fixture(scope="module")
def client(library):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from faceattr.inference.predictor import Predictor
    from faceattr.serve import create_app

    with TestClient(create_app(Predictor(), db=str(library["db"]))) as c:
        yield c


def test_serve_streams_a_video_with_range_requests(client, library):
    [m, *_] = video_matches(library["db"])
    data = library["clip"].read_bytes()
    whole = client.get(f"/v1/videos/{m.image_id}")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/v1/videos/{m.image_id}", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    thumb = client.get(f"/v1/faces/{m.id}/thumbnail?size=64")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64


def test_serve_never_sends_what_is_not_a_video(client, library, tmp_path):
    db = library["db"]
    photo = next(m for m in search_index(EVERYTHING, db, limit=None).results if not m.video)
    r = client.get(f"/v1/videos/{photo.image_id}")  # a photo's entry: not a video
    assert r.status_code == 404 and b"\xff\xd8" not in r.content
    assert client.get("/v1/videos/999999").status_code == 404
    # A row pointing at a text file (the index tampered with): 404, its bytes never sent.
    secret = tmp_path / "secret.mp4"
    secret.write_text("SECRET-TEXT never to be served\n")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO images(path, size, mtime_ns, status, indexed_at) "
                     "VALUES (?, 1, 1, 'ok', 0)", (str(secret),))  # fmt: skip
        [(tampered,)] = conn.execute("SELECT id FROM images WHERE path = ?", (str(secret),))
    try:
        r = client.get(f"/v1/videos/{tampered}", headers={"Range": "bytes=0-5"})
        assert r.status_code == 404 and b"SECRET" not in r.content
        assert "not a video" in r.json()["error"]["message"]
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM images WHERE id = ?", (tampered,))


def test_a_damaged_crop_or_span_is_no_picture_and_no_crash(client, library):
    db = library["db"]
    m = video_matches(db)[0]
    with sqlite3.connect(db) as conn:
        [(crop,)] = conn.execute("SELECT jpeg FROM face_crops WHERE face_id = ?", (m.id,))
        conn.execute("UPDATE face_crops SET jpeg = 'text, not bytes' WHERE face_id = ?", (m.id,))
        conn.execute("UPDATE faces SET start_time = 'soon' WHERE id = ?", (m.id,))
    try:
        r = client.get(f"/v1/faces/{m.id}/thumbnail")
        assert r.status_code == 404  # the video is no picture, the text no crop
        found = {x.id: x for x in search_index(EVERYTHING, db, limit=None).results}
        assert found[m.id].video is None and found[m.id].start is None
        r = invoke("search", EVERYTHING, "--db", db, "--limit", "0")
        assert r.exit_code == 0, r.output
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE face_crops SET jpeg = ? WHERE face_id = ?", (crop, m.id))
            conn.execute("UPDATE faces SET start_time = ? WHERE id = ?", (m.start, m.id))


def test_a_file_swapped_after_the_check_is_not_sent(library, tmp_path):
    from faceattr.collection.pictures import indexed_video
    from faceattr.serve.index import CheckedFile

    clip = tmp_path / "swap.mp4"
    shutil.copy(library["clip"], clip)
    st, media_type = indexed_video(str(clip))
    response = CheckedFile(str(clip), st, media_type)
    other = tmp_path / "other"
    other.write_bytes(b"SECRET" * (st.st_size // 6 + 1))
    other.replace(clip)  # another file (inode) under the checked name
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "headers": [], "asgi": {"spec_version": "2.4"}}
    with pytest.raises(OSError, match="changed after it was checked"):
        asyncio.run(response(scope, receive, send))
    assert not any(b"SECRET" in m.get("body", b"") for m in sent)


try:  # the page's Chromium tab and browser (the serve extra and Playwright)
    from test_serve import DEADLINE_S, Server
    from test_serve_page import Page, browser  # noqa: F401 (browser: a fixture)
except pytest.skip.Exception as exc:
    _why = str(exc)

    @pytest.fixture
    def browser():
        pytest.skip(_why)


def test_the_page_plays_a_video_result_from_its_start(browser, library, tmp_path):
    """Headless Chromium: a click on a video's face fetches the video with the token and
    plays it from the track's start (``#t=``), under the page's CSP."""
    import httpx

    token = "video-token"
    srv = Server(tmp_path, "--db", str(library["db"]), "--workers", "2",
                 env={"FACEATTR_TOKEN": token})  # fmt: skip
    tab = None
    try:
        auth = {"Authorization": f"Bearer {token}"}
        found = httpx.get(srv.url + "/v1/search", params={"q": EVERYTHING, "limit": 10},
                          headers=auth, timeout=DEADLINE_S).json()["results"]  # fmt: skip
        k, track = max(
            ((k, m) for k, m in enumerate(found) if m.get("video")), key=lambda km: km[1]["start"]
        )  # the track that starts later
        assert track["start"] > 0.3
        tab = Page(browser, srv.url)
        page = tab.page
        page.evaluate("t => sessionStorage.setItem('faceattr-token', t)", token)
        page.reload()  # the page asks the server with the token from the start
        tab.expect("#search").to_be_visible()
        query = page.get_by_label("Query")
        query.fill(EVERYTHING)
        query.press("Enter")
        tab.expect(".result").to_have_count(len(found))
        span = f"{track['start']:.1f}–{track['end']:.1f} s"
        tab.expect(page.locator(".result .name").nth(k)).to_contain_text(span)
        page.locator(".result").nth(k).click()
        tab.expect("#viewer-stage video").to_have_count(1)
        src = page.eval_on_selector("#viewer-stage video", "v => v.src")
        assert src.startswith("blob:") and src.endswith(f"#t={track['start']}")
        tab.expect("#viewer-title").to_contain_text(span)
        # It plays, from the track's start (not from 0).
        page.wait_for_function("() => { const v = document.querySelector('#viewer-stage video');"
                               " return v.played.length > 0 && v.currentTime > 0; }")  # fmt: skip
        first = page.eval_on_selector("#viewer-stage video", "v => v.played.start(0)")
        assert abs(first - track["start"]) <= 0.15, first
        assert tab.errors == [], tab.errors
    finally:
        if tab is not None:
            tab.close()
        srv.stop()


def test_index_command_reads_videos_with_every_and_fps(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    write_clip(folder / "clip.mp4", scene(30, MOVING))
    db = tmp_path / "f.db"
    r = invoke("index", folder, "--db", db, "--fps", "5", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["faces"] == 2
    spans = sorted((m.start, m.end) for m in video_matches(db))
    # Only the frames at 0, 0.2, 0.4, ... s were read (the clip has 10 a second): every span
    # lies on that grid, the first frame of the second face (0.5 s) was not read.
    assert all(abs(t * 5 - round(t * 5)) < 1e-6 for span in spans for t in span), spans
    assert spans[0][0] == 0.0 and spans[1][0] == pytest.approx(0.6)
    for bad in (("--every", "0"), ("--fps", "0")):
        r = invoke("index", folder, "--db", tmp_path / "g.db", *bad)
        assert r.exit_code == 2 and bad[0] in r.output, r.output
