"""The synthetic CelebA generator: real formats, disjoint identities, CelebA-like labels that
are visible in the pixels at the resolution models train at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.celeba import find_celeba, read_celeba
from faceattr.data.synthetic import (
    attribute_cells,
    draw_synthetic_labels,
    render_synthetic_face,
    write_synthetic_celeba,
)

A = {name: j for j, name in enumerate(CELEBA_ATTRIBUTES)}


def _center64(path: Path) -> np.ndarray:
    """The model's view: the central 178 x 178 square resized to 64 x 64, as float [64, 64, 3]."""
    with Image.open(path) as img:
        return np.asarray(img.crop((0, 20, 178, 198)).resize((64, 64), Image.BILINEAR), np.float32)


def test_files_and_images(synthetic_root: Path) -> None:
    files = find_celeba(synthetic_root)
    names = sorted(p.name for p in files.image_dir.iterdir())
    assert names[0] == "000001.jpg" and names[-1] == "000900.jpg" and len(names) == 900
    with Image.open(files.image_dir / "000001.jpg") as img:
        assert img.format == "JPEG" and img.size == (178, 218) and img.mode == "RGB"
    first_rows = files.partition_file.read_text().splitlines()
    assert first_rows[0] == "000001.jpg 0" and first_rows[-1] == "000900.jpg 2"


def test_identities_disjoint_across_partitions(synthetic_root: Path) -> None:
    frame = read_celeba(synthetic_root).frame
    groups = [set(frame.loc[frame["split"] == s, "identity"]) for s in ("train", "valid", "test")]
    assert all(groups)
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    # sex belongs to the identity
    table = read_celeba(synthetic_root)
    male = table.labels[:, A["Male"]]
    per_person = frame.assign(male=male).groupby("identity")["male"].nunique()
    assert (per_person == 1).all()


def test_label_rates_and_rules(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    rates = dict(zip(table.attributes, table.positive_rates(), strict=True))
    for name, target in {"Male": 0.42, "No_Beard": 0.83, "Attractive": 0.51, "Young": 0.77,
                         "Smiling": 0.48, "Heavy_Makeup": 0.39}.items():  # fmt: skip
        assert abs(rates[name] - target) < 0.08, (name, rates[name])
    assert rates["Bald"] < 0.06 and rates["Mustache"] < 0.1
    y = table.labels.astype(bool)
    women = ~y[:, A["Male"]]
    for name in ("Goatee", "Mustache", "Sideburns", "Bald", "5_o_Clock_Shadow"):
        assert not (y[women, A[name]]).any(), name
    assert not (y[:, A["Goatee"]] & y[:, A["No_Beard"]]).any()
    hair = [A[n] for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]
    assert y[:, hair].sum(axis=1).max() <= 1
    assert not (y[:, A["Straight_Hair"]] & y[:, A["Wavy_Hair"]]).any()
    assert 6 < y.sum(axis=1).mean() < 12  # CelebA: about 9 positives per image


def test_every_attribute_is_visible_at_64px(synthetic_root: Path) -> None:
    """In each attribute's cell, every positive image differs from the background more than
    every negative image does, after the model's centre crop and resize to 64 px."""
    table = read_celeba(synthetic_root)
    x = np.stack([_center64(p) for p in table.paths])  # [N, 64, 64, 3]
    background = np.median(x.reshape(len(x), -1, 3), axis=1)[:, None, None, :]
    dist = np.abs(x - background).sum(axis=-1)  # [N, 64, 64]
    s = 64 / 178
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        for left, top, w, h in attribute_cells(j, (178, 218)):
            top -= 20  # into the crop's coordinates
            y0, y1 = round(top * s) + 1, round((top + h) * s) - 1
            x0, x1 = round(left * s) + 1, round((left + w) * s) - 1
            score = dist[:, y0:y1, x0:x1].mean(axis=(1, 2))
            pos = table.labels[:, j] == 1
            assert pos.any() and (~pos).any(), name
            assert score[pos].min() > 1.5 * score[~pos].max(), name


def test_a_mirrored_image_shows_the_same_attributes() -> None:
    """Flipping (the default augmentation) keeps every label true: each attribute's cells are
    mirrored about the centre line and its marker is mirror-symmetric."""
    cells = [attribute_cells(j, (178, 218)) for j in range(40)]
    flat = [c for cs in cells for c in cs]
    assert len(set(flat)) == len(flat)  # no two attributes share a cell
    for cs in cells:
        mirrored = {(round(178 - left - w, 6), round(top, 6)) for left, top, w, h in cs}
        assert mirrored == {(round(left, 6), round(top, 6)) for left, top, w, h in cs}
    rng = np.random.default_rng(3)
    labels = draw_synthetic_labels(1, rng)[0]
    on = np.asarray(render_synthetic_face(labels, np.random.default_rng(1)), np.int16)
    off = np.asarray(render_synthetic_face(labels * 0, np.random.default_rng(1)), np.int16)
    markers = np.abs(on - off).sum(axis=-1) > 30  # same rng -> same background
    # The drawn markers are symmetric about the image's vertical centre line (to a pixel of
    # anti-aliasing).
    assert (markers ^ markers[:, ::-1]).sum() < 0.05 * markers.sum()


def test_cues_stay_inside_the_central_square() -> None:
    labels = np.ones(40, dtype=np.uint8)
    on = np.asarray(render_synthetic_face(labels, np.random.default_rng(5)), np.int16)
    off = np.asarray(render_synthetic_face(labels * 0, np.random.default_rng(5)), np.int16)
    changed = np.abs(on - off).sum(axis=-1) > 0  # same rng -> same background
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.min() >= 20 and rows.max() < 198


@pytest.mark.parametrize("layout", ["official", "kaggle", "torchvision"])
def test_deterministic_and_options(tmp_path: Path, layout: str) -> None:
    kw = {"n_train": 6, "n_valid": 3, "n_test": 3, "image_size": (40, 50), "layout": layout}
    a = write_synthetic_celeba(tmp_path / "a", seed=7, **kw)
    b = write_synthetic_celeba(tmp_path / "b", seed=7, **kw)
    c = write_synthetic_celeba(tmp_path / "c", seed=8, **kw)
    fa, fb, fc = find_celeba(a), find_celeba(b), find_celeba(c)
    assert fa.layout == layout
    assert fa.attr_file.read_bytes() == fb.attr_file.read_bytes()
    assert fa.attr_file.read_bytes() != fc.attr_file.read_bytes()
    assert (fa.image_dir / "000004.jpg").read_bytes() == (fb.image_dir / "000004.jpg").read_bytes()
    with Image.open(fa.image_dir / "000012.jpg") as img:
        assert img.size == (40, 50)
    assert read_celeba(a).split_counts() == {"train": 6, "valid": 3, "test": 3}


def test_identities_per_split(tmp_path: Path) -> None:
    root = write_synthetic_celeba(
        tmp_path, n_train=20, n_valid=10, n_test=0, identities_per_split=2, image_size=(32, 40)
    )
    frame = read_celeba(root).frame
    assert frame.groupby("split")["identity"].nunique().to_dict() == {"train": 2, "valid": 2}
    with pytest.raises(ValueError, match="layout"):
        write_synthetic_celeba(tmp_path / "x", layout="zip")


def test_draw_labels_respects_given_sex() -> None:
    male = np.array([True, False] * 50)
    y = draw_synthetic_labels(100, np.random.default_rng(0), male=male)
    assert y.shape == (100, 40) and y.dtype == np.uint8
    np.testing.assert_array_equal(y[:, A["Male"]], male)
