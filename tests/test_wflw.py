"""WFLW: annotation lines, the reader (one row per face, crop boxes), decoding, training, fetch."""

from __future__ import annotations

import functools
import io
import json
import shutil
import tarfile
import threading
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceattr.attributes import WFLW_ATTRIBUTES
from faceattr.config import FULL_IMAGE, DataConfig, ModelConfig, OptimConfig, TrainConfig
from faceattr.data import BOX_COLUMNS, cut_box, load_split, read_dataset
from faceattr.data.fetch.wflw import ANNOTATIONS_URL_ENV, IMAGES_URL_ENV, fetch_wflw
from faceattr.data.images import BACKGROUND_RGB, load_image
from faceattr.data.synthetic import write_synthetic_wflw
from faceattr.data.wflw import (
    ANNOTATION_FILES,
    ANNOTATIONS_DIR,
    IMAGES_DIR,
    LIST_DIR,
    N_FIELDS,
    face_crop_boxes,
    find_wflw,
    format_wflw_line,
    parse_wflw_line,
    read_wflw,
    read_wflw_annotations,
)
from faceattr.errors import DataError, DownloadError


@pytest.fixture(scope="module")
def wflw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic WFLW copy (shared by this module: read-only)."""
    return write_synthetic_wflw(
        tmp_path_factory.mktemp("wflw"), n_train=40, n_test=16, image_size=(180, 100)
    )


def _line(flags=(1, 0, 0, 1, 0, 1), image="0--Parade/0_Parade_marchingband_1_5.jpg") -> str:
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(100, 200, size=(98, 2))
    return format_wflw_line(landmarks, (90, 95, 210, 215), flags, image)


# --------------------------------------------------------------------------- lines and files


def test_line_format_round_trips():
    line = _line()
    fields = line.split()
    assert len(fields) == N_FIELDS == 207
    assert fields[196:200] == ["90", "95", "210", "215"] and fields[200:206] == list("100101")
    face = parse_wflw_line(line + "\n")
    assert face.landmarks.shape == (98, 2) and face.box == (90.0, 95.0, 210.0, 215.0)
    assert face.flags.tolist() == [1, 0, 0, 1, 0, 1]
    assert face.image == "0--Parade/0_Parade_marchingband_1_5.jpg"
    x = float(fields[0])
    assert face.landmarks[0, 0] == pytest.approx(x, abs=1e-4)  # x first, then y


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    good = _line()
    fields = good.split()
    bad_number = " ".join(["abc", *fields[1:]])
    bad_flag = " ".join([*fields[:205], "2", fields[206]])
    path = tmp_path / "list.txt"
    path.write_text("\n".join([good, " ".join(fields[:150]), bad_number, good, bad_flag]) + "\n")
    with pytest.raises(DataError) as info:
        read_wflw_annotations(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 2: expected 207 fields" in msg and "found 150" in msg
    assert "line 3: field 1 (landmark coordinate) is 'abc'" in msg
    assert "line 5: flag Blur is '2'" in msg


def test_face_crop_boxes_are_square_centred_and_widened():
    boxes = np.array([[10, 20, 50, 100], [0, 0, 0, 0]], dtype=np.float64)
    landmarks = np.zeros((2, 98, 2))
    landmarks[1, :, 0] = np.linspace(5, 25, 98)
    landmarks[1, :, 1] = np.linspace(5, 15, 98)
    crops = face_crop_boxes(boxes, 0.25, landmarks)
    np.testing.assert_allclose(crops[0], [-30, 0, 90, 120])  # side 80 * 1.5, centre (30, 60)
    np.testing.assert_allclose(crops[1], [0, -5, 30, 25])  # empty box: the landmarks' extent


# --------------------------------------------------------------------------- reader


def test_reader_has_one_row_per_face_with_crop_boxes(wflw_root):
    table = read_wflw(wflw_root)
    ann = read_wflw_annotations(wflw_root / ANNOTATIONS_DIR / LIST_DIR / ANNOTATION_FILES["train"])
    assert table.dataset == "wflw" and table.attributes == list(WFLW_ATTRIBUTES)
    counts = table.split_counts()
    assert counts["train"] == len(ann.images) and counts["valid"] == 0 and counts["test"] > 0
    per_photo = table.frame.groupby("image").size()
    assert per_photo.max() > 1  # several faces share a photo
    # faces of one photo share an identity, different photos do not
    ids = table.frame.groupby("image")["identity"].nunique()
    assert (ids == 1).all() and table.frame["identity"].nunique() == len(per_photo)
    boxes = table.frame[list(BOX_COLUMNS)].to_numpy()
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], rtol=1e-5)
    np.testing.assert_allclose(boxes[: len(ann.images)], face_crop_boxes(ann.boxes), rtol=1e-5)
    np.testing.assert_array_equal(table.labels[: len(ann.images)], ann.flags)
    assert DataConfig(dataset="wflw").crop == FULL_IMAGE


def test_validation_carve_keeps_each_photo_on_one_side(wflw_root):
    cfg = DataConfig(dataset="wflw", root=str(wflw_root), valid_fraction=0.3)
    train, valid = load_split(cfg, "train"), load_split(cfg, "valid")
    assert len(valid) > 0
    assert not set(train.frame["image"]) & set(valid.frame["image"])


def test_missing_photos_are_dropped_and_layouts_found(wflw_root, tmp_path):
    copy = tmp_path / "nested"
    shutil.copytree(wflw_root / ANNOTATIONS_DIR, copy / ANNOTATIONS_DIR / ANNOTATIONS_DIR)
    shutil.copytree(wflw_root / IMAGES_DIR, copy / IMAGES_DIR / IMAGES_DIR)
    files = find_wflw(copy)  # archives extracted into folders of their own name
    assert files.image_dir == copy / IMAGES_DIR / IMAGES_DIR
    victim = sorted(files.image_dir.rglob("*.jpg"))[0]
    victim.unlink()
    table = read_wflw(copy)
    assert len(table) < len(read_wflw(wflw_root))
    assert any("missing" in n and victim.name in n for n in table.notes)
    with pytest.raises(DataError, match="missing WFLW_annotations/.*and WFLW_images/"):
        find_wflw(tmp_path / "nested" / IMAGES_DIR / IMAGES_DIR / "0--Parade")


# --------------------------------------------------------------------------- decoding


def test_cut_box_pads_outside_the_image_with_grey():
    from PIL import Image

    image = Image.new("RGB", (10, 10), (255, 0, 0))
    out = cut_box(image, (-5, 5, 5, 15))
    px = np.asarray(out)
    assert out.size == (10, 10)
    assert tuple(px[0, 9]) == (255, 0, 0) and tuple(px[0, 0]) == BACKGROUND_RGB
    assert tuple(px[9, 9]) == BACKGROUND_RGB


def test_decoding_cuts_each_face_and_flags_are_visible(wflw_root):
    from faceattr.data.dataset import ImageDataset
    from faceattr.data.transforms import preprocess

    table = read_wflw(wflw_root)
    ann = read_wflw_annotations(wflw_root / ANNOTATIONS_DIR / LIST_DIR / ANNOTATION_FILES["train"])
    ds = ImageDataset(table, 32, FULL_IMAGE)
    i = int(np.flatnonzero(table.frame["image"].duplicated(keep=False))[0])
    j = int(np.flatnonzero(table.frame["image"] == table.frame["image"][i])[1])
    image = load_image(table.paths[i])
    box = table.frame.loc[i, list(BOX_COLUMNS)].to_numpy(dtype=float)
    expected = preprocess(cut_box(image, box), 32, FULL_IMAGE)
    np.testing.assert_array_equal(ds[i][0].numpy(), expected)
    assert not np.array_equal(ds[i][0].numpy(), ds[j][0].numpy())  # two faces, one photo

    # The Pose flag is a red marker in the face's first cell: look at its centre.
    pose = WFLW_ATTRIBUTES.index("Pose")
    seen = {0: 0, 1: 0}
    pixels = {p: np.asarray(load_image(p), dtype=float) for p in set(table.paths)}
    for k in range(len(ann.images)):
        x0, y0, x1, y1 = ann.boxes[k]
        cx = x0 + 0.1 * (x1 - x0) + 0.8 * (x1 - x0) / 6
        cy = y0 + 0.1 * (y1 - y0) + 0.8 * (y1 - y0) / 4
        r, g, _ = pixels[table.paths[k]][int(cy), int(cx)]
        flag = int(ann.flags[k, pose])
        assert (r > 2 * g) == bool(flag), (k, r, g, flag)
        seen[flag] += 1
    assert seen[0] and seen[1]


def test_train_and_eval_on_synthetic_wflw(wflw_root, tmp_path):
    from faceattr.engine.evaluate import evaluate_model
    from faceattr.engine.fit import fit
    from faceattr.models import read_model_info

    cfg = TrainConfig(
        data=DataConfig(dataset="wflw", root=str(wflw_root), img_size=32, workers=0),
        model=ModelConfig(arch="celebnet", num_features=16, dropout=0.0),
        optim=OptimConfig(lr=3e-3),
        epochs=2,
        batch_size=32,
        out=str(tmp_path / "run"),
    )
    result = fit(replace(cfg, augment=replace(cfg.augment, hflip=False)))
    assert result.epochs_done == 2
    info = read_model_info(tmp_path / "run" / "model.safetensors")
    assert info.attributes == list(WFLW_ATTRIBUTES) and info.dataset == "wflw"
    assert list(info.crop) == list(FULL_IMAGE) and len(info.thresholds) == 6
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["crop"] == list(FULL_IMAGE) and saved["data"]["face_margin"] == 0.25

    result = evaluate_model(tmp_path / "run", DataConfig(dataset="wflw", root=str(wflw_root),
                                                         workers=0))  # fmt: skip
    m = result.to_json()
    assert m["n_images"] == read_wflw(wflw_root).split_counts()["test"]
    assert list(m["per_attribute"]) == list(WFLW_ATTRIBUTES)
    for key in ("mean_accuracy", "strict_accuracy", "majority_accuracy", "macro_f1"):
        assert isinstance(m[key], float)


# --------------------------------------------------------------------------- fetch


def _archives(source: Path, dest: Path) -> Path:
    """The two release archives of ``source`` (a WFLW copy) written into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for folder, name in ((ANNOTATIONS_DIR, "WFLW_annotations.tar.gz"),
                         (IMAGES_DIR, "WFLW_images.tar.gz")):  # fmt: skip
        with tarfile.open(dest / name, "w:gz") as tf:
            tf.add(source / folder, arcname=folder)
    return dest


