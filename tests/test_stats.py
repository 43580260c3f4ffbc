"""`faceattr data stats`: rates, imbalance, phi correlation, JSON, plot, layout independence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.data.celeba import read_celeba
from faceattr.data.stats import dataset_stats, phi_matrix, plot_correlation
from faceattr.data.synthetic import write_synthetic_celeba
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError

runner = CliRunner()


def _table(labels, splits=None) -> AttributeTable:
    labels = np.asarray(labels, dtype=np.float32)
    n = len(labels)
    frame = pd.DataFrame(
        {
            "image": [f"{i}.jpg" for i in range(n)],
            "split": splits or ["train"] * n,
            "identity": pd.array([pd.NA] * n, dtype="Int64"),
        }
    )
    names = [f"A{j}" for j in range(labels.shape[1])]
    return AttributeTable(Path("."), frame, labels, names, dataset="csv")


def test_phi_is_pearson_on_pairwise_known_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((500, 5)) < [0.1, 0.3, 0.5, 0.7, 0.9]).astype(np.float32)
    y[:, 1] = np.where(rng.random(500) < 0.8, y[:, 0], y[:, 1])  # correlated pair
    y[rng.random(y.shape) < 0.15] = np.nan  # unknown labels
    r, n = phi_matrix(y)
    expected = pd.DataFrame(y).corr().to_numpy()  # pandas: pairwise complete observations
    np.testing.assert_allclose(r, expected, atol=1e-9)
    assert n[0, 1] == int((~np.isnan(y[:, 0]) & ~np.isnan(y[:, 1])).sum())


def test_stats_numbers_on_a_small_table():
    labels = [[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, np.nan]]
    stats = dataset_stats(_table(labels, ["train", "train", "valid", "test"]))
    assert stats.n_images == 4 and stats.splits == {"train": 2, "valid": 1, "test": 1}
    assert stats.positive_rate == {"A0": 0.5, "A1": 0.5, "A2": 1.0}
    assert stats.imbalance["A0"] == 1.0 and stats.imbalance["A2"] is None
    assert stats.counts["A2"] == {"positive": 3, "negative": 0, "unknown": 1}
    assert stats.correlation["A0"]["A1"] == pytest.approx(0.0)
    assert stats.correlation["A0"]["A2"] is None  # A2 never varies: undefined, not 0
    assert stats.split_positive_rate["train"]["A1"] == 0.5
    assert stats.mean_positives_per_image == pytest.approx(7 / 4)
    assert stats.majority_accuracy == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    json.dumps(stats.to_json(), allow_nan=False)  # strictly valid JSON: no NaN or Infinity

    test_only = dataset_stats(_table(labels, ["train", "train", "valid", "test"]), "test")
    assert test_only.n_images == 1 and test_only.split == "test"
    with pytest.raises(DataError, match="valid 0"):  # no carve asked: no validation rows
        dataset_stats(_table(labels), "val", valid_fraction=None)


def test_stats_show_the_validation_split_train_carves(tmp_path):
    """Data without a validation split: stats count the images train carves out of train
    (the same images, by identity) and say that they are carved."""
    from faceattr.config import DataConfig
    from faceattr.data import load_split

    root = write_synthetic_celeba(tmp_path / "d", n_train=200, n_valid=0, n_test=40, seed=5,
                                  image_size=(40, 48))  # fmt: skip
    cfg = DataConfig(dataset="celeba", root=str(root), valid_fraction=0.2)
    valid, train = load_split(cfg, "valid"), load_split(cfg, "train")
    stats = dataset_stats(read_celeba(root), valid_fraction=0.2)
    assert stats.valid_carved == len(valid) > 0
    assert stats.splits == {"train": len(train), "valid": len(valid), "test": 40}
    assert any("carved" in note for note in stats.notes)
    only = dataset_stats(read_celeba(root), "valid", valid_fraction=0.2)
    assert only.n_images == len(valid)
    r = runner.invoke(app, ["data", "stats", "celeba", "--root", str(root),
                            "--valid-fraction", "0.2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    said = " ".join(r.stdout.split())
    assert f"valid {len(valid):,} (carved out of train" in said
    r = runner.invoke(app, ["data", "stats", "celeba", "--root", str(root), "--json"])
    default = json.loads(r.stdout)
    carved = load_split(DataConfig(dataset="celeba", root=str(root)), "valid")
    assert default["valid_carved"] == len(carved)


def test_top_pairs_find_the_planted_correlations():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.4
    labels = np.stack([a, a ^ (rng.random(400) < 0.1), ~a, rng.random(400) < 0.5], 1)
    pairs = dataset_stats(_table(labels)).top_pairs
    assert (pairs["positive"][0]["a"], pairs["positive"][0]["b"]) == ("A0", "A1")
    assert (pairs["negative"][0]["a"], pairs["negative"][0]["b"]) == ("A0", "A2")
    assert pairs["negative"][0]["r"] == -1.0
    assert all(p["r"] > 0 for p in pairs["positive"]) and all(p["r"] < 0 for p in pairs["negative"])


def test_official_and_kaggle_layouts_give_identical_stats(tmp_path):
    kwargs = dict(n_train=60, n_valid=20, n_test=20, seed=3, image_size=(40, 48))
    official = read_celeba(write_synthetic_celeba(tmp_path / "o", layout="official", **kwargs))
    kaggle = read_celeba(write_synthetic_celeba(tmp_path / "k", layout="kaggle", **kwargs))
    a, b = dataset_stats(official).to_json(), dataset_stats(kaggle).to_json()
    assert a["n_identities"] and b["n_identities"] is None  # Kaggle ships no identities
    a.pop("n_identities"), b.pop("n_identities")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["splits"] == {"train": 60, "valid": 20, "test": 20}


def test_cli_json_and_plot(synthetic_root, tmp_path):
    plot = tmp_path / "plots" / "corr.png"
    r = runner.invoke(
        app, ["data", "stats", "celeba", "--root", str(synthetic_root), "--json",
              "--plot", str(plot), "--top", "3"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    for key in ("n_images", "splits", "positive_rate", "correlation", "top_pairs", "imbalance"):
        assert key in stats, key
    assert stats["n_images"] == 900 and stats["splits"] == {"train": 600, "valid": 150, "test": 150}
    assert len(stats["positive_rate"]) == 40 and len(stats["correlation"]["Male"]) == 40
    assert len(stats["top_pairs"]["positive"]) == 3
    # the synthetic data draws beards for men only, and lipstick for women mostly
    negative = {frozenset((p["a"], p["b"])) for p in stats["top_pairs"]["negative"]}
    assert frozenset(("Male", "Wearing_Lipstick")) in negative
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stats["plot"] == str(plot)

    r = runner.invoke(app, ["data", "stats", "celeba", "--root", str(synthetic_root),
                            "--split", "test"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "celeba (test): 150 images" in r.stdout and "Wearing_Lipstick" in r.stdout
    assert "strongest negative correlations" in r.stdout


def test_cli_stats_of_a_csv_dataset_and_bad_plot_name(tmp_path):
    from PIL import Image

    lines = ["image,Smile,Hat"]
    for i in range(6):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{'' if i == 0 else (i // 3)}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["data", "stats", "csv", "--root", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats["n_images"] == 6 and stats["counts"]["Hat"]["unknown"] == 1
    r = runner.invoke(app, ["data", "stats", "csv", "--root", str(tmp_path), "--plot",
                            str(tmp_path / "corr.xyz")])  # fmt: skip
    assert r.exit_code == 2 and "png" in r.stderr


def test_plot_of_few_attributes_writes_a_file(tmp_path):
    stats = dataset_stats(_table([[1, 0, 1], [0, 1, 1], [1, 1, 0]]))
    path = plot_correlation(stats, tmp_path / "small.png")
    assert path.stat().st_size > 1000 and not list(tmp_path.glob(".small*"))


@pytest.mark.realdata
def test_real_celeba_sample_has_the_known_correlations(real_data_root):
    stats = dataset_stats(read_celeba(real_data_root), top=10)
    pos = {frozenset((p["a"], p["b"])) for p in stats.top_pairs["positive"]}
    neg = {frozenset((p["a"], p["b"])) for p in stats.top_pairs["negative"]}
    assert {frozenset(("Mustache", "Goatee")), frozenset(("Smiling", "Mouth_Slightly_Open"))} <= pos
    assert {frozenset(("Male", "Heavy_Makeup")), frozenset(("Male", "Wearing_Lipstick"))} <= neg
    assert stats.majority_accuracy is not None and 0.75 < stats.majority_accuracy < 0.85


def test_report_and_data_stats_draw_correlations_in_one_order(tmp_path, monkeypatch):
    """The report's correlation matrices and `data stats --plot` list the attributes in one
    order (attributes.display_order: grouped), and each matrix is permuted with its names."""
    from matplotlib.axes import Axes

    from faceattr.attributes import CELEBA_ATTRIBUTES, display_order
    from faceattr.report import plots

    drawn: list[tuple[list[str], np.ndarray]] = []
    real_ticks, real_show = Axes.set_xticks, Axes.imshow

    def ticks(self, positions, labels=None, **kw):
        drawn.append(([str(t).strip() for t in labels], shown.pop()))
        return real_ticks(self, positions, labels, **kw)

    shown: list[np.ndarray] = []

    def imshow(self, data, *a, **kw):
        shown.append(np.ma.filled(np.ma.asarray(data, dtype=np.float64), np.nan))
        return real_show(self, data, *a, **kw)

    monkeypatch.setattr(Axes, "set_xticks", ticks)
    monkeypatch.setattr(Axes, "imshow", imshow)
    names = list(CELEBA_ATTRIBUTES)
    rng = np.random.default_rng(2)
    labels = (rng.random((300, 40)) < 0.5).astype(np.float32)
    labels[:, names.index("Wearing_Lipstick")] = 1 - labels[:, names.index("Male")]
    table = replace(_table(labels), attributes=names, dataset="celeba")
    plot_correlation(dataset_stats(table), tmp_path / "stats.png")
    r = np.corrcoef(labels.T)
    plots.correlation_plot(names, r, r)
    want = display_order(names)
    assert want != names and [order for order, _ in drawn] == [want] * 3
    male, lipstick = want.index("Male"), want.index("Wearing_Lipstick")
    for _, matrix in drawn:  # the planted pair, where the names say it is
        assert matrix[male, lipstick] == pytest.approx(-1.0)
