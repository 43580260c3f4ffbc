"""find_celeba / read_celeba on small copies of every real CelebA file format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.celeba import CelebaFiles, find_celeba, read_celeba
from faceattr.data.splits import select_split
from faceattr.data.synthetic import write_celeba_annotations, write_synthetic_celeba
from faceattr.errors import DataError

SMALL = {"n_train": 8, "n_valid": 4, "n_test": 4, "image_size": (32, 40)}


def _small(root: Path, layout: str = "official", **kw) -> Path:
    return write_synthetic_celeba(root, layout=layout, **{**SMALL, **kw})


def _edit_line(path: Path, number: int, new: str) -> None:
    """Replace 1-based line ``number`` of ``path``, keeping its line ending."""
    lines = path.read_bytes().split(b"\n")
    eol = b"\r" if lines[number - 1].endswith(b"\r") else b""
    lines[number - 1] = new.encode() + eol
    path.write_bytes(b"\n".join(lines))


def _line(path: Path, number: int) -> str:
    return path.read_text().splitlines()[number - 1]


def test_synthetic_sizes_and_official_format(synthetic_root: Path) -> None:
    files = find_celeba(synthetic_root)
    assert files.layout == "official" and files.identity_file is not None
    raw = files.attr_file.read_bytes()
    assert raw.startswith(b"900\r\n5_o_Clock_Shadow Arched_Eyebrows ")
    assert b"Young \r\n000001.jpg " in raw and b"  1" in raw  # official spacing and CRLF
    table = read_celeba(synthetic_root)
    assert len(table) == 900 and table.split_counts() == {"train": 600, "valid": 150, "test": 150}
    assert table.attributes == list(CELEBA_ATTRIBUTES)
    assert table.labels.dtype == np.float32 and set(np.unique(table.labels)) == {0.0, 1.0}
    assert table.notes == []
    assert (table.image_dir / "000001.jpg").is_file()


@pytest.mark.parametrize("layout", ["official", "kaggle", "torchvision"])
def test_layouts_read_back_equal(tmp_path: Path, layout: str) -> None:
    ref = read_celeba(_small(tmp_path / "ref", "official"))
    table = read_celeba(_small(tmp_path / layout, layout))
    assert find_celeba(tmp_path / layout).layout == layout
    np.testing.assert_array_equal(table.labels, ref.labels)
    assert list(table.frame["image"]) == list(ref.frame["image"])
    assert list(table.frame["split"]) == list(ref.frame["split"])
    if layout == "kaggle":  # Kaggle's copy has no identity file
        assert table.frame["identity"].isna().all()
    else:
        assert list(table.frame["identity"]) == list(ref.frame["identity"])


@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_known_labels_round_trip(tmp_path: Path, layout: str) -> None:
    """A six-image copy with hand-written labels: -1/1 -> 0/1, 0/1/2 -> train/valid/test."""
    labels = np.array(
        [[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.uint8
    )
    names = [f"{i:06d}.jpg" for i in (3, 8, 10, 11, 20, 21)]  # ids need not be contiguous
    files = write_celeba_annotations(
        tmp_path, names, labels, [0, 0, 1, 1, 2, 2], [7, 7, 9, 9, 4, 5],
        layout=layout, attributes=("Smiling", "Wearing_Hat", "My_Own_Flag"),
    )  # fmt: skip
    for name in names:
        (files.image_dir / name).write_bytes(b"")  # the reader does not decode pixels
    table = read_celeba(tmp_path)
    assert table.attributes == ["Smiling", "Wearing_Hat", "My_Own_Flag"]
    np.testing.assert_array_equal(table.labels, labels.astype(np.float32))
    assert list(table.frame["split"]) == ["train", "train", "valid", "valid", "test", "test"]
    if layout == "official":
        assert list(table.frame["identity"]) == [7, 7, 9, 9, 4, 5]
    assert table.image_dir == files.image_dir


def test_google_drive_layout_and_lf_files(tmp_path: Path) -> None:
    src = _small(tmp_path / "src")
    drive = tmp_path / "drive"
    (drive / "Anno").mkdir(parents=True)
    (drive / "Eval").mkdir()
    (drive / "Img").mkdir()
    for name in ("list_attr_celeba.txt", "identity_CelebA.txt"):
        text = (src / name).read_text().replace("\r\n", "\n")  # LF copies read the same
        (drive / "Anno" / name).write_text(text)
    shutil.copy(src / "list_eval_partition.txt", drive / "Eval")
    shutil.copytree(src / "img_align_celeba", drive / "Img" / "img_align_celeba")
    files = find_celeba(drive)
    assert files.layout == "official" and files.image_dir == drive / "Img" / "img_align_celeba"
    a, b = read_celeba(src), read_celeba(drive)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert list(a.frame["identity"]) == list(b.frame["identity"])


def test_kaggle_flat_and_nested_image_folders(tmp_path: Path) -> None:
    root = _small(tmp_path, "kaggle")
    nested = root / "img_align_celeba" / "img_align_celeba"
    assert find_celeba(root).image_dir == nested
    for path in nested.iterdir():  # the flat variant: images directly in img_align_celeba/
        path.rename(root / "img_align_celeba" / path.name)
    nested.rmdir()
    assert find_celeba(root).image_dir == root / "img_align_celeba"
    assert len(read_celeba(root)) == 16


def test_nothing_found_lists_layouts_and_fix(tmp_path: Path) -> None:
    (tmp_path / "list_attr_celeba.txt").write_text("1\nSmiling\n000001.jpg 1\n")
    (tmp_path / "img_align_celeba.zip").write_bytes(b"")
    with pytest.raises(DataError) as info:
        find_celeba(tmp_path)
    err = info.value
    assert "No CelebA dataset found" in err.message
    for expected in (
        "official release",
        "Kaggle",
        "torchvision",
        "Anno/list_attr_celeba.txt",
        "list_eval_partition.txt",
        "img_align_celeba.zip is there: extract it",
    ):
        assert expected in err.message
    assert "faceattr data fetch celeba --root DIR" in err.hint
    assert "faceattr data fetch synthetic --root DIR" in err.hint
    with pytest.raises(DataError, match="does not exist"):
        read_celeba(tmp_path / "nowhere")


def test_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    line = _line(files.attr_file, 7)
    _edit_line(files.attr_file, 7, line.rsplit(" ", 1)[0])  # drop the last value
    with pytest.raises(DataError) as info:
        read_celeba(tmp_path)
    assert "list_attr_celeba.txt" in info.value.message
    assert "line 7: expected 41 fields" in info.value.message and "found 40" in info.value.message

    _edit_line(files.attr_file, 7, line + "  1")  # one value too many
    with pytest.raises(DataError, match="line 7: expected 41 fields .* found 42"):
        read_celeba(tmp_path)


def test_bad_values_name_line_and_attribute(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    line = _line(files.attr_file, 5)
    fields = line.split()
    fields[3] = "2"  # Attractive
    _edit_line(files.attr_file, 5, " ".join(fields))
    with pytest.raises(DataError) as info:
        read_celeba(tmp_path)
    assert "line 5: Attractive is '2', expected -1, 0 or 1" in info.value.message
    assert "faceattr data fetch celeba" in info.value.hint
    fields[3] = "yes"
    _edit_line(files.attr_file, 5, " ".join(fields))
    with pytest.raises(DataError, match="line 5: Attractive is 'yes'"):
        read_celeba(tmp_path)


def test_bad_values_in_kaggle_csv(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path, "kaggle"))
    fields = _line(files.attr_file, 4).split(",")
    fields[-1] = "1.5"
    _edit_line(files.attr_file, 4, ",".join(fields))
    with pytest.raises(DataError, match=r"list_attr_celeba\.csv.*line 4: Young is '1\.5'"):
        read_celeba(tmp_path)


def test_header_and_count_line_checks(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    _edit_line(files.attr_file, 1, "17")
    table = read_celeba(tmp_path)
    assert len(table) == 16
    assert any("says 17 images on its first line but lists 16" in n for n in table.notes)

    names = _line(files.attr_file, 2).split()
    _edit_line(files.attr_file, 2, " ".join(names[:-1]))  # 39 names for 40 values
    with pytest.raises(DataError, match="line 2 names 39 attributes but line 3 has 40 values"):
        read_celeba(tmp_path)

    # re-uploads without the count line still read
    lines = files.attr_file.read_text().splitlines()
    files.attr_file.write_text("\n".join([" ".join(names)] + lines[2:]) + "\n")
    assert len(read_celeba(tmp_path)) == 16

    # no names line at all: said so, not "attribute names repeat: -1, 1"
    files.attr_file.write_text("\n".join(["16"] + lines[2:]) + "\n")
    with pytest.raises(DataError) as caught:
        read_celeba(tmp_path)
    assert "holds label values" in caught.value.message and "header line is missing" in str(
        caught.value
    )


def test_zero_labels_are_unknown(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    fields = _line(files.attr_file, 3).split()
    fields[1] = "0"  # 5_o_Clock_Shadow of 000001.jpg
    _edit_line(files.attr_file, 3, " ".join(fields))
    table = read_celeba(tmp_path)
    assert np.isnan(table.labels[0, 0]) and np.isnan(table.labels).sum() == 1
    assert any("1 labels of 0" in n and "unknown" in n for n in table.notes)


def test_duplicate_image_is_an_error(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    _edit_line(files.attr_file, 4, _line(files.attr_file, 3))
    with pytest.raises(DataError, match="'000001.jpg' is listed more than once"):
        read_celeba(tmp_path)


def test_partition_file_checks(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    _edit_line(files.partition_file, 6, "000006.jpg 3")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt.*line 6: partition is '3'"):
        read_celeba(tmp_path)

    _edit_line(files.partition_file, 6, "")  # 000006.jpg no longer has a partition
    table = read_celeba(tmp_path)
    assert len(table) == 15 and "000006.jpg" not in set(table.frame["image"])
    assert any(
        "1 of 16 images in list_attr_celeba.txt are not in list_eval_partition.txt" in n
        and "000006.jpg" in n
        for n in table.notes
    )


def test_missing_images_are_dropped_with_a_note(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    for name in ("000002.jpg", "000011.jpg", "000016.jpg"):
        (files.image_dir / name).unlink()
    table = read_celeba(tmp_path)
    assert len(table) == 13
    assert not {"000002.jpg", "000011.jpg", "000016.jpg"} & set(table.frame["image"])
    assert table.labels.shape == (13, 40) and len(table.frame["identity"]) == 13
    note = next(n for n in table.notes if "missing" in n)
    assert note.startswith("3 of 16 images listed in list_attr_celeba.txt are missing from")
    assert "(e.g. 000002.jpg, 000011.jpg, 000016.jpg); continuing with the rest" in note
    # labels still line up with the right rows after dropping
    full = read_celeba(files, check_images=False)
    keep = ~full.frame["image"].isin(["000002.jpg", "000011.jpg", "000016.jpg"]).to_numpy()
    np.testing.assert_array_equal(table.labels, full.labels[keep])

    for path in files.image_dir.iterdir():
        path.unlink()
    with pytest.raises(DataError, match="None of the 16 images .* is in"):
        read_celeba(tmp_path)


def test_celeba_files_is_accepted(tmp_path: Path) -> None:
    files = find_celeba(_small(tmp_path))
    assert isinstance(files, CelebaFiles)
    assert len(read_celeba(files)) == 16


@pytest.mark.realdata
def test_real_sample(real_data_root: Path) -> None:
    table = read_celeba(real_data_root)
    assert len(table) == 14_283 and table.split_counts()["train"] == 14_283
    assert table.notes == []
    assert table.frame["identity"].notna().all()
    assert table.frame["identity"].nunique() == 5_449

    valid = select_split(table, "valid")
    train = select_split(table, "train")
    assert not set(valid.frame["identity"]) & set(train.frame["identity"])
    assert len(valid) + len(train) == 14_283
    assert abs(len(valid) / 14_283 - 0.1) < 0.02
    assert "by identity" in valid.notes[0]
    with pytest.raises(DataError, match="test split of celeba has no images"):
        select_split(table, "test")
