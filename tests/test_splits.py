"""Split names, validation carving (by identity) and select_split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faceattr.data.celeba import read_celeba
from faceattr.data.splits import ensure_validation, resolve_split_name, select_split
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError, UsageError


def _table(
    n: int = 200, *, people: int | None = 40, seed: int = 0, split="train"
) -> AttributeTable:
    """``n`` images, all in ``split``; identities 100.. (None: unknown)."""
    rng = np.random.default_rng(seed)
    identity = (
        pd.array(100 + rng.integers(0, people, n), dtype="Int64")
        if people
        else pd.array([pd.NA] * n, dtype="Int64")
    )
    frame = pd.DataFrame(
        {"image": [f"{i:06d}.jpg" for i in range(n)], "split": [split] * n, "identity": identity}
    )
    labels = (rng.random((n, 3)) < 0.3).astype(np.float32)
    return AttributeTable(Path("/nowhere"), frame, labels, ["Male", "Smiling", "Young"])


def _split_of(table: AttributeTable) -> dict[str, str]:
    return dict(zip(table.frame["image"], table.frame["split"], strict=True))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("train", "train"), ("val", "valid"), ("Validation", "valid"), (" valid ", "valid"),
     ("test", "test"), ("ALL", "all")],
)  # fmt: skip
def test_resolve_split_name(name: str, expected: str) -> None:
    assert resolve_split_name(name) == expected


def test_unknown_split_lists_choices() -> None:
    with pytest.raises(UsageError) as info:
        resolve_split_name("tset")
    assert "'tset'" in info.value.message and "test" in info.value.message
    assert "train, valid, test, all" in info.value.hint


def test_carve_by_identity(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    # pretend the copy has no validation partition, like the real sample
    frame = table.frame.copy()
    frame.loc[frame["split"] == "valid", "split"] = "train"
    no_valid = AttributeTable(table.image_dir, frame, table.labels, table.attributes)
    carved = ensure_validation(no_valid, fraction=0.2, seed=3)
    f = carved.frame
    train_ids = set(f.loc[f["split"] == "train", "identity"])
    valid_ids = set(f.loc[f["split"] == "valid", "identity"])
    assert valid_ids and not train_ids & valid_ids
    n_valid = int((f["split"] == "valid").sum())
    assert abs(n_valid / 750 - 0.2) < 0.02
    assert carved.split_counts() == {"train": 750 - n_valid, "valid": n_valid, "test": 150}
    note = carved.notes[-1]
    assert note.startswith(
        f"No validation images in the partition file: carved {n_valid} images of "
        f"{len(valid_ids)} identities out of train as validation (by identity, seed 3)"
    )
    # deterministic, seed-dependent, and independent of row order
    assert _split_of(ensure_validation(no_valid, fraction=0.2, seed=3)) == _split_of(carved)
    assert _split_of(ensure_validation(no_valid, fraction=0.2, seed=4)) != _split_of(carved)
    shuffled = no_valid.subset(np.random.default_rng(9).permutation(len(no_valid)))
    assert _split_of(ensure_validation(shuffled, fraction=0.2, seed=3)) == _split_of(carved)
    # labels travel with their rows
    again = read_celeba(synthetic_root)
    np.testing.assert_array_equal(carved.labels, again.labels)


def test_existing_validation_is_kept(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    assert ensure_validation(table) is table


def test_carve_by_image_without_identities() -> None:
    table = _table(200, people=None)
    carved = ensure_validation(table, fraction=0.1, seed=0)
    assert carved.split_counts() == {"train": 180, "valid": 20, "test": 0}
    assert "carved 20 images out of train as validation (by image" in carved.notes[-1]
    shuffled = table.subset(np.arange(200)[::-1])
    assert _split_of(ensure_validation(shuffled, seed=0)) == _split_of(carved)
    assert table.split_counts()["valid"] == 0  # the input is not modified


def test_carve_with_some_identities_unknown() -> None:
    table = _table(300, people=30, seed=1)
    table.frame.loc[::10, "identity"] = pd.NA  # 30 images of unknown identity
    carved = ensure_validation(table, fraction=0.1, seed=0).frame
    known = carved["identity"].notna()
    train_ids = set(carved.loc[known & (carved["split"] == "train"), "identity"])
    valid_ids = set(carved.loc[known & (carved["split"] == "valid"), "identity"])
    assert not train_ids & valid_ids
    assert 15 <= int((carved["split"] == "valid").sum()) <= 45


def test_bad_fraction() -> None:
    with pytest.raises(UsageError, match="between 0 and 1"):
        ensure_validation(_table(), fraction=1.0)


def test_select_split_and_all(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    test = select_split(table, "test")
    assert len(test) == 150 and set(test.frame["split"]) == {"test"}
    assert len(select_split(table, "val")) == 150
    assert len(select_split(table, "all")) == 900


def test_sample(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    a = select_split(table, "train", sample=100, seed=1)
    b = select_split(table, "train", sample=100, seed=1)
    c = select_split(table, "train", sample=100, seed=2)
    assert len(a) == 100 and set(a.frame["split"]) == {"train"}
    assert list(a.frame["image"]) == list(b.frame["image"])
    assert list(a.frame["image"]) != list(c.frame["image"])
    assert list(a.frame["image"]) == sorted(a.frame["image"])  # table order kept
    assert "Sampled 100 of 600 train images at random (seed 1)." in a.notes
    # same subset whatever the row order
    shuffled = table.subset(np.random.default_rng(0).permutation(len(table)))
    d = select_split(shuffled, "train", sample=100, seed=1)
    assert set(d.frame["image"]) == set(a.frame["image"])
    # labels stay attached to their images
    rows = table.frame["image"].isin(a.frame["image"]).to_numpy()
    np.testing.assert_array_equal(a.labels, table.labels[rows])

    everything = select_split(table, "valid", sample=500)
    assert len(everything) == 150
    assert any("500 images is not smaller than the 150 valid images" in n for n in everything.notes)
    with pytest.raises(UsageError, match="positive"):
        select_split(table, "train", sample=0)


def test_attribute_selection(synthetic_root: Path) -> None:
    table = read_celeba(synthetic_root)
    sub = select_split(table, "test", attributes=["smiling", "Male"])
    assert sub.attributes == ["Smiling", "Male"] and sub.labels.shape == (150, 2)
    np.testing.assert_array_equal(
        sub.labels[:, 0], select_split(table, "test").labels[:, table.attributes.index("Smiling")]
    )
    with pytest.raises(UsageError) as info:
        select_split(table, "test", attributes=["Smilling"])
    assert "Did you mean: Smiling" in info.value.message


def test_empty_split_says_which_and_counts() -> None:
    table = _table(100, people=None)  # train only: valid is carved, test stays empty
    with pytest.raises(DataError) as info:
        select_split(table, "test")
    assert "test split" in info.value.message
    assert "train 90, valid 10, test 0" in info.value.message
    assert '`split="valid"`' in info.value.hint
