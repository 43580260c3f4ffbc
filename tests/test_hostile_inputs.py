"""Issue 24, second pass: outputs never replace inputs or files faceattr did not write, prune
never takes an unreadable folder for a deleted one, failed files are retried, FIFOs and
devices are never read, the pipeline's memory is bounded by pixels, OS errors on an input
are per-image errors, and archives are bounded by what they unpack to.

No test depends on timing: a FIFO or a device is only ever met by a command run in a
subprocess whose (generous) timeout is a safety net, never the assertion. The tests run as
root too, where chmod denies nothing: a permission error is simulated at the OS call.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import faceattr
from faceattr.cli.app import app
from faceattr.errors import ImageReadError, UsageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAFETY_NET = 300  # seconds: only a hang (the bug these tests guard against) ever reaches it


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def run_cli(*args) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess: a regression that blocks on a FIFO fails, never hangs."""
    return subprocess.run(
        [sys.executable, "-m", "faceattr", *[str(a) for a in args]],
        capture_output=True, text=True, timeout=SAFETY_NET,
    )  # fmt: skip


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", folder / "a.jpg")
    shutil.copy(EXAMPLES / "two-portraits.jpg", folder / "b.jpg")
    return folder


def digests(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- lost work: one output check at the write path ---------------------------------------------


def test_annotate_into_the_inputs_folder_is_refused(photos):
    before = digests(photos)
    for extra in ([], ["--overwrite"]):
        r = invoke("predict", photos, "--annotate", photos, *extra)
        assert r.exit_code == 2 and "it is the input" in said(r), r.output
        assert "never replaces an input" in said(r) and "Traceback" not in r.output
    assert digests(photos) == before  # nothing replaced, nothing added


def test_outputs_need_overwrite_to_replace_an_existing_file(photos, tmp_path):
    out, csv = tmp_path / "annotated", tmp_path / "out.csv"
    r = invoke("predict", photos, "--annotate", out, "--save-crops", out, "--csv", csv)
    assert r.exit_code == 0, r.output
    written = digests(out)
    assert {"a.jpg", "b.jpg", "a_face0.jpg"} <= set(written)
    r = invoke("predict", photos, "--annotate", out)  # the same command again
    assert r.exit_code == 2 and "already holds 2 file(s)" in said(r) and "--overwrite" in said(r)
    r = invoke("predict", photos, "--save-crops", out)
    assert r.exit_code == 2 and "face crops would replace" in said(r)
    r = invoke("predict", photos, "--csv", csv)
    assert r.exit_code == 2 and "out.csv already exists" in said(r) and "--overwrite" in said(r)
    assert digests(out) == written
    (out / "a.jpg").write_bytes(b"mine")
    r = invoke("predict", photos, "--annotate", out, "--csv", csv, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "a.jpg").read_bytes() != b"mine" and csv.read_text().startswith("image,")


def test_no_link_or_folder_disguises_an_input(photos, tmp_path):
    """Symlinked output folders, a symlinked file, a hard link, a crop named like an input:
    an output that is an input by identity is refused, --overwrite or not."""
    before = digests(photos)
    linked_dir = tmp_path / "elsewhere"
    linked_dir.symlink_to(photos)
    r = invoke("predict", photos / "a.jpg", "--annotate", linked_dir, "--overwrite")
    assert r.exit_code == 2 and "it is the input" in said(r)
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(photos / "a.jpg", hard / "a.jpg")
    r = invoke("predict", photos / "a.jpg", "--annotate", hard, "--overwrite")
    assert r.exit_code == 2 and "reached through a link" in said(r)
    (tmp_path / "out.csv").symlink_to(photos / "b.jpg")
    r = invoke("predict", photos, "--csv", tmp_path / "out.csv", "--overwrite")
    assert r.exit_code == 2 and "b.jpg" in said(r) and "reached through a link" in said(r)
    shutil.copy(photos / "a.jpg", photos / "a_face0.jpg")  # an input named like a crop
    before["a_face0.jpg"] = (photos / "a_face0.jpg").read_bytes()
    r = invoke("predict", photos, "--save-crops", photos, "--overwrite")
    assert r.exit_code == 2 and "a_face0.jpg" in said(r) and "it is the input" in said(r)
    assert digests(photos) == before


def test_the_write_path_never_replaces_a_file_made_meanwhile(tmp_path):
    from faceattr.fileio import Inputs, atomic_open, atomic_write_text, check_output

    target = tmp_path / "out.txt"
    with (
        pytest.raises(UsageError, match="already exists"),
        atomic_open(target, "w", overwrite=False) as fh,
    ):
        fh.write("ours")
        target.write_text("theirs")  # another process wins the name
    assert target.read_text() == "theirs" and sorted(tmp_path.iterdir()) == [target]
    atomic_write_text(target, "ours", overwrite=True)
    assert target.read_text() == "ours"
    source = tmp_path / "input.jpg"
    source.write_bytes(b"photo")
    with pytest.raises(UsageError, match="it is the input"):
        check_output(source, inputs=Inputs([source]), overwrite=True)
    with pytest.raises(UsageError, match="is a folder"):
        check_output(tmp_path, overwrite=True)
    atomic_write_text(tmp_path / "own.json", "{}")  # faceattr's own files: replaced by design
    atomic_write_text(tmp_path / "own.json", "[]")
    assert (tmp_path / "own.json").read_text() == "[]"


def test_every_command_checks_its_outputs_first(trained_run, synthetic_root, tmp_path):
    """report, export, ensemble, data stats: an existing output needs --overwrite, an input
    is refused always; both before any work (no training, export or report is run)."""
    taken = tmp_path / "taken"
    for suffix in (".html", ".onnx", ".safetensors", ".png"):
        taken.with_suffix(suffix).write_text("mine")
    config = trained_run / "config.json"
    before = config.read_bytes()
    cases = [
        (["report", trained_run, "--out", taken.with_suffix(".html")], "already exists"),
        (["report", trained_run, "--out", config, "--format", "html", "--overwrite"],
         "it is the input"),
        (["export", trained_run, "--out", taken.with_suffix(".onnx")], "already exists"),
        (["ensemble", trained_run, trained_run / "last.safetensors", "--out",
          taken.with_suffix(".safetensors")], "already exists"),
        (["ensemble", trained_run, trained_run / "last.safetensors", "--out",
          trained_run / "last.safetensors", "--overwrite"], "it is the input"),
        (["data", "stats", "celeba", "--root", synthetic_root, "--plot",
          taken.with_suffix(".png")], "already exists"),
    ]  # fmt: skip
    if not (trained_run / "last.safetensors").exists():
        cases = [c for c in cases if c[0][0] != "ensemble"]
    for args, expected in cases:
        r = invoke(*args)
        assert r.exit_code == 2 and expected in said(r), (args, r.output)
        assert "Traceback" not in r.output
        if expected == "already exists":
            assert "--overwrite" in said(r)
    assert config.read_bytes() == before
    assert all(taken.with_suffix(s).read_text() == "mine" for s in (".html", ".onnx", ".png"))
    weights = tmp_path / "weights"  # someone's folder with a model file: train keeps off it
    weights.mkdir()
    (weights / "model.safetensors").write_text("mine")
    r = invoke("train", "--root", synthetic_root, "--out", weights, "--epochs", "1")
    assert r.exit_code == 2 and "model.safetensors, which a new run would replace" in said(r)
    assert (weights / "model.safetensors").read_text() == "mine"
    plot_link = tmp_path / "plot.png"
    plot_link.symlink_to(synthetic_root / "list_attr_celeba.txt")
    r = invoke("data", "stats", "celeba", "--root", synthetic_root, "--plot", plot_link,
               "--overwrite")  # fmt: skip
    assert r.exit_code == 2 and "it is the input" in said(r)


# --- index: unreadable folders keep their entries, failed files are retried -----------------


def deny(monkeypatch, *denied: Path) -> None:
    """Listing or opening ``denied`` fails with EACCES, as chmod 000 does for a non-root user."""
    real_scandir, real_open = os.scandir, os.open
    names = {str(p) for p in denied}

    def scandir(path="."):
        if os.fspath(path) in names:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) in names:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)