def _same_table(a: Path, b: Path) -> None:
    ta, tb = read_wflw(a), read_wflw(b)
    assert ta.frame.drop(columns="identity").equals(tb.frame.drop(columns="identity"))
    np.testing.assert_array_equal(ta.labels, tb.labels)


def test_fetch_from_folder_of_archives_then_rerun_is_noop(wflw_root, tmp_path):
    downloads = _archives(wflw_root, tmp_path / "downloads")
    root = tmp_path / "data"
    result = fetch_wflw(root, from_path=downloads)
    assert set(result.sources) == {"annotations", "images"}
    assert result.faces["train"] > 0 and result.missing_photos == 0
    assert (root / IMAGES_DIR).is_dir() and (root / ANNOTATIONS_DIR / LIST_DIR).is_dir()
    assert not [p for p in root.iterdir() if p.name.startswith(".WFLW")]  # no temp folders
    assert (downloads / "WFLW_images.tar.gz").exists()  # the user's files are left alone
    _same_table(wflw_root, root)
    again = fetch_wflw(root, from_path=downloads)
    assert again.already_complete and again.sources == {}


def test_fetch_from_one_archive_and_from_extracted_folders(wflw_root, tmp_path):
    downloads = _archives(wflw_root, tmp_path / "downloads")
    root = tmp_path / "one"
    fetch_wflw(root, from_path=downloads / "WFLW_images.tar.gz")  # finds its sibling
    _same_table(wflw_root, root)
    root2 = tmp_path / "extracted"
    result = fetch_wflw(root2, from_path=wflw_root)
    assert result.sources["images"] == str(wflw_root / IMAGES_DIR)
    _same_table(wflw_root, root2)


