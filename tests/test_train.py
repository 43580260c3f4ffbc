"""Training end to end on synthetic data: it learns, it resumes exactly, it writes a run dir."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from conftest import InterruptAfterEpoch
from conftest import small_train_config as small_config
from faceattr.config import AugmentConfig, DataConfig
from faceattr.engine.fit import fit, resume
from faceattr.errors import UsageError


def test_training_learns_synthetic_and_writes_run_dir(synthetic_root, tmp_path):
    result = fit(small_config(synthetic_root, tmp_path / "run", epochs=5))
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "last.safetensors", "train_state.pt",
                 "history.csv", "metrics-valid.json"):  # fmt: skip
        assert (run / name).exists(), name
    assert not list(run.glob("*.tmp")), "temporary files left behind"
    m = result.metrics
    # Learns: at 0.5, clearly above always predicting each attribute's majority class
    # (the synthetic validation identities are never seen in training).
    assert m["at_threshold_0.5"]["mean_accuracy"] > m["majority_accuracy"] + 0.05, m
    # The thresholds in the model file follow the policy recorded beside them: tuned for
    # accuracy where that beat 0.5 under cross-validation, 0.5 elsewhere; so the (in-sample)
    # accuracy is never below 0.5's.
    with safe_open(run / "model.safetensors", "pt") as f:
        info = json.loads(f.metadata()["faceattr"])
    assert len(info["thresholds"]) == 40 and info["arch"] == "celebnet"
    policy = info["extra"]["threshold_policy"]
    assert policy["policy"] == "cross-validated" and policy["metric"] == "accuracy"
    assert policy["folds_by"] == "identity"  # the synthetic set has identities
    tuned = {a for a, t in zip(info["attributes"], info["thresholds"], strict=True) if t != 0.5}
    assert tuned == set(policy["tuned"])
    assert m["mean_accuracy"] >= m["at_threshold_0.5"]["mean_accuracy"]
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,lr_min,lr_max,train_loss") and len(history) == 6


def test_resume_after_interrupt_matches_uninterrupted(synthetic_root, tmp_path):
    cfg = small_config(
        synthetic_root,
        tmp_path / "full",
        data=DataConfig(root=str(synthetic_root), img_size=32, workers=0, sample=200),
        augment=AugmentConfig(hflip=True, brightness=0.2, erasing=0.3),
    )
    fit(cfg)

    interrupted = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, progress=InterruptAfterEpoch(2))
    resumed = resume(tmp_path / "cut")
    assert resumed.epochs_done == 3
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # A finished run is not retrained.
    again = resume(tmp_path / "cut")
    assert again.already_finished


def test_existing_run_dir_is_not_overwritten(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path / "run", epochs=1,
                       data=DataConfig(root=str(synthetic_root), img_size=32, workers=0,
                                       sample=64))  # fmt: skip
    fit(cfg)
    with pytest.raises(UsageError, match="--resume"):
        fit(cfg)


def test_resume_of_a_non_run_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        resume(tmp_path)


@pytest.mark.slow
def test_the_demo_set_learns_under_the_default_settings(tmp_path):
    """`faceattr data fetch synthetic`, then `faceattr train --arch celebnet --epochs 3`
    with the default augmentation (flips included), optimizer and schedule: a clear lift over
    the majority baseline. 64 px keeps the test short; at the default 128 px the same
    command measured 87.3% against a 80.7% baseline (docs/datasets.md)."""
    from typer.testing import CliRunner

    from faceattr.cli.app import app

    runner = CliRunner()
    fetched = runner.invoke(app, ["data", "fetch", "synthetic", "--root", str(tmp_path / "d"),
                                  "--json"])  # fmt: skip
    assert fetched.exit_code == 0, fetched.output
    summary = json.loads(fetched.stdout)
    assert summary["splits"] == {"train": 2000, "valid": 300, "test": 300}
    r = runner.invoke(app, ["train", "--root", summary["root"], "--arch", "celebnet",
                            "--epochs", "3", "--img-size", "64", "--out", str(tmp_path / "run"),
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["augment"]["hflip"] is True  # the defaults flip
    m = json.loads((tmp_path / "run" / "metrics-valid.json").read_text())
    lift = m["at_threshold_0.5"]["mean_accuracy"] - m["majority_accuracy"]
    assert lift > 0.07, (lift, m["majority_accuracy"])