def test_prune_keeps_the_entries_of_an_unreadable_folder(photos, tmp_path, monkeypatch):
    sub = photos / "sub"
    sub.mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", sub / "c.jpg")
    db = tmp_path / "lib.db"
    assert faceattr.index([photos], db=db)["images_in_index"] == 3
    deny(monkeypatch, sub)
    r = invoke("index", photos, "--db", db, "--prune", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["pruned"] == 0 and summary["images_in_index"] == 3
    assert summary["unreadable"] == [{"path": str(sub), "reason": "Permission denied"}]
    r = invoke("index", photos, "--db", db, "--prune")
    assert "Cannot read (its entries are kept):" in said(r) and str(sub) in said(r)
    monkeypatch.undo()
    (sub / "c.jpg").unlink()  # now it is gone for real, and the folder readable
    summary = faceattr.index([photos], db=db, prune=True)
    assert summary["pruned"] == 1 and summary["unreadable"] == []


def test_a_failed_file_is_retried_when_size_and_time_are_unchanged(tmp_path, monkeypatch):
    folder = tmp_path / "lib"
    folder.mkdir()
    image = folder / "a.jpg"
    shutil.copy(EXAMPLES / "astronaut.jpg", image)
    stamp = image.stat().st_mtime_ns
    deny(monkeypatch, image)  # unreadable (chmod 000): the size and time can still be read
    db = tmp_path / "lib.db"
    first = faceattr.index([folder], db=db)
    assert first["failed"] == 1 and "permission denied" in first["errors"][0]["error"]
    monkeypatch.undo()  # chmod 644: nothing about the file's size or time changed
    assert image.stat().st_mtime_ns == stamp
    again = faceattr.index([folder], db=db)
    assert again["failed"] == 0 and again["changed"] == 1 and again["faces"] >= 1
    assert faceattr.index([folder], db=db)["unchanged"] == 1  # and then settled


def test_a_corrupt_file_fixed_in_place_is_retried(tmp_path):
    """The same size and modification time, other (now valid) contents."""
    folder = tmp_path / "lib"
    folder.mkdir()
    good = (EXAMPLES / "astronaut.jpg").read_bytes()
    image = folder / "a.jpg"
    image.write_bytes(good[:200] + bytes(len(good) - 200))
    st = image.stat()
    db = tmp_path / "lib.db"
    assert faceattr.index([folder], db=db)["failed"] == 1
    image.write_bytes(good)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert faceattr.index([folder], db=db)["changed"] == 1


# --- hangs: only regular files are read -------------------------------------------------------


@pytest.fixture()
def hostile(photos) -> Path:
    """A folder of traps beside a real photo: FIFOs with and without an image name, links to
    /dev/zero, a socket, a loop of links, a broken link, a folder named like an image."""
    import socket

    os.mkfifo(photos / "x.jpg")
    os.mkfifo(photos / "noext")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    (photos / "zero").symlink_to("/dev/zero")
    (photos / "loop.jpg").symlink_to("loop.jpg")
    (photos / "dangling.jpg").symlink_to("nowhere.jpg")
    (photos / "dir.jpg").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(photos / "sock.jpg"))
    return photos


