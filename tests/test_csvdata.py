"""Custom CSV datasets: parsing, clear errors, and custom attributes through train/eval/predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.config import FULL_IMAGE, DataConfig
from faceattr.data import load_split, read_dataset
from faceattr.data.csvdata import read_csv_dataset
from faceattr.errors import DataError, UsageError


def _images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (10 * i % 255, 80, 120)).save(path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _images(tmp_path, ["a.jpg", "b.jpg", "sub/c.png", "d.jpg"])
    return tmp_path


def test_reads_splits_identities_and_blank_labels(folder):
    labels = _write(
        folder / "labels.csv",
        "image,split,identity,Smiling,Has Scar\n"
        "a.jpg,train,ann,1,\n"
        "b.jpg,val,bob,0,1\n"
        "\n"  # blank lines are skipped
        "sub/c.png,test,ann,,0\n"
        "d.jpg,train,,1,NA\n",
    )
    table = read_csv_dataset(folder, labels)
    assert table.dataset == "csv" and table.attributes == ["Smiling", "Has Scar"]
    assert table.frame["image"].tolist() == ["a.jpg", "b.jpg", "sub/c.png", "d.jpg"]
    assert table.frame["split"].tolist() == ["train", "valid", "test", "train"]
    ids = table.frame["identity"]
    assert ids[0] == ids[2] and ids[0] != ids[1] and ids.isna().tolist() == [0, 0, 0, 1]
    expected = np.array([[1, np.nan], [0, 1], [np.nan, 0], [1, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(table.labels, expected)
    assert any("3 of 8 labels are blank" in n for n in table.notes)
    assert table.paths[2] == folder / "sub" / "c.png"


def test_minus_one_encoding_semicolons_and_default_labels_file(folder):
    _write(folder / "labels.csv", "image;Happy;Hat\na.jpg;1;-1\nb.jpg;-1;1\n")
    table = read_dataset(DataConfig(dataset="csv", root=str(folder)))  # ROOT/labels.csv
    np.testing.assert_array_equal(table.labels, [[1, 0], [0, 1]])
    assert table.split_counts() == {"train": 2, "valid": 0, "test": 0}


def test_no_split_column_means_train_and_validation_is_carved(folder):
    rows = "".join(f"img{i}.jpg,{i % 2}\n" for i in range(20))
    _images(folder, [f"img{i}.jpg" for i in range(20)])
    labels = _write(folder / "l.csv", "image,Odd\n" + rows)
    cfg = DataConfig(dataset="csv", root=str(folder), labels=str(labels), valid_fraction=0.25)
    assert cfg.crop == FULL_IMAGE  # custom images have no known framing
    train, valid = load_split(cfg, "train"), load_split(cfg, "valid")
    assert len(train) == 15 and len(valid) == 5
    assert not set(train.frame["image"]) & set(valid.frame["image"])
    assert any("carved" in n for n in valid.notes)


def test_missing_images_are_dropped_with_a_note(folder):
    labels = _write(folder / "l.csv", "image,X\na.jpg,1\nnope.jpg,0\nb.jpg,0\n")
    table = read_csv_dataset(folder, labels)
    assert table.frame["image"].tolist() == ["a.jpg", "b.jpg"]
    assert any("nope.jpg" in n for n in table.notes)
    _write(folder / "none.csv", "image,X\nx.jpg,1\n")
    with pytest.raises(DataError, match="None of the 1 images"):
        read_csv_dataset(folder, folder / "none.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "image,Smiling\na.jpg,1\nb.jpg,yes please\n",
            r"l\.csv line 3, column 'Smiling': 'yes please'",
        ),
        ("file_name,Smiling\na.jpg,1\n", "no image column"),
        ("image,split\na.jpg,train\n", "no attribute columns"),
        ("image,A,B\na.jpg,0,1\nb.jpg,-1,1\n", "mixes 0 and -1"),
        ("image,split,A\na.jpg,training-set,1\n", r"line 2, column 'split': 'training-set'"),
        ("image,A\na.jpg,1\nb.jpg,0\na.jpg,1\n", r"listed twice .*lines 2 and 4"),
        ("image,A\na.jpg,1,0\n", r"line 2: 3 cells, but the header has 2"),
        ("image,A,a\na.jpg,1,0\n", "column names repeat"),
        ("image,A\n", "header but no rows"),
        ("", "is empty"),
        ("image,A\n,1\n", "Empty image path"),
    ],
)
def test_bad_files_name_the_problem(folder, text, message):
    labels = _write(folder / "l.csv", text)
    with pytest.raises(DataError, match=message):
        read_csv_dataset(folder, labels)


def test_missing_labels_option_and_file(folder):
    with pytest.raises(UsageError, match="`labels=FILE.csv`"):
        read_csv_dataset(folder, None)
    with pytest.raises(DataError, match="does not exist"):
        read_csv_dataset(folder, folder / "missing.csv")
    with pytest.raises(DataError, match="Image folder"):
        read_csv_dataset(folder / "nowhere", _write(folder / "l.csv", "image,A\na.jpg,1\n"))


def test_custom_attributes_flow_through_train_eval_predict(synthetic_root, tmp_path):
    """A labels CSV over the synthetic CelebA images, with custom names and blank labels."""
    from faceattr.data.celeba import read_celeba

    celeba = read_celeba(synthetic_root)
    keep = np.flatnonzero(celeba.frame["split"].isin(["train", "test"]).to_numpy())[::4]
    source = {"Eyewear": "Eyeglasses", "Hat On": "Wearing_Hat", "Man": "Male"}
    cols = [celeba.attributes.index(a) for a in source.values()]
    rng = np.random.default_rng(0)
    lines = ["image,split," + ",".join(source)]
    for i in keep:
        values = [str(int(v)) for v in celeba.labels[i, cols]]
        if rng.random() < 0.2:
            values[int(rng.integers(3))] = ""  # unknown label
        lines.append(f"{celeba.frame['image'][i]},{celeba.frame['split'][i]}," + ",".join(values))
    labels = _write(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    root = synthetic_root / "img_align_celeba"
    n_test = int((celeba.frame["split"][keep] == "test").sum())

    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--dataset", "csv", "--root", root, "--labels", labels, "--img-size", 32,
            "--epochs", 1, "--workers", 0, "--augment", "none", "--num-features", 32, "--out", run,
            "--json"]  # fmt: skip
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert list(json.loads(r.stdout)["valid"]["per_attribute"]) == list(source)
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["labels"] == str(labels) and config["data"]["crop"] == list(FULL_IMAGE)

    args = ["eval", run, "--dataset", "csv", "--root", root, "--labels", labels, "--json",
            "--workers", 0]  # fmt: skip
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n_images"] == n_test and list(m["per_attribute"]) == list(source)
    # Blank labels are masked: each attribute's support counts only its known labels.
    test_rows = [ln.split(",") for ln in lines[1:] if ln.split(",")[1] == "test"]
    known = [sum(1 for row in test_rows if row[2 + j] != "") for j in range(len(source))]
    assert [m["per_attribute"][name]["support"] for name in source] == known
    assert min(known) < n_test

    image = root / celeba.frame["image"][int(keep[0])]
    r = runner.invoke(app, ["predict", str(image), "--model", str(run), "--no-detect", "--json"])
    assert r.exit_code == 0, r.output
    [entry] = json.loads(r.stdout)
    probs = entry["faces"][0]["probabilities"]
    assert list(probs) == list(source) and all(
        0 <= p <= 1 and not math.isnan(p) for p in probs.values()
    )