def test_fetch_from_folder_missing_a_part(wflw_root, tmp_path):
    downloads = _archives(wflw_root, tmp_path / "downloads")
    (downloads / "WFLW_images.tar.gz").unlink()
    with pytest.raises(DataError, match="No WFLW_images.tar.gz") as info:
        fetch_wflw(tmp_path / "data", from_path=downloads)
    assert "drive.google.com" in str(info.value)  # says where to get it by hand


def test_archives_already_in_root_are_used_and_kept(wflw_root, tmp_path):
    root = _archives(wflw_root, tmp_path / "data")
    result = fetch_wflw(root)  # no --from, no network: the archives in root are enough
    assert result.sources["images"] == str(root / "WFLW_images.tar.gz")
    assert (root / "WFLW_images.tar.gz").exists()
    _same_table(wflw_root, root)


def test_damaged_archive_is_refused_cleanly(wflw_root, tmp_path):
    downloads = _archives(wflw_root, tmp_path / "downloads")
    data = (downloads / "WFLW_images.tar.gz").read_bytes()
    (downloads / "WFLW_images.tar.gz").write_bytes(data[: len(data) // 2])  # cut short
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="damaged"):
        fetch_wflw(root, from_path=downloads)
    assert sorted(p.name for p in root.iterdir()) == [ANNOTATIONS_DIR]  # no half photo folder


def test_fetch_refuses_path_traversal(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with tarfile.open(downloads / "WFLW_annotations.tar.gz", "w:gz") as tf:
        data = b"owned"
        info = tarfile.TarInfo("WFLW_annotations/../../evil.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    shutil.copy(downloads / "WFLW_annotations.tar.gz", downloads / "WFLW_images.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="leaves the target folder"):
        fetch_wflw(root, from_path=downloads)
    assert not (tmp_path / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))
    assert [p.name for p in root.iterdir()] == []


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/drive"):  # what Google Drive answers a script
            body = b"<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture
def http_dir(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_from_mirror_over_http(wflw_root, tmp_path, http_dir):
    folder, url = http_dir
    _archives(wflw_root, folder)
    root = tmp_path / "data"
    result = fetch_wflw(root, mirror=url + "/")
    assert result.sources["images"] == f"{url}/WFLW_images.tar.gz"
    assert not list(root.glob("*.tar.gz")) and not list(root.glob("*.part"))  # cleaned up
    _same_table(wflw_root, root)


def test_drive_page_instead_of_images_says_how_to_download_by_hand(
    wflw_root, tmp_path, http_dir, monkeypatch
):
    folder, url = http_dir
    _archives(wflw_root, folder)
    monkeypatch.setenv(ANNOTATIONS_URL_ENV, f"{url}/WFLW_annotations.tar.gz")
    monkeypatch.setenv(IMAGES_URL_ENV, f"{url}/drive?id=x")
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        fetch_wflw(root)
    msg = str(info.value)
    assert "Virus scan warning" in msg and "WFLW_images.tar.gz" in msg and "--from" in msg
    assert (root / ANNOTATIONS_DIR / LIST_DIR).is_dir()  # the annotations are kept
    assert not (root / IMAGES_DIR).exists() and not list(root.glob("*.part"))
    # finishing by hand: only the images archive is needed now
    (tmp_path / "by-hand").mkdir()
    shutil.copy(folder / "WFLW_images.tar.gz", tmp_path / "by-hand")
    runner = CliRunner()
    from faceattr.cli.app import app

    r = runner.invoke(
        app,
        ["data", "fetch", "wflw", "--root", str(root), "--from", str(tmp_path / "by-hand"),
         "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["faces"]["test"] > 0 and out["missing_photos"] == 0
    assert set(out["sources"]) == {"images"}
    _same_table(wflw_root, root)
    assert read_dataset(DataConfig(dataset="wflw", root=str(root))).dataset == "wflw"


def test_prepare_refuses_per_face_datasets(wflw_root, tmp_path, monkeypatch):
    from faceattr.data.cache import prepare_cache
    from faceattr.errors import UsageError

    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UsageError, match="does not support wflw"):
        prepare_cache(DataConfig(dataset="wflw", root=str(wflw_root), img_size=32))
