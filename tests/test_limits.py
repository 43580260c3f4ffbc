"""Numbers outside their range, or not finite, are usage errors (exit 2) in every command and
in the library, from one table of ranges (config.LIMITS / NUMBER_LIMITS)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.config import (
    LIMITS,
    NUMBER_LIMITS,
    Limit,
    TrainConfig,
    build_config,
    check_limits,
    field_default,
)
from faceattr.errors import UsageError

runner = CliRunner()
PHOTO = Path(__file__).parents[1] / "examples" / "astronaut.jpg"


@pytest.mark.parametrize(
    "args, option",
    [
        (["predict", PHOTO, "--threshold", "1.5"], "--threshold"),
        (["predict", PHOTO, "--threshold", "nan"], "--threshold"),
        (["predict", PHOTO, "--threshold", "-1"], "--threshold"),
        (["predict", PHOTO, "--min-score", "2"], "--min-score"),
        (["eval", "default", "--root", ".", "--threshold", "inf"], "--threshold"),
        (["eval", "default", "--root", ".", "--fail-under", "90"], "--fail-under"),
        (["train", "--root", ".", "--lr", "-1"], "--lr"),
        (["train", "--root", ".", "--lr", "nan"], "--lr"),
        (["train", "--root", ".", "--weight-decay", "-1"], "--weight-decay"),
        (["train", "--root", ".", "--erasing", "3"], "--erasing"),
        (["train", "--root", ".", "--rotation", "-400"], "--rotation"),
        (["train", "--root", ".", "--dropout", "1"], "--dropout"),
        (["train", "--root", ".", "--ema", "1.5"], "--ema"),
        (["export", "default", "--out", "x.onnx", "--max-accuracy-drop", "nan"],
         "--max-accuracy-drop"),
        (["train", "--root", ".", "--epochs", "0"], "--epochs"),
        (["train", "--root", ".", "--img-size", "8"], "--img-size"),
        (["data", "prepare", "celeba", "--root", ".", "--img-size", "8"], "--img-size"),
        (["finetune", "missing-run", "--batch-size", "0"], "--batch-size"),
        (["eval", "default", "--root", ".", "--batch-size", "0"], "--batch-size"),
        (["data", "stats", "celeba", "--root", ".", "--top", "0"], "--top"),
        (["tune", "--trials", "0"], "--trials"),
        (["tune", "--root", ".", "--epochs", "0", "--param", "lr=0.1,0.2", "--study-dir", "s"],
         "--epochs"),
    ],
)  # fmt: skip
def test_out_of_range_numbers_are_usage_errors(args, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    # One check for every command, before it runs: "Error: --lr must be in (0, 10], got nan."
    assert f"Error: {option} must be" in text and "Traceback" not in text


def test_library_checks_the_same_ranges():
    with pytest.raises(UsageError, match=r"optim.lr must be in \(0, 10\], got nan"):
        build_config({"optim.lr": float("nan")})
    with pytest.raises(UsageError, match="augment.rotation"):
        build_config({"augment.rotation": -400.0})
    from faceattr.inference.predictor import Predictor

    with pytest.raises(UsageError, match="threshold must be in"):
        Predictor("default", threshold=1.5)


def test_every_limit_names_a_setting_and_admits_its_default():
    check_limits(TrainConfig())  # every default is inside its own range
    for key in LIMITS:
        field_default(key)  # a KeyError names a field that does not exist


def test_limit_edges():
    open_low = Limit(0, 1, low_open=True)
    assert not open_low.allows(0) and open_low.allows(1) and open_low.allows(0.5)
    assert not Limit().allows(math.inf) and not Limit().allows(math.nan)
    assert NUMBER_LIMITS["threshold"].allows(0) and NUMBER_LIMITS["threshold"].allows(1)
