"""Weight EMA during training and flip test-time augmentation stored in the model file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from conftest import InterruptAfterEpoch, small_train_config
from faceattr.config import AugmentConfig, DataConfig
from faceattr.engine.ema import ModelEma
from faceattr.engine.fit import fit, resume
from faceattr.errors import ModelError
from faceattr.models import ModelInfo, create_model, load_model_file, save_model_file

ATTRS = ["Male", "Smiling", "Young"]


def test_ema_tracks_the_average_of_recent_weights():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = ModelEma(model, decay=0.5)
    ema.updates = 100  # past the warm-up, the decay is exactly 0.5
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), 0.5))
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), 0.75))
    # Buffers are copied, not averaged; the copy never trains.
    assert torch.equal(ema.module[1].running_mean, torch.tensor([3.0]))
    assert not any(p.requires_grad for p in ema.module.parameters())
    # Early updates use a smaller decay so the average forgets the initial weights fast.
    fresh = ModelEma(model, decay=0.999)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    fresh.update(model)
    # decay (1 + 1) / (4 + 1) = 0.4 on the first update: 0.4 * 1 + 0.6 * 2
    assert torch.allclose(fresh.module[0].weight, torch.full((1, 2), 1.6))


def test_ema_rejects_a_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ModelEma(torch.nn.Linear(2, 1), decay=1.0)


def test_training_with_ema_saves_the_average_and_resumes_exactly(synthetic_root, tmp_path):
    cfg = small_train_config(
        synthetic_root,
        tmp_path / "full",
        data=DataConfig(root=str(synthetic_root), img_size=32, workers=0, sample=200),
        augment=AugmentConfig(hflip=False, brightness=0.2),
        ema=0.9,
    )
    fit(cfg)
    state = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    assert state["ema"]["updates"] == 3 * (200 // 32)
    # The saved model is the EMA, which differs from the raw weights.
    last, _ = load_model_file(tmp_path / "full" / "last.safetensors")
    ema_w = state["ema"]["model"]
    for key, value in last.state_dict().items():
        assert torch.equal(value, ema_w[key]), key
    assert any(not torch.equal(ema_w[k], v) for k, v in state["model"].items())

    cut = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        fit(cut, progress=InterruptAfterEpoch(1))
    resume(cut.out)
    resumed = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)
    assert resumed["ema"]["updates"] == state["ema"]["updates"]
    for key, value in ema_w.items():
        assert torch.equal(resumed["ema"]["model"][key], value), key


def _model(tta="none"):
    torch.manual_seed(0)
    model = create_model("celebnet", len(ATTRS), num_features=16).eval()
    model.tta = tta
    return model


def test_flip_tta_averages_the_image_and_its_mirror():
    x = torch.randn(4, 3, 48, 48)
    plain, flip = _model(), _model("flip")
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        got = flip(x)
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got, plain(x), atol=1e-4)  # it does change the output
        # A mirror-symmetric input gives the same logits either way.
        sym = torch.cat([x[..., :24], x[..., :24].flip(-1)], dim=-1)
        assert torch.allclose(flip(sym), plain(sym), atol=1e-5)
        with flip.no_tta():
            assert torch.allclose(flip(x), plain(x))
        assert flip.tta == "flip"
    # Training mode never applies it (the batch statistics would see the mirrors).
    flip.train()
    assert flip(x).shape == (4, len(ATTRS))


def test_tta_is_stored_in_the_model_file(tmp_path):
    info = ModelInfo(arch="celebnet", attributes=ATTRS, num_features=16, img_size=48, tta="flip")
    path = save_model_file(tmp_path / "m.safetensors", _model("flip"), info)
    loaded, info2 = load_model_file(path)
    assert info2.tta == "flip" and loaded.tta == "flip"
    bad = ModelInfo(arch="celebnet", attributes=ATTRS, num_features=16, tta="rotate")
    with pytest.raises(ModelError, match="tta"):
        save_model_file(tmp_path / "bad.safetensors", _model(), bad)


def test_train_with_tta_writes_it_and_eval_can_override(synthetic_root, tmp_path):
    from faceattr.engine.evaluate import evaluate_model

    cfg = small_train_config(
        synthetic_root,
        tmp_path / "run",
        data=DataConfig(root=str(synthetic_root), img_size=32, workers=0, sample=64),
        epochs=1,
        tta="flip",
    )
    fit(cfg)
    with safe_open(tmp_path / "run" / "model.safetensors", "pt") as f:
        assert json.loads(f.metadata()["faceattr"])["tta"] == "flip"
    data = DataConfig(root=str(synthetic_root), workers=0)
    with_flip = evaluate_model(tmp_path / "run", data, "valid", save=False)
    without = evaluate_model(tmp_path / "run", data, "valid", tta="none", save=False)
    assert with_flip.tta == "flip" and without.tta == "none"
    assert with_flip.metrics["mean_accuracy"] != without.metrics["mean_accuracy"] or (
        with_flip.metrics["per_attribute"] != without.metrics["per_attribute"]
    )


def test_unknown_tta_mode_lists_the_choices():
    from faceattr.errors import UsageError
    from faceattr.models.head import check_tta

    assert check_tta("none") == "none" and check_tta("flip") == "flip"
    with pytest.raises(UsageError, match="flip"):
        check_tta("rotate")


def test_cli_flags_reach_the_run_and_the_overrides(synthetic_root, tmp_path):
    from typer.testing import CliRunner

    from faceattr.cli.app import app

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    run = tmp_path / "run"
    r = invoke("train", "--root", synthetic_root, "--img-size", 32, "--epochs", 1,
               "--sample", 64, "--workers", 0, "--augment", "none", "--ema", 0.99,
               "--tta", "flip", "--out", run)  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["ema"] == 0.99 and cfg["tta"] == "flip"
    r = invoke("eval", run, "--root", synthetic_root, "--split", "valid", "--tta", "none",
               "--workers", 0, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tta"] == "none"
    image = next((synthetic_root / "img_align_celeba").glob("*.jpg"))
    r = invoke("predict", image, "--model", run, "--no-detect", "--tta", "none", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("predict", image, "--model", run, "--no-detect", "--tta", "mirror")
    assert r.exit_code == 2 and "mirror" in r.output
