"""Work is never lost or clobbered: run-directory locks, stale temp files, resume from what is
on disk, full disks, Ctrl-C, and kill -9 at random moments."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import InterruptAfterEpoch, small_train_config
from faceattr.cli.app import app
from faceattr.engine.fit import fit, resume
from faceattr.errors import Interrupted
from faceattr.fileio import LockedError, WriteError, atomic_open, hold_lock
from faceattr.runs import BEST_FILE, HISTORY_FILE, LAST_FILE, LOCK_FILE, STATE_FILE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- locks ---------------------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "run"
    with hold_lock(out, LOCK_FILE, what="run directory"):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(LockedError, match=f"in use by process {os.getpid()}"):
            fit(small_train_config(synthetic_root, out, epochs=1))
        r = invoke("train", "--root", synthetic_root, "--arch", "celebnet", "--epochs", "1",
                   "--out", out)  # fmt: skip
        assert r.exit_code == 1 and "is in use by process" in said(r)
        assert "Traceback" not in r.output and not (out / "config.json").exists()
    assert not out.exists()  # the lock's folder was empty: it goes with the lock


def test_a_stale_lock_is_taken_over_with_a_note(synthetic_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "elsewhere"}))
    notes: list[str] = []

    class Notes(InterruptAfterEpoch):
        def log(self, message: str) -> None:
            notes.append(message)

    result = fit(small_train_config(synthetic_root, out, epochs=1), progress=Notes(epoch=99))
    assert result.epochs_done == 1
    assert any(f"from process {pid} on elsewhere" in n for n in notes), notes
    assert not (out / LOCK_FILE).exists()  # released at the end


# --- resume from what is on disk -----------------------------------------------------------


def test_kill_between_state_and_model_files_resumes_exactly(synthetic_root, tmp_path, monkeypatch):
    """train_state.pt is written first: a run killed before the epoch's model files gets them
    rewritten on resume, stale temp files are removed, and the result is bit-identical."""
    from faceattr.runs import RunDir

    cfg = small_train_config(synthetic_root, tmp_path / "full")
    fit(cfg)
    cut = replace(cfg, out=str(tmp_path / "cut"))
    real_save = RunDir.save_model
    calls = {"n": 0}

    def dies_in_epoch_2(run, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1: best + last; epoch 2: its state is on disk already
            raise KeyboardInterrupt
        return real_save(run, path, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save_model", dies_in_epoch_2)
    with pytest.raises(Interrupted, match="Epochs 1-2 are saved"):
        fit(cut)
    monkeypatch.setattr(RunDir, "save_model", real_save)
    run = Path(cut.out)
    assert torch.load(run / STATE_FILE, weights_only=True)["epoch"] == 2
    stale = run / f".{STATE_FILE}.k1ll3d.tmp"
    stale.write_bytes(b"x" * 1000)  # what a kill during a save leaves
    notes: list[str] = []

    class Notes(InterruptAfterEpoch):
        def log(self, message: str) -> None:
            notes.append(message)

    resume(cut.out, progress=Notes(epoch=99))
    assert not stale.exists()
    assert any("Removed 1 temp file" in n for n in notes), notes
    [line] = [n for n in notes if n.startswith("Resuming")]
    assert "after epoch 2 of 3" in line and LAST_FILE in line and HISTORY_FILE in line
    for name in (BEST_FILE, LAST_FILE):
        assert_same_weights(run / name, Path(cfg.out) / name)
    assert _history(run) == _history(Path(cfg.out))


def _history(run: Path) -> list[dict[str, str]]:
    """history.csv without its timings."""
    import csv

    with open(run / HISTORY_FILE, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
                for row in csv.DictReader(fh)]  # fmt: skip


def test_resume_before_the_first_epoch_says_so(synthetic_root, tmp_path):
    cfg = small_train_config(synthetic_root, tmp_path / "run", epochs=1)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, progress=_RaiseOnStart())
    assert (Path(cfg.out) / "config.json").exists() and not (Path(cfg.out) / STATE_FILE).exists()
    notes: list[str] = []

    class Notes(InterruptAfterEpoch):
        def log(self, message: str) -> None:
            notes.append(message)

    assert resume(cfg.out, progress=Notes(epoch=99)).epochs_done == 1
    assert any("no epoch was finished yet, starting at epoch 1" in n for n in notes), notes


class _RaiseOnStart(InterruptAfterEpoch):
    """Ctrl-C as the first epoch starts."""

    def __init__(self) -> None:
        super().__init__(epoch=99)

    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        if description.startswith("epoch"):
            raise KeyboardInterrupt


def test_ctrl_c_says_how_to_resume(synthetic_root, tmp_path, monkeypatch):
    import faceattr.engine.fit as fit_module

    real = fit_module.run_epoch

    def ctrl_c_in_epoch_2(t, state, epoch, progress, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(t, state, epoch, progress, **kwargs)

    monkeypatch.setattr(fit_module, "run_epoch", ctrl_c_in_epoch_2)
    out = tmp_path / "run"
    r = invoke("train", "--root", synthetic_root, "--arch", "celebnet", "--img-size", "40",
               "--epochs", "3", "--workers", "0", "--out", out)  # fmt: skip
    assert r.exit_code == 130
    assert "Interrupted." in r.output and f"faceattr train --resume {out}" in said(r)
    assert "Epoch 1 is saved" in said(r)


# --- full disks ------------------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_a_checkpoint_keeps_the_last_one(synthetic_root, tmp_path, monkeypatch):
    from faceattr.runs import RunDir

    cfg = small_train_config(synthetic_root, tmp_path / "run", epochs=3)
    real = RunDir.save_state
    calls = {"n": 0}

    def full_in_epoch_2(run, state):
        calls["n"] += 1
        if calls["n"] == 2:
            with atomic_open(run.state_file, "wb", what="resume state") as fh:
                _enospc(fh)
        return real(run, state)

    monkeypatch.setattr(RunDir, "save_state", full_in_epoch_2)
    with pytest.raises(WriteError) as caught:
        fit(cfg)
    text = str(caught.value)
    assert "the disk is full" in text and "free in" in text
    assert "last complete checkpoint (epoch 1) is intact" in text and "--resume" in text
    run = Path(cfg.out)
    assert torch.load(run / STATE_FILE, weights_only=True)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp files
    monkeypatch.setattr(RunDir, "save_state", real)
    assert resume(cfg.out).epochs_done == 3


def test_not_enough_space_for_checkpoints_is_refused_before_training(
    synthetic_root, tmp_path, monkeypatch
):
    import faceattr.fileio as fileio

    monkeypatch.setattr(fileio, "free_bytes", lambda folder: 1000)
    r = invoke("train", "--root", synthetic_root, "--arch", "celebnet", "--epochs", "1",
               "--workers", "0", "--out", tmp_path / "run")  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "Not enough free space" in said(r) and "1.0 KB free" in said(r)
    assert not (tmp_path / "run" / STATE_FILE).exists()


def test_predict_csv_on_a_full_disk_keeps_a_partial_file(tmp_path, monkeypatch):
    import faceattr.fileio as fileio

    real_write = fileio._CheckedFile.write
    written = {"rows": 0}

    def fills_up(self, data):
        written["rows"] += 1
        if written["rows"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(fileio._CheckedFile, "write", fills_up)
    photo = EXAMPLES / "astronaut.jpg"
    out = tmp_path / "out.csv"
    r = invoke("predict", *[photo] * 6, "--csv", out)
    assert r.exit_code == 1, r.output
    assert "disk is full" in said(r) and f"{out}.partial" in said(r)
    assert "Traceback" not in r.output and not out.exists()
    rows = (tmp_path / "out.csv.partial").read_text().splitlines()
    assert rows[0].startswith("image,face") and len(rows) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _tiny_disk() -> bool:
    """Whether this machine lets a user mount a small tmpfs in a user namespace."""
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k t /mnt"],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


@pytest.mark.skipif(not _tiny_disk(), reason="cannot mount a small tmpfs (unshare -rm)")
def test_a_really_full_disk(synthetic_root, tmp_path):
    """On a real 32 KB file system: predict --csv keeps a partial file, train refuses."""
    faceattr = str(Path(sys.executable).with_name("faceattr"))
    report = tmp_path / "report"
    photos = " ".join([str(EXAMPLES / "astronaut.jpg")] * 200)  # ~290 bytes a row
    script = f"""
    mount -t tmpfs -o size=32k tiny /mnt || exit 99
    {faceattr} predict {photos} --no-detect --csv /mnt/out.csv > {report}.predict 2>&1
    echo "rc=$?" >> {report}.predict
    wc -l < /mnt/out.csv.partial > {report}.rows
    ls -a /mnt > {report}.files
    {faceattr} train --root {synthetic_root} --arch celebnet --epochs 1 --workers 0 \\
        --out /mnt/run > {report}.full 2>&1
    echo "rc=$?" >> {report}.full
    rm /mnt/out.csv.partial
    {faceattr} train --root {synthetic_root} --arch celebnet --epochs 1 --workers 0 \\
        --out /mnt/run > {report}.train 2>&1
    echo "rc=$?" >> {report}.train
    ls -a /mnt > {report}.after
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=300)
    predicted = " ".join(Path(f"{report}.predict").read_text().split())
    assert "rc=1" in predicted and "the disk is full" in predicted, predicted
    assert "Traceback" not in predicted
    assert int(Path(f"{report}.rows").read_text()) > 10  # the rows made before the disk filled
    assert Path(f"{report}.files").read_text().split() == [".", "..", "out.csv.partial"]
    full = " ".join(Path(f"{report}.full").read_text().split())  # the partial file filled it
    assert "rc=1" in full and "the disk is full (0 bytes free in /mnt/run)" in full, full
    trained = " ".join(Path(f"{report}.train").read_text().split())
    assert "rc=1" in trained and "Not enough free space in /mnt/run" in trained, trained
    assert "Traceback" not in full + trained
    assert Path(f"{report}.after").read_text().split() == [".", ".."]  # nothing left behind


