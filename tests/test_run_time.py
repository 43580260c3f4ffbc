"""What training says about time: the device line, the whole run's estimate with faster
choices when it is long, and plain progress lines with an ETA when stderr is no terminal.
Clocks are fakes: nothing here sleeps or depends on the machine's speed."""

from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest
import torch

from conftest import small_train_config
from faceattr.config import build_config
from faceattr.engine import estimate as est
from faceattr.progress import PlainLines, Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_people_write_them():
    assert format_duration(0.4) == "0 s" and format_duration(45) == "45 s"
    assert format_duration(245) == "4 min 05 s" and format_duration(4200) == "1 h 10 min"
    assert format_duration(38 * 3600 + 15 * 60) == "38 h 15 min"
    assert format_duration(5 * 86400 + 3 * 3600 + 59) == "5 d 3 h"


def test_plain_lines_come_at_a_steady_interval_with_an_eta():
    clock, lines = FakeClock(), []
    plain = PlainLines(lines.append, describe=lambda i: f"loss {i['loss']:.2f}", interval=30,
                       clock=clock)  # fmt: skip
    plain.start("epoch 1/10", total=1000)
    for _ in range(9):  # 9 steps of 10 images, 3 s each: 27 s, no line yet
        clock.now += 3
        plain.advance(10, loss=0.5)
    assert lines == []
    clock.now += 3
    plain.advance(10, loss=0.25)  # 30 s, 100 of 1000 images: 270 s to go
    assert lines == ["epoch 1/10: 10% (100/1,000)  loss 0.25  elapsed 30 s  eta 4 min 30 s"]
    clock.now += 29
    plain.advance(10, loss=0.25)
    assert len(lines) == 1  # 29 s after the last line
    clock.now += 1
    plain.advance(10, loss=0.25)  # 60 s, 120 images: 440 s to go
    assert lines[-1].endswith("elapsed 1 min 00 s  eta 7 min 20 s") and len(lines) == 2
    clock.now += 5
    plain.finish()
    assert lines[-1] == "epoch 1/10: 12% (120/1,000)  loss 0.25  done in 1 min 05 s"
    plain.finish()  # nothing runs: nothing more
    plain.advance(5)
    assert len(lines) == 3


def test_a_short_task_says_only_its_end():
    clock, lines = FakeClock(), []
    plain = PlainLines(lines.append, clock=clock)
    plain.start("validating", total=150)
    clock.now += 2
    plain.advance(150)
    plain.start("next", total=None)  # starting another ends the first
    assert lines == ["validating: 100% (150/150)  done in 2 s"]
    plain.finish()  # nothing done in "next": no line
    assert len(lines) == 1


def test_rich_progress_without_a_terminal_prints_eta_lines(monkeypatch):
    from rich.console import Console

    from faceattr.cli import common

    console = Console(file=io.StringIO(), force_terminal=False, width=60, color_system=None)
    monkeypatch.setattr(common, "err", console)
    clock = FakeClock()
    progress = common.RichProgress(clock=clock)
    progress.start("epoch 2/10", total=64_000)
    for _ in range(40):
        clock.now += 1.0
        progress.advance(64, loss=0.3, acc=0.9, ips=64.0)
    progress.finish()
    said = console.file.getvalue().splitlines()
    assert len(said) == 2, said  # one at 30 s, one at the end; never wrapped at 60 columns
    assert said[0].startswith("epoch 2/10: 3% (1,920/64,000)  loss 0.3000  acc 0.9000")
    assert said[0].endswith("64 img/s  elapsed 30 s  eta 16 min 10 s")  # 62,080 at 64/s
    assert said[1].endswith("done in 40 s")


def test_the_epoch_line_says_the_time_left():
    from faceattr.cli.common import _time_left
    from faceattr.progress import EpochEnd

    row = {"seconds": 4200.0}
    assert _time_left(EpochEnd(3, 10, row, False)) == (
        "  (about 8 h 10 min left for 7 more epoch(s))"
    )
    assert _time_left(EpochEnd(10, 10, row, False)) == ""


def _estimate(clock, **changes):
    cfg = build_config({"data.root": "/data/celeba", "model.arch": "densenet121",
                        "epochs": 10, **changes})  # fmt: skip
    shape = est.RunShape(train_images=26_560, valid_images=2_950, epochs=10)
    return est.RunEstimate(cfg, torch.device("cpu"), shape, cached=False, clock=clock)


