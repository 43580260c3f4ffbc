"""The prepared cache: `data prepare`, staleness, atomicity, and training/eval reading it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from faceattr.config import DataConfig
from faceattr.data import load_split
from faceattr.data.cache import (
    CACHE_ENV,
    CachedBatches,
    cache_path,
    cache_status,
    find_cache,
    open_cache,
    prepare_cache,
)
from faceattr.data.images import load_image
from faceattr.data.synthetic import write_synthetic_celeba
from faceattr.data.transforms import preprocess
from faceattr.engine.data import make_batches
from faceattr.errors import DataError
from faceattr.progress import NullProgress

SIZE = 32  # celebnet's smallest input: keeps decoding and training cheap


class LogProgress(NullProgress):
    """Collects log lines; optionally interrupts after ``stop_after`` images (like Ctrl-C)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.lines: list[str] = []
        self.done = 0
        self.stop_after = stop_after

    def advance(self, n: int = 1, **info: Any) -> None:
        self.done += n
        if self.stop_after is not None and self.done >= self.stop_after:
            raise KeyboardInterrupt

    def log(self, message: str) -> None:
        self.lines.append(message)


def make_root(tmp_path: Path, name: str = "data") -> Path:
    return write_synthetic_celeba(tmp_path / name, n_train=96, n_valid=24, n_test=24, seed=1)


def data_cfg(root: Path, **kw: Any) -> DataConfig:
    return DataConfig(root=str(root), img_size=SIZE, workers=0, **kw)


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)