# --- kill -9 at random moments ---------------------------------------------------------------


def _train_cmd(root: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("faceattr")), "train", "--root", str(root),
            "--arch", "celebnet", "--img-size", "40", "--num-features", "64", "--epochs", "3",
            "--batch-size", "32", "--no-hflip", "--workers", "0", "--out", str(out)]  # fmt: skip


def _folder_state(folder: Path) -> frozenset[tuple[str, int, int]]:
    """What is in ``folder`` now: each entry's name, size and modification time."""
    found = set()
    for p in folder.iterdir() if folder.exists() else ():
        with contextlib.suppress(OSError):  # a temp file renamed between listing and stat
            st = p.stat()
            found.add((p.name, st.st_size, st.st_mtime_ns))
    return frozenset(found)


def _kill_after_changes(proc: subprocess.Popen, folder: Path, changes: int) -> bool:
    """SIGKILL ``proc`` once ``folder`` has been seen to change ``changes`` times (a file or a
    temp file appearing, growing, replaced): moments chosen by what the run does, not by the
    clock, so a slow machine kills at the same points. Whether it was killed (not finished)."""
    seen, before = 0, _folder_state(folder)
    while proc.poll() is None:
        now = _folder_state(folder)
        if now != before:
            seen, before = seen + 1, now
            if seen >= changes:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_chaos_kill_9_at_random_moments_then_resume_is_bit_identical(synthetic_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_train_cmd(synthetic_root, full), env=env, check=True, capture_output=True)
    cut = tmp_path / "cut"
    rng = random.Random(13)
    kills = 0
    for _ in range(3):
        cmd = _train_cmd(synthetic_root, cut)
        if (cut / "config.json").exists():
            cmd = cmd[:2] + ["--resume", str(cut)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        # Three epochs make about 25 changes; three kills after at most 5 each leave work.
        kills += _kill_after_changes(proc, cut, rng.randint(2, 5))
    assert kills == 3
    done = subprocess.run(_train_cmd(synthetic_root, cut)[:2] + ["--resume", str(cut)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in (BEST_FILE, LAST_FILE):
        assert_same_weights(cut / name, full / name)
    assert not [p.name for p in cut.iterdir() if p.name.startswith(".")]
    assert not (cut / LOCK_FILE).exists()