def test_a_long_run_says_its_estimate_and_the_faster_choices_once_measured():
    from faceattr.cli.common import as_flags

    clock = FakeClock()
    run = _estimate(clock)
    said = []
    for _ in range(1 + est.MIN_STEPS):  # the warm-up step, then 3 measured
        clock.now += 32.0  # 64 images in 32 s: 2 img/s
        said.append(run.step(64))
    assert said[:-1] == [None] * est.MIN_STEPS  # 64 s measured: after the 3rd, not before
    message = said[-1]
    assert message is not None
    # 10 x (26,560 + 2,950 / 3) images at 2 img/s
    assert format_duration(10 * (26_560 + 2_950 / 3) / 2) in message
    assert message.startswith("At 2.0 img/s on the CPU, this run takes about 38 h 15 min")
    flags = as_flags(message)
    for choice in ("`--img-size 96`", "`faceattr data prepare celeba --root /data/celeba "
                   "--img-size 128`", "`--arch mobilenet_v2`", "`--device cuda`"):  # fmt: skip
        assert choice in flags, flags
    clock.now += 32
    assert run.step(64) is None and run.finish(64 * 830, 26_000) is None  # said once


def test_a_short_run_or_one_already_fast_says_nothing_more():
    clock = FakeClock()
    run = _estimate(clock)
    said = []
    for _ in range(1 + est.MEASURE_STEPS):
        clock.now += 0.1  # 640 img/s: 8 min
        said.append(run.step(64))
    assert said == [None] * (1 + est.MEASURE_STEPS) and run.done
    # the choices that would change nothing are left out
    light = _estimate(clock, **{"data.img_size": 32, "model.arch": "celebnet",
                                "data.cache": "off"})  # fmt: skip
    assert light.faster_choices() == ["a GPU (`device=cuda`)"]


def test_an_epoch_of_few_steps_is_measured_at_its_end():
    clock = FakeClock()
    run = _estimate(clock)
    clock.now += 40
    assert run.step(64) is None  # the only step: warm-up
    message = run.finish(64, 40.0)  # 1.6 img/s over the whole epoch
    assert message is not None and message.startswith("At 1.6 img/s")


def test_the_device_line_names_the_cpu_and_its_threads():
    line = est.device_line(torch.device("cpu"))
    assert re.fullmatch(r"Training on the CPU \(\d+ cores, \d+ torch threads\)\.", line), line
    assert est.device_line(torch.device("cpu"), 2).endswith(", one of 2 processes.")


def test_the_device_line_names_the_gpu(monkeypatch):
    from types import SimpleNamespace

    props = SimpleNamespace(name="NVIDIA H200", total_memory=140 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert est.device_line(torch.device("cuda", 0)) == "Training on cuda:0 (NVIDIA H200, 140 GiB)."
    assert est.device_line(torch.device("cuda")).startswith("Training on cuda:1 (")


class Logs(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_training_says_its_device_first_and_its_estimate_when_long(
    synthetic_root, tmp_path, monkeypatch
):
    from faceattr.engine.fit import fit

    monkeypatch.setattr(est, "LONG_RUN_SECONDS", 0.0)  # every run is "long" here
    progress = Logs()
    cfg = small_train_config(synthetic_root, tmp_path / "run", epochs=1)
    fit(replace(cfg, data=replace(cfg.data, sample=200)), progress=progress)
    assert progress.lines[0].startswith("Training on the CPU (")
    estimates = [line for line in progress.lines if " img/s on the CPU, this run takes" in line]
    assert len(estimates) == 1, progress.lines
    assert "for its 1 epoch(s)" in estimates[0] and "`device=cuda`" in estimates[0]
    monkeypatch.setattr(est, "LONG_RUN_SECONDS", float("inf"))  # nothing is long
    quiet = Logs()
    fit(replace(cfg, out=str(tmp_path / "run2"), data=replace(cfg.data, sample=200)),
        progress=quiet)  # fmt: skip
    assert not [line for line in quiet.lines if "this run takes" in line]


@pytest.mark.parametrize("columns", [80, 100])
def test_help_never_cuts_an_option_name(columns):
    from typer.testing import CliRunner

    from faceattr.cli.app import app

    for command in ("train", "finetune", "tune", "eval", "predict"):
        text = CliRunner().invoke(app, [command, "--help"], terminal_width=columns).output
        names = re.findall(r"--[a-z][a-z0-9-]*…?", text)
        assert names and not [n for n in names if n.endswith("…")], (command, names)
        assert "…" not in text, command
        assert max(len(line) for line in text.splitlines()) <= columns
