"""`faceattr index` / `faceattr search`: the query language, incremental indexing, agreement
with `predict`, kill -9 and concurrent indexers, the HTML contact sheet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps
from typer.testing import CliRunner

import faceattr
from conftest import chromium_or_skip, new_database
from faceattr.cli.app import app
from faceattr.collection.query import And, Attr, Not, Or, QueryError, evaluate, parse

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ["Male", "Smiling", "Eyeglasses", "Young", "Blond_Hair"]
FACEATTR = str(Path(sys.executable).with_name("faceattr"))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


# --- the query language --------------------------------------------------------------------


def test_precedence_and_forms():
    q = parse("eyeglasses and not Male or Smiling > 0.9", NAMES)
    assert q == Or((And((Attr(2, "Eyeglasses"), Not(Attr(0, "Male")))),
                    Attr(1, "Smiling", ">", 0.9)))  # fmt: skip
    assert parse("(Blond_Hair | Young) & !Male", NAMES) == And(
        (Or((Attr(4, "Blond_Hair"), Attr(3, "Young"))), Not(Attr(0, "Male")))
    )
    import numpy as np

    probs = np.array([[0.9, 0.3, 0.2], [0.1, 0.3, 0.5], [0.5] * 3, [0.5] * 3, [0.5] * 3])
    node = parse("Male and Smiling < 0.2 or not Male", NAMES)
    matches, score = evaluate(node, lambda i: probs[i], [0.3, 0.5, 0.5, 0.5, 0.5])
    assert matches.tolist() == [True, False, True]  # face 1: Male, Smiling 0.3; 2: not Male
    assert np.allclose(score, [0.9 * 0.9, max(0.3 * 0.7, 0.7), max(0.2 * 0.5, 0.8)])


@pytest.mark.parametrize(
    ("query", "column", "says"),
    [
        ("Smiling and (Male or", 21, "ends too soon"),
        ("Smiling and and Male", 13, "expected an attribute name"),
        ("Smiling Male", 9, "expected and, or"),
        ("Smiling > 2", 11, "not a probability"),
        ("Smiling > Male", 11, "expected a probability"),
        ("Smiling @ Male", 9, "unexpected '@'"),
        ("", 1, "empty"),
    ],
)
def test_syntax_errors_point_at_the_column(query, column, says):
    with pytest.raises(QueryError) as caught:
        parse(query, NAMES)
    assert f"column {column}:" in caught.value.message and says in caught.value.message
    assert caught.value.exit_code == 2


def test_unknown_attribute_suggests_names():
    with pytest.raises(QueryError, match="Did you mean: Smiling"):
        parse("Smilling and Male", NAMES)


# --- a small collection ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight distinct photos of a face (variants of the bundled one), a nested folder, a copy,
    a broken .jpg, an image without an extension and a text file."""
    root = tmp_path_factory.mktemp("photos")
    base = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    variants = {
        "a.jpg": base,
        "b.jpg": ImageOps.mirror(base),
        "c.jpg": base.resize((base.width * 3 // 4, base.height * 3 // 4)),
        "d.png": ImageEnhance.Brightness(base).enhance(0.6),
        "nested/e.jpg": ImageOps.grayscale(base).convert("RGB"),
        "nested/deeper/f.jpg": base.rotate(8),
        "g.jpg": ImageEnhance.Contrast(base).enhance(1.6),
        "no_extension": base.crop((60, 0, base.width, base.height)),
    }
    for name, img in variants.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name, format="PNG" if name.endswith(".png") else "JPEG", quality=90)
    shutil.copy(root / "a.jpg", root / "nested" / "copy_of_a.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    shutil.copy(root / "broken.jpg", root / "nested" / "broken_copy.jpg")  # a copy of a failure
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def library(photos, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("db") / "library.db"
    r = invoke("index", photos, "--db", db, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["added"] == 9 and summary["failed"] == 2 and summary["duplicates"] == 1
    assert summary["images_in_index"] == 11 and summary["faces_in_index"] >= 9
    assert summary["errors"][0]["image"].endswith("broken.jpg")
    return db


@pytest.fixture(scope="module")
def predicted(photos) -> dict[tuple[str, int], dict]:
    """What `faceattr predict --json` says of the same images: (path, face) -> face."""
    files = sorted(str(p) for p in photos.rglob("*") if p.is_file() and p.suffix != ".txt")
    r = invoke("predict", *files, "--json")
    out = {}
    for entry in json.loads(r.stdout):
        for k, face in enumerate(entry["faces"]):
            out[(str(Path(entry["image"]).absolute()), k)] = face
    return out


def _expected(node, face) -> bool:
    """The query on predict's output: a bare name is 'in the present attributes'."""
    if isinstance(node, Attr):
        p = face["probabilities"][node.name]
        if node.op is None:
            return node.name in face["attributes"]
        return {">": p > node.value, "<": p < node.value}[node.op]
    if isinstance(node, Not):
        return not _expected(node.arg, face)
    results = [_expected(a, face) for a in node.args]
    return all(results) if isinstance(node, And) else any(results)


@pytest.mark.parametrize(
    "query",
    ["Smiling", "Male and Young", "not Eyeglasses and (Blond_Hair or Bangs)", "Wearing_Hat",
     "Smiling and not Male", "Bangs or Eyeglasses or Heavy_Makeup", "Male > 0.5 and Young < 0.99"],
)  # fmt: skip
def test_search_agrees_with_predict(library, predicted, query):
    from faceattr.attributes import CELEBA_ATTRIBUTES

    r = invoke("search", query, "--db", library, "--limit", "0", "--json")
    assert r.exit_code == 0, r.output
    found = {(x["image"], x["face"]) for x in json.loads(r.stdout)["results"]}
    node = parse(query, list(CELEBA_ATTRIBUTES))
    want = {key for key, face in predicted.items() if _expected(node, face)}
    assert found == want
    scores = [x["match"] for x in json.loads(r.stdout)["results"]]
    assert scores == sorted(scores, reverse=True)


def test_rerun_is_incremental_and_prune(photos, tmp_path):
    work = tmp_path / "photos"
    shutil.copytree(photos, work)
    db = tmp_path / "i.db"
    first = faceattr.index([work], db=db)
    assert first["added"] == 9
    again = faceattr.index([work], db=db)  # the two broken files are retried, still failing
    assert again["unchanged"] == 9 and again["added"] == again["changed"] == again["faces"] == 0
    assert again["failed"] == 2
    os.utime(work / "b.jpg")  # touched, same contents
    shutil.copy(work / "g.jpg", work / "c.jpg")  # changed contents (a copy of g)
    (work / "d.png").unlink()
    third = faceattr.index([work], db=db, prune=True)
    assert (third["changed"], third["pruned"], third["duplicates"]) == (1, 1, 1)
    assert third["unchanged"] == 7 and third["images_in_index"] == 10
    hits = faceattr.search("Smiling", db=db, limit=None)["results"]
    assert str(work / "d.png") not in {h["image"] for h in hits}


def test_one_entry_per_file_however_its_path_is_spelled(library, photos, tmp_path, monkeypatch):
    db = tmp_path / "spellings.db"
    shutil.copy(library, db)
    images, faces = _faces(db)
    link = tmp_path / "link-to-photos"
    link.symlink_to(photos, target_is_directory=True)
    monkeypatch.chdir(photos / "nested")
    for spelling in ("..", f"{photos}/nested/deeper/../..", str(link), photos):
        again = faceattr.index(spelling, db=db)
        assert (again["added"], again["unchanged"], again["images_in_index"]) == (0, 9, images)
    r = invoke("index", "../", "--db", db, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images_in_index"] == images
    assert _faces(db) == (images, faces)
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "inner").symlink_to(photos, target_is_directory=True)
    linked = faceattr.index(outer, db=db)  # a link to a folder inside a walk: not followed
    assert linked["images_in_index"] == images and linked["skipped"] == [
        {"path": str(outer / "inner"), "reason": linked["skipped"][0]["reason"]}]  # fmt: skip
    assert "not followed" in linked["skipped"][0]["reason"]
    paths = [p for (p,) in sqlite3.connect(db).execute("SELECT path FROM images")]
    assert all(p == os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
               for p in paths)  # fmt: skip


def test_an_index_with_doubled_paths_is_normalised(library, photos, tmp_path):
    """An index written before paths were normalised: its entries under another spelling
    (``.../nested/..``) are renamed, and a file stored twice keeps one entry."""
    db = tmp_path / "old.db"
    shutil.copy(library, db)
    images, faces = _faces(db)
    conn = sqlite3.connect(db)
    old = f"{photos}/nested/.."
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'path_form'")
        a = conn.execute("SELECT id FROM images WHERE path = ?", (str(photos / "a.jpg"),))
        [(a_id,)] = a.fetchall()
        columns = [c for (c,) in conn.execute("SELECT name FROM pragma_table_info('images')")
                   if c not in ("id", "path")]  # fmt: skip
        listed = ", ".join(columns)
        conn.execute(f"INSERT INTO images(path, {listed}) SELECT ?, {listed} FROM images "
                     "WHERE id = ?", (f"{old}/nested/../a.jpg", a_id))  # fmt: skip
        new_id = conn.execute("SELECT MAX(id) FROM images").fetchone()[0]
        face_cols = [c for (c,) in conn.execute("SELECT name FROM pragma_table_info('faces')")
                     if c not in ("id", "image_id")]  # fmt: skip
        listed = ", ".join(face_cols)
        conn.execute(f"INSERT INTO faces(image_id, {listed}) SELECT ?, {listed} FROM faces "
                     "WHERE image_id = ?", (new_id, a_id))  # fmt: skip
        conn.execute("UPDATE images SET path = ? || substr(path, ?) WHERE id != ?",
                     (old, len(str(photos)) + 1, new_id))  # fmt: skip
    conn.close()
    assert _faces(db)[0] == images + 1
    again = faceattr.index([photos], db=db)
    assert (again["added"], again["unchanged"], again["images_in_index"]) == (0, 9, images)
    assert _faces(db) == (images, faces)
    found = faceattr.search("Male > 0", db=db, limit=None)["results"]
    folders = {photos, photos / "nested", photos / "nested" / "deeper"}
    assert {Path(f["image"]).parent for f in found} <= folders


def test_index_no_detect_takes_whole_images_as_predict_does(photos, tmp_path):
    """--no-detect: each file is one aligned face (a folder of crops), the same option and
    the same probabilities as `predict --no-detect`."""
    crops = tmp_path / "crops"
    crops.mkdir()
    base = Image.open(photos / "a.jpg")
    for i, box in enumerate([(0, 0, 178, 218), (40, 20, 140, 160), (5, 5, 60, 80)]):
        base.crop(box).resize((178, 218)).save(crops / f"{i}.jpg")
    db = tmp_path / "crops.db"
    r = invoke("index", crops, "--no-detect", "--db", db, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["faces_in_index"] == 3  # one per file, found or not
    found = faceattr.search("Male > 0", db=db, limit=None)["results"]
    assert sorted(f["box"] for f in found) == [[0.0, 0.0, 178.0, 218.0]] * 3
    r = invoke("predict", *sorted(crops.iterdir()), "--no-detect", "--json")
    for entry in json.loads(r.stdout):
        [face] = [f for f in found if f["image"] == entry["image"]]
        assert face["probabilities"]["Male"] == pytest.approx(
            entry["faces"][0]["probabilities"]["Male"], abs=1e-4)  # fmt: skip
    with_detect = faceattr.index(crops, db=tmp_path / "detected.db")
    assert with_detect["faces_in_index"] != 3  # the detector finds no face in some crops
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    helps = {name: next(p.help for p in commands[name].params if p.name == "no_detect")
             for name in ("index", "predict")}  # fmt: skip
    assert helps["index"] == helps["predict"]


def test_another_model_is_refused_unless_reindex(photos, trained_run, tmp_path):
    db = tmp_path / "m.db"
    faceattr.index([photos / "a.jpg"], db=db)
    r = invoke("index", photos / "a.jpg", "--db", db, "--model", trained_run)
    assert r.exit_code == 1 and "another model" in said(r) and "--reindex" in said(r)
    r = invoke("index", photos / "a.jpg", "--db", db, "--model", trained_run, "--reindex")
    assert r.exit_code == 0, r.output
    model = json.loads(sqlite3.connect(db).execute(
        "SELECT value FROM meta WHERE key = 'model'").fetchone()[0])  # fmt: skip
    assert model["arch"] == "celebnet"


def test_like_finds_the_copy_first(library, photos):
    found = faceattr.search(like=photos / "a.jpg", db=library, limit=3)["results"]
    top = [Path(f["image"]).name for f in found[:2]]
    assert "copy_of_a.jpg" in top and found[0]["match"] > 0.999  # (a crop of a is as close)
    assert len(found) == 3 and found[2]["match"] <= found[1]["match"] <= found[0]["match"]
    assert not any(f["image"].endswith("/a.jpg") for f in found)  # the query image itself


def test_cli_errors(library, tmp_path):
    r = invoke("search", "Eyeglasses and", "--db", library)
    assert r.exit_code == 2 and "column 15" in said(r)
    r = invoke("search", "Eyeglasses", "--db", tmp_path / "missing.db")
    assert r.exit_code == 1 and "No index at" in said(r)
    r = invoke("search", "--db", library)
    assert r.exit_code == 2 and "--like" in said(r)
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    r = invoke("search", "Male", "--db", tmp_path / "junk.db")
    assert r.exit_code == 1 and "not a readable SQLite database" in said(r)
    assert "Traceback" not in r.output


def test_html_contact_sheet(library, tmp_path):
    page = tmp_path / "sheet.html"
    csv_file = tmp_path / "r.csv"
    r = invoke("search", "Smiling", "--db", library, "--html", page, "--csv", csv_file)
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert text.count('src="data:image/jpeg;base64,') >= 9 and "http" not in text
    assert csv_file.read_text().splitlines()[0] == "image,face,x,y,w,h,match,Smiling"
    browser = chromium_or_skip()
    png = tmp_path / "sheet.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=1000,700", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=90)
    import numpy as np

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels[:40].mean() < 100  # the dark header
    assert pixels[100:400].std() > 20  # face thumbnails, not a blank page


def _many_photos(photos: Path, folder: Path, n: int) -> None:
    base = Image.open(photos / "a.jpg")
    folder.mkdir()
    for i in range(n):  # distinct contents: each is predicted
        ImageEnhance.Brightness(base).enhance(0.7 + 0.6 * i / n).save(folder / f"{i:03d}.jpg")


def _faces(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    images = conn.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM images").fetchone()
    assert images[0] == images[1]
    return images[0], conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]


@pytest.mark.slow
def test_kill_9_mid_index_then_rerun(photos, tmp_path):
    folder = tmp_path / "many"
    _many_photos(photos, folder, 80)
    db = tmp_path / "k.db"
    proc = subprocess.Popen([FACEATTR, "index", str(folder), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.Error:
            continue
        if done > 0:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial, _ = _faces(db)
    assert 0 < partial < 80
    rerun = faceattr.index([folder], db=db)
    assert rerun["unchanged"] == partial and rerun["added"] == 80 - partial
    assert _faces(db) == (80, 80)  # every image once, one face each


@pytest.mark.slow
def test_two_indexers_at_once(photos, tmp_path):
    folder = tmp_path / "shared"
    _many_photos(photos, folder, 24)
    db = tmp_path / "c.db"
    faceattr.index([photos / "a.jpg"], db=db)  # the index exists: both processes append
    procs = [subprocess.Popen([FACEATTR, "index", str(folder), "--db", str(db), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert _faces(db) == (25, 25)


def test_first_n_results_equal_the_full_ranking(tmp_path):
    """Cutting the ranking at N (partition, then sort) gives exactly its first N rows, ties
    broken by face id, and a write makes the next search see it (a new column store)."""
    import numpy as np

    from faceattr.attributes import CELEBA_ATTRIBUTES
    from faceattr.collection.search import search_index
    from faceattr.collection.store import open_store

    names = list(CELEBA_ATTRIBUTES)
    store = open_store(tmp_path / "s.db", create=True)
    store.initialise({"name": "t", "sha256": "0", "arch": "x", "attributes": names,
                      "thresholds": [0.3 + 0.01 * i for i in range(40)]})  # fmt: skip
    rng = np.random.default_rng(0)
    probs = np.round(rng.beta(0.5, 0.5, size=(3000, 40)), 3)  # rounded: many ties
    with store.transaction():
        for k in range(1000):
            faces = [{"box": [0, 0, 1, 1], "score": 1.0, "probabilities": probs[3 * k + j]}
                     for j in range(3)]  # fmt: skip
            store.put_image(f"/p/{k}.jpg", size=1, mtime_ns=1, sha256=None, status="ok",
                            error=None, width=1, height=1, faces=faces)  # fmt: skip
    store.close()
    queries = ["Smiling", "not Male", "Smiling and not Male and Young > 0.2",
               "(Blond_Hair or Gray_Hair) and Smiling > 0.9", "Bangs and Male < 0.5"]  # fmt: skip
    for query in queries:
        everything = search_index(query, tmp_path / "s.db", limit=None).results
        assert len(everything) > 100
        scores = [-r.match for r in everything]
        assert scores == sorted(scores)
        for limit in (1, 10, 100):
            first = search_index(query, tmp_path / "s.db", limit=limit).results
            assert first == everything[:limit], (query, limit)
    before = search_index("Smiling", tmp_path / "s.db", limit=None).results
    store = open_store(tmp_path / "s.db", create=False)
    with store.transaction():
        store.delete(["/p/0.jpg"])
    store.close()
    after = search_index("Smiling", tmp_path / "s.db", limit=None).results
    assert [r for r in before if r.image != "/p/0.jpg"] == after != before


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url(postgres_server):
    return new_database(postgres_server, "photos")


def test_postgres_index_and_search_equal_sqlite(postgres_url, library, photos, tmp_path,
                                                monkeypatch):  # fmt: skip
    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(tmp_path / "cache"))
    r = invoke("index", photos, "--db", postgres_url, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == 9
    again = faceattr.index([photos], db=postgres_url)
    assert again["unchanged"] == 9 and again["failed"] == 2 and again["faces"] == 0
    for query in ("Smiling and not Eyeglasses", "Male > 0.5 or Bangs"):
        on_pg = faceattr.search(query, db=postgres_url, limit=None)["results"]
        on_sqlite = faceattr.search(query, db=library, limit=None)["results"]
        assert on_pg == on_sqlite
    r = invoke("search", "Smiling", "--db", postgres_url.replace("/photos", "/missing"))
    assert r.exit_code == 1 and "Cannot connect" in said(r)


@pytest.mark.slow
def test_two_indexers_on_postgres(postgres_server, photos, tmp_path):
    import psycopg

    url = new_database(postgres_server, "shared")
    folder = tmp_path / "shared"
    _many_photos(photos, folder, 24)
    env = {**os.environ, "FACEATTR_CACHE_DIR": str(tmp_path / "cache")}
    faceattr.index([photos / "a.jpg"], db=url)
    procs = [subprocess.Popen([FACEATTR, "index", str(folder), "--db", url, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    with psycopg.connect(url) as conn:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM images").fetchone()
        faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    assert n == distinct == 25 and faces == 25