def test_prepare_writes_the_preprocessed_pixels(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    progress = LogProgress()
    res = prepare_cache(data, workers=2, progress=progress)  # two processes, disjoint slices
    assert res.built and res.reasons == ["no cache yet"] and res.n_images == 144
    assert progress.done == 144
    assert res.path == root / ".faceattr-cache" / res.path.name
    assert res.path.name.startswith(f"celeba-{SIZE}px-")
    cache = open_cache(res.path)
    assert cache.images.shape == (144, 3, SIZE, SIZE) and cache.images.dtype == np.uint8
    m = cache.manifest
    assert m["complete"] and m["img_size"] == SIZE and m["n_failed"] == 0
    assert m["splits"] == {"train": 96, "valid": 24, "test": 24}
    assert m["image_dir"] == "img_align_celeba"
    assert not list(res.path.parent.glob(".tmp-*"))
    # The cache holds exactly what the JPEG path computes, row for row.
    for row in (0, 57, 143):
        path = root / "img_align_celeba" / cache.names[row]
        expected = preprocess(load_image(path), SIZE, data.crop)
        np.testing.assert_array_equal(cache.images[row], expected)
    # A second prepare of unchanged files is a no-op; force=True rebuilds.
    again = prepare_cache(data)
    assert not again.built and again.path == res.path
    forced = prepare_cache(data, force=True)
    assert forced.built and forced.reasons == ["rebuild forced"]


def test_make_batches_reads_the_cache_with_identical_batches(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    prepare_cache(data, workers=0)
    table = load_split(data, "train")
    progress = LogProgress()
    kwargs = dict(img_size=SIZE, crop=data.crop, batch_size=20, shuffle=True, workers=0)
    cached = make_batches(
        table, **kwargs, generator=torch.Generator().manual_seed(5), data=data, progress=progress
    )
    assert isinstance(cached, CachedBatches)
    assert len(progress.lines) == 1 and "reading the prepared cache" in progress.lines[0]
    jpeg = make_batches(table, **kwargs, generator=torch.Generator().manual_seed(5))
    a, b = list(cached), list(jpeg)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.index, y.index)  # same shuffle
        assert torch.equal(x.images, y.images)  # same pixels
        assert torch.equal(x.targets.nan_to_num(-1), y.targets.nan_to_num(-1))
        assert x.images.dtype == torch.uint8 and x.skipped == []
    # Re-iterating reshuffles, as a DataLoader does.
    assert not torch.equal(list(cached)[0].index, a[0].index)
    # cache="off" decodes files and says nothing.
    off = LogProgress()
    plain = make_batches(table, **kwargs, data=data_cfg(root, cache="off"), progress=off)
    assert not isinstance(plain, CachedBatches) and off.lines == []


def _mtime_plus_one(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _rewrite(path: Path) -> None:
    from PIL import Image

    st = path.stat()
    Image.new("RGB", (178, 218), (10, 200, 30)).save(path, quality=90)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: the size gives it away


@pytest.mark.parametrize("change", ["touch", "modify", "remove", "add"])
def test_stale_cache_is_detected_and_rebuilt(tmp_path: Path, change: str) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    prepare_cache(data, workers=0)
    images = root / "img_align_celeba"
    first = images / "000001.jpg"  # a train image
    if change == "touch":
        _mtime_plus_one(first)
    elif change == "modify":
        _rewrite(first)
    elif change == "remove":
        first.unlink()
    else:  # a new image listed in the annotation files, as a partial download completed later
        extra = write_synthetic_celeba(tmp_path / "more", n_train=97, n_valid=24, n_test=24)
        for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
            (root / name).write_bytes((extra / name).read_bytes())
        (images / "000145.jpg").write_bytes((extra / "img_align_celeba/000097.jpg").read_bytes())

    status = cache_status(data)
    assert status.exists and not status.up_to_date
    expected = {"touch": "changed", "modify": "changed", "remove": "removed", "add": "added"}
    assert expected[change] in " ".join(status.reasons)

    table = load_split(data, "all")
    found = find_cache(table, data, img_size=SIZE, crop=data.crop)
    if change == "remove":
        # The reader drops the missing file; every remaining row is still exact.
        assert found.cache is not None and len(found.rows) == len(table) == 143
    else:
        assert found.cache is None and "stale" in found.message and "rebuild" in found.message

    progress = LogProgress()
    res = prepare_cache(data, workers=0, progress=progress)
    assert res.built and progress.lines and "Rebuilding" in progress.lines[0]
    assert cache_status(data).up_to_date
    assert find_cache(load_split(data, "all"), data, img_size=SIZE, crop=data.crop).cache
    if change == "modify":
        row = int(open_cache(res.path).rows_of(["000001.jpg"])[0])
        np.testing.assert_array_equal(open_cache(res.path).images[row, :, 0, 0], [10, 200, 30])


def test_other_size_or_crop_is_not_used(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    prepare_cache(data, workers=0)
    table = load_split(data, "valid")
    progress = LogProgress()
    other = make_batches(
        table, img_size=40, crop=data.crop, batch_size=8, workers=0, data=data, progress=progress
    )
    assert not isinstance(other, CachedBatches)
    assert f"no prepared cache for 40 px; caches exist for {SIZE} px" in progress.lines[0]
    found = find_cache(table, data, img_size=SIZE, crop=(0.0, 0.0, 1.0, 1.0))
    assert found.cache is None and "(other crop)" in found.message
    # A crop read back from JSON (rounded floats, a list) still finds the cache.
    crop = json.loads(json.dumps([float(c) for c in data.crop]))
    assert find_cache(table, data, img_size=SIZE, crop=crop).cache is not None


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_prepare_leaves_no_valid_looking_cache(tmp_path: Path, workers: int) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(data, workers=workers, progress=LogProgress(stop_after=40))
    path = cache_path(data)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # the temp folder is gone too
    table = load_split(data, "train")
    assert find_cache(table, data, img_size=SIZE, crop=data.crop).cache is None
    # A prepare killed outright (no cleanup) leaves a temp folder: never used, removed later.
    leftover = path.parent / f".tmp-{path.name}-9999999-abcd"
    leftover.mkdir()
    (leftover / "manifest.json").write_text('{"format": 1, "complete": true}')
    assert find_cache(table, data, img_size=SIZE, crop=data.crop).cache is None
    assert prepare_cache(data, workers=0).built
    assert not leftover.exists()
    assert isinstance(
        make_batches(table, img_size=SIZE, crop=data.crop, batch_size=8, data=data), CachedBatches
    )


def test_an_interrupted_rebuild_keeps_the_old_cache(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = data_cfg(root)
    first = prepare_cache(data, workers=0)
    before = first_manifest(first.path)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(data, workers=0, force=True, progress=LogProgress(stop_after=10))
    assert first_manifest(first.path) == before  # untouched, still the one in use
    assert cache_status(data).up_to_date
    assert [d.name for d in first.path.parent.iterdir()] == [first.path.name]


def first_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def test_corrupt_image_is_recorded_and_skipped(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    bad = root / "img_align_celeba" / "000003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated download
    data = data_cfg(root)
    res = prepare_cache(data, workers=0)
    assert list(res.failed) == ["000003.jpg"] and "truncated" in res.failed["000003.jpg"]
    manifest = first_manifest(res.path)
    assert manifest["n_failed"] == 1 and manifest["failed"][0]["image"] == "000003.jpg"

    table = load_split(data, "train")
    progress = LogProgress()
    batches = make_batches(
        table, img_size=SIZE, crop=data.crop, batch_size=32, data=data, progress=progress
    )
    assert isinstance(batches, CachedBatches)
    assert "1 that failed to decode at prepare time are skipped" in progress.lines[0]
    got = list(batches)
    skipped = [p for b in got for p in b.skipped]
    assert skipped == [str(bad)]
    index = torch.cat([b.index for b in got])
    assert len(index) == len(table) - 1 and 2 not in index.tolist()
    # The JPEG path drops the same file.
    jpeg = list(make_batches(table, img_size=SIZE, crop=data.crop, batch_size=32, workers=0))
    assert [p for b in jpeg for p in b.skipped] == skipped
    assert torch.equal(torch.cat([b.images for b in jpeg]), torch.cat([b.images for b in got]))


def test_fit_on_the_cache_trains_exactly_as_on_jpeg(tmp_path: Path) -> None:
    from faceattr.config import AugmentConfig, ModelConfig, TrainConfig
    from faceattr.engine.fit import fit

    root = make_root(tmp_path)

    def run(name: str, cache: str) -> tuple[Any, list[str]]:
        cfg = TrainConfig(
            data=data_cfg(root, cache=cache, sample=64),
            model=ModelConfig(arch="celebnet", num_features=16),
            augment=AugmentConfig(hflip=True),
            epochs=2,
            batch_size=32,
            tune_thresholds=False,
            out=str(tmp_path / name),
        )
        progress = LogProgress()
        return fit(cfg, progress=progress), progress.lines

    prepare_cache(data_cfg(root), workers=0)
    cached, lines = run("cached", "auto")
    used = [line for line in lines if "reading the prepared cache" in line]
    assert len(used) == 2  # once for validation, once for training (not every epoch)
    jpeg, lines = run("jpeg", "off")
    assert not any("cache" in line for line in lines)
    for a, b in zip(cached.history, jpeg.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_mean_accuracy"] == pytest.approx(b["val_mean_accuracy"], rel=1e-5)


def test_eval_reads_the_cache(tmp_path: Path) -> None:
    from faceattr.config import ModelConfig, TrainConfig
    from faceattr.engine.evaluate import evaluate_model
    from faceattr.engine.fit import fit

    root = make_root(tmp_path)
    cfg = TrainConfig(
        data=data_cfg(root, cache="off"),
        model=ModelConfig(arch="celebnet", num_features=16),
        epochs=1,
        batch_size=48,
        out=str(tmp_path / "run"),
    )
    fit(cfg)
    plain = evaluate_model(tmp_path / "run", data_cfg(root), "test", save=False)
    prepare_cache(data_cfg(root), workers=0)
    progress = LogProgress()
    cached = evaluate_model(tmp_path / "run", data_cfg(root), "test", save=False, progress=progress)
    assert any("Data (test, 24 images): reading the prepared cache" in x for x in progress.lines)
    assert cached.metrics["mean_accuracy"] == pytest.approx(plain.metrics["mean_accuracy"])


def test_cache_dir_env_var_keeps_caches_out_of_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_root(tmp_path)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "caches"))
    data = data_cfg(root)
    res = prepare_cache(data, workers=0)
    assert res.path.is_relative_to(tmp_path / "caches")
    assert not (root / ".faceattr-cache").exists()
    found = find_cache(load_split(data, "test"), data, img_size=SIZE, crop=data.crop)
    assert found.cache is not None


def test_not_enough_disk_space_is_a_clear_error(tmp_path: Path) -> None:
    from faceattr.data.cache.build import _check_disk

    with pytest.raises(DataError) as info:
        _check_disk(tmp_path, need=10**18, reclaimable=0, img_size=224, n=202_599)
    assert "Not enough disk space" in info.value.message
    assert "`img_size=64` needs 2.5 GB" in info.value.hint and CACHE_ENV in info.value.hint


def test_prepare_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from faceattr.cli.app import app

    root = make_root(tmp_path)
    runner = CliRunner()
    args = ["data", "prepare", "celeba", "--root", str(root), "--img-size", str(SIZE)]
    result = runner.invoke(app, [*args, "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["built"] and out["n_images"] == 144 and out["bytes"] == 144 * 3 * SIZE * SIZE
    assert Path(out["path"]).is_dir()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Cache up to date" in result.stdout
    result = runner.invoke(app, ["data", "prepare", "celeba", "--root", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "Error" in result.output


def test_prepare_command_crop_matches_train_crop(tmp_path: Path) -> None:
    """`data prepare --crop full` builds the cache that `train --crop full` then reads."""
    from typer.testing import CliRunner

    from faceattr.cli.app import app
    from faceattr.config import FULL_IMAGE

    root = make_root(tmp_path)
    r = CliRunner().invoke(
        app, ["data", "prepare", "celeba", "--root", str(root), "--img-size", str(SIZE),
              "--crop", "full", "--workers", "0", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert cache_status(data_cfg(root, crop=FULL_IMAGE)).up_to_date
    assert not cache_status(data_cfg(root)).exists  # the default (square) crop was not built
    bad = CliRunner().invoke(app, ["data", "prepare", "celeba", "--root", str(root),
                                   "--crop", "diagonal"])  # fmt: skip
    assert bad.exit_code == 2 and "diagonal" in bad.output