def test_index_passes_over_fifos_devices_and_sockets(hostile, tmp_path):
    r = run_cli("index", hostile, "--db", tmp_path / "lib.db", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["added"] == 2 and summary["failed"] == 0  # a.jpg, b.jpg
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert skipped["x.jpg"].startswith("a FIFO") and skipped["noext"].startswith("a FIFO")
    assert skipped["zero.jpg"].startswith("a character device")
    assert skipped["zero"].startswith("a character device")
    assert skipped["sock.jpg"].startswith("a socket")
    assert "dangling.jpg" in skipped and skipped["loop.jpg"] == "a loop of symbolic links"
    assert summary["unreadable"] == []


def test_predict_and_like_refuse_fifos_and_devices(hostile, tmp_path):
    r = run_cli("predict", hostile / "x.jpg", hostile / "zero.jpg", hostile / "a.jpg", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    results = {Path(x["image"]).name: x["error"] for x in json.loads(r.stdout)}
    assert "a FIFO (named pipe), not a regular file" in results["x.jpg"]
    assert "a character device" in results["zero.jpg"] and results["a.jpg"] is None
    r = run_cli("predict", hostile, "--json")  # a folder: the traps are passed over, said
    assert r.returncode == 0, r.stderr
    assert sorted(Path(x["image"]).name for x in json.loads(r.stdout)) == ["a.jpg", "b.jpg"]
    assert "Skipped" in r.stderr and "x.jpg: a FIFO" in " ".join(r.stderr.split())
    db = tmp_path / "lib.db"
    assert run_cli("index", hostile / "a.jpg", "--db", db).returncode == 0
    r = run_cli("search", "--like", hostile / "x.jpg", "--db", db)
    assert r.returncode == 2 and "a FIFO" in r.stderr


def test_hashing_and_decoding_refuse_before_opening(hostile):
    from faceattr.data.images import load_image, scan_images
    from faceattr.fileio import sha256_of
    from faceattr.reading import NotRegularFileError

    for name in ("x.jpg", "zero.jpg", "sock.jpg"):  # each would block or never end
        with pytest.raises(NotRegularFileError):
            sha256_of(hostile / name)
        with pytest.raises(ImageReadError, match="not a regular file"):
            load_image(hostile / name)
    found, skipped = scan_images(hostile)
    assert [p.name for p in found] == ["a.jpg", "b.jpg"]
    names = {p.name for p, _ in skipped}
    assert names == {"x.jpg", "zero.jpg", "sock.jpg", "dangling.jpg", "loop.jpg"}


# --- OS errors on an input are per-image errors ------------------------------------------------


def test_os_errors_on_inputs_are_per_image_errors(photos, tmp_path, monkeypatch):
    long_name = tmp_path / ("n" * 300 + ".jpg")  # ENAMETOOLONG
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")  # ELOOP
    (tmp_path / "d.jpg").mkdir()  # a folder where an image is expected
    inputs = [photos / "a.jpg", long_name, tmp_path / "loop.jpg", tmp_path / "missing.jpg",
              photos / "a.jpg" / "child.jpg", tmp_path / "nul\0.jpg", photos / "b.jpg"]  # fmt: skip
    deny(monkeypatch, photos / "b.jpg")
    results = faceattr.predict(inputs, no_detect=True, workers=2)
    errors = [r["error"] for r in results]
    assert errors[0] is None
    assert "file name too long" in errors[1]
    assert "too many levels of symbolic links" in errors[2]
    assert "does not exist" in errors[3] and "not a directory" in errors[4]
    assert "invalid" in errors[5] and "permission denied" in errors[6]
    from faceattr.data.images import load_image

    with pytest.raises(ImageReadError, match="a folder, not an image file"):
        load_image(tmp_path / "d.jpg")
    summary = faceattr.index([long_name, photos], db=tmp_path / "lib.db")
    assert [Path(u["path"]).name for u in summary["unreadable"]] == [long_name.name]
    assert summary["added"] == 1 and summary["failed"] == 1  # b.jpg: permission denied


def test_a_folder_that_cannot_be_read_fails_predict(photos, monkeypatch):
    deny(monkeypatch, photos)
    r = invoke("predict", photos, EXAMPLES / "astronaut.jpg", "--no-detect")
    assert r.exit_code == 1 and "a folder that cannot be read" in said(r)
    assert "1 folder(s) could not be read" in said(r)


# --- memory: the pipeline is bounded by decoded pixels -----------------------------------------


def test_pixel_budget_takes_turns_and_lets_a_large_image_go_alone():
    from faceattr.inference.predictor import PipelineStopped, PixelBudget

    budget = PixelBudget(10)
    assert budget.fits(0, 6) and not budget.fits(1, 1)  # not its turn yet
    budget.take(0, 6)
    assert not budget.fits(1, 6) and budget.fits(1, 4)  # 6 + 6 > 10
    budget.give_back(6)
    budget.take(1, 50)  # larger than the budget: alone
    assert not budget.fits(2, 1) and budget.peak == 50
    budget.give_back(50)
    budget.skip(3)  # failed before decoding, ahead of its turn
    budget.take(2, 1)
    assert budget.fits(4, 9) and not budget.fits(3, 1)  # 3's turn passed with 2's
    waiting = PixelBudget(1)
    stopped: list[BaseException] = []

    def wait_forever() -> None:
        try:
            waiting.take(7, 1)  # ticket 0 never comes: it waits until closed
        except PipelineStopped as exc:
            stopped.append(exc)

    thread = threading.Thread(target=wait_forever)
    thread.start()
    waiting.close()
    thread.join()
    assert len(stopped) == 1
    from faceattr.malloc import release_free_memory

    release_free_memory()  # after a very large photo: a no-op where there is no glibc


@pytest.mark.parametrize("draw", [False, True])
def test_pixels_in_flight_never_exceed_the_budget(tmp_path, draw):
    from faceattr.inference.predictor import PixelBudget, Predictor, iter_predictions

    sizes = [(64, 64), (48, 80), (64, 40), (30, 30)] * 6
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"{i:02d}.jpg")
        Image.new("RGB", size, (i * 9, 90, 160)).save(paths[-1])
    paths.insert(5, tmp_path / "missing.jpg")  # fails before it takes pixels: its turn passes
    budget = PixelBudget(3 * 64 * 64)
    drawn: list[str] = []
    results = list(iter_predictions(
        paths, Predictor(batch_size=4), workers=4, budget=budget,
        on_image=(lambda r, image, crops: drawn.append(r.image)) if draw else None,
    ))  # fmt: skip
    assert [r.image for r in results] == [str(p) for p in paths]
    assert sum(bool(r.error) for r in results) == 1
    assert 64 * 64 <= budget.peak <= budget.limit and budget.in_flight == 0
    alone = PixelBudget(100)  # every image is larger: each goes alone, and all go
    assert len(list(iter_predictions(paths[:8], Predictor(), workers=3, budget=alone))) == 8
    assert alone.peak == max(w * h for w, h in sizes[:8])


def test_leaving_the_pipeline_early_releases_waiting_workers(tmp_path):
    from faceattr.inference.predictor import PixelBudget, Predictor, iter_predictions

    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(paths[-1])
    budget = PixelBudget(40 * 40)
    results = iter_predictions(paths, Predictor(batch_size=2), workers=3, budget=budget)
    assert next(results).error is None
    results.close()  # the pool shuts down: no worker is left waiting for pixels


# --- archives are bounded by what they unpack to -----------------------------------------------


@pytest.fixture()
def small_limits(monkeypatch):
    from faceattr.data import archives

    monkeypatch.setattr(archives, "UNPACK_FLOOR", 1 << 20)
    monkeypatch.setattr(archives, "UNPACK_MAX_FILES", 20)


def _bomb_bytes() -> bytes:
    return bytes(4 << 20)  # 4 MB of zeros: a few KB compressed, 1000x


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"])
def test_decompression_bombs_are_refused(tmp_path, small_limits, kind):
    from faceattr.data.archives import ArchiveError, extract_archive
    from faceattr.progress import NullProgress

    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("img/0.jpg", _bomb_bytes())
    else:
        mode = "w" if kind == "tar" else f"w:{kind.split('.')[1]}"
        with tarfile.open(archive, mode) as tf:
            info = tarfile.TarInfo("img/0.jpg")
            info.size = len(_bomb_bytes())
            tf.addfile(info, io.BytesIO(_bomb_bytes()))
    if kind == "tar":  # an uncompressed tar is its own size: within 100x, as a dataset's
        assert extract_archive(archive, tmp_path / "out", NullProgress()) == 1
        return
    with pytest.raises(ArchiveError, match="unpacks to more than") as caught:
        extract_archive(archive, tmp_path / "out", NullProgress())
    assert "decompression bomb" in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing kept


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_with_too_many_files_are_refused(tmp_path, small_limits, kind):
    from faceattr.data.archives import ArchiveError, extract_archive
    from faceattr.progress import NullProgress

    archive = tmp_path / f"many.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(21):
                zf.writestr(f"{i}.txt", "x")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for i in range(21):
                info = tarfile.TarInfo(f"{i}.txt")
                info.size = 1
                tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchiveError, match="more than 20 files"):
        extract_archive(archive, tmp_path / "out", NullProgress())
    assert not (tmp_path / "out").exists()
