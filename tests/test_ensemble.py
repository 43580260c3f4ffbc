"""`faceattr ensemble`: several models as one model file, through every path a model takes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import perturb_head, small_train_config
from faceattr.cli.app import app
from faceattr.config import DataConfig
from faceattr.data.images import load_image
from faceattr.inference.predictor import Predictor

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def members(trained_run: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three different models of the synthetic set: the shared run, a copy of it with a
    jittered head and other normalisation, and a copy that takes a smaller input (32 px)."""
    from faceattr.models import load_model_file, save_model_file

    base = tmp_path_factory.mktemp("ensemble-members")
    a = base / "a"
    shutil.copytree(trained_run, a)
    b = base / "b"
    shutil.copytree(trained_run, b)
    perturb_head(b / "model.safetensors", seed=3)
    model, info = load_model_file(b / "model.safetensors")
    save_model_file(
        b / "model.safetensors", model, replace(info, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    )
    small = base / "small.safetensors"  # celebnet pools globally, so it runs at any size
    model, info = load_model_file(trained_run / "model.safetensors")
    save_model_file(small, model, replace(info, img_size=32))
    return a, b, small


def _crops(root: Path, n: int = 24):
    return [load_image(p) for p in sorted((root / "img_align_celeba").glob("*.jpg"))[:n]]


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_ensemble_is_the_mean_probability_of_its_members(members, synthetic_root, tmp_path, tta):
    a, b, _ = members
    out = tmp_path / "ens.safetensors"
    r = invoke("ensemble", a, b, "--out", out, "--tta", tta)
    assert r.exit_code == 0, r.output
    crops = _crops(synthetic_root)
    pa = Predictor(a, tta=tta).probabilities(crops)
    pb = Predictor(b, tta=tta).probabilities(crops)
    ens = Predictor(out)
    assert ens.tta == tta and ens.info.arch == "ensemble" and len(ens.info.members) == 2
    assert np.abs(pa - pb).max() > 0.05  # the members really differ
    # Flip TTA averages logits per member in the single models but the ensemble's combined
    # logits, so only the plain case is exactly the mean.
    tol = 1e-5 if tta == "none" else 0.02
    assert np.abs(ens.probabilities(crops) - (pa + pb) / 2).max() < tol
    assert ens.thresholds.tolist() == [0.5] * 40  # no --root: nothing to tune on


def test_members_of_another_input_size_get_a_resized_input(members, synthetic_root, tmp_path):
    a, _, small = members
    out = tmp_path / "ens.safetensors"
    assert invoke("ensemble", small, a, "--out", out).exit_code == 0
    ens = Predictor(out, tta="none")
    assert ens.info.img_size == 40 and [m["img_size"] for m in ens.info.members] == [32, 40]
    crops = _crops(synthetic_root)
    pa = Predictor(a, tta="none").probabilities(crops)
    ps = Predictor(small, tta="none").probabilities(crops)
    diff = np.abs(ens.probabilities(crops) - (pa + ps) / 2)
    # The small member sees the 40 px crop resized in the graph instead of the image resized
    # once by Pillow: nearly, not exactly, the same pixels.
    assert diff.mean() < 0.01 and diff.max() < 0.1


def test_cli_evaluates_and_tunes_thresholds(members, synthetic_root, tmp_path):
    a, b, _ = members
    out = tmp_path / "ens.safetensors"
    r = invoke("ensemble", a, b, "--out", out, "--root", synthetic_root, "--workers", 0,
               "--dtype", "float16", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["evaluated"] and s["split"] == "valid" and s["images"] == 150
    assert [m["model"] for m in s["member_scores"]] == [str(a / "model.safetensors"),
                                                        str(b / "model.safetensors")]  # fmt: skip
    assert 0.5 < s["ensemble"]["mean_accuracy_at_0.5"] <= 1
    best = max(m["mean_accuracy_at_0.5"] for m in s["member_scores"])
    assert s["gain_over_best_member"] == pytest.approx(s["ensemble"]["mean_accuracy_at_0.5"] - best)
    info = Predictor(out).info
    assert info.thresholds is not None and len(info.thresholds) == 40
    # Tuned where that beat 0.5 under cross-validation by identity; 0.5 elsewhere.
    policy = info.extra["threshold_policy"]
    assert policy["metric"] == "accuracy" and policy["folds_by"] == "identity"
    tuned = [a for a, t in zip(info.attributes, info.thresholds, strict=True) if t != 0.5]
    assert tuned == policy["tuned"] == s["tuned_attributes"]
    assert info.extra["validation"]["images"] == 150
    assert [m["source"]["file"] for m in info.members] == ["model.safetensors"] * 2
    assert out.stat().st_size < 0.6 * 2 * (a / "model.safetensors").stat().st_size  # fp16
    # An ensemble file evaluates like any model, and its thresholds are the tuned ones.
    r = invoke("eval", out, "--root", synthetic_root, "--split", "valid", "--json",
               "--workers", 0)  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["at_threshold_0.5"]["mean_accuracy"] == pytest.approx(
        s["ensemble"]["mean_accuracy_at_0.5"], abs=1e-3
    )
    # The table, without --json.
    r = invoke("ensemble", a, b, "--out", tmp_path / "e2.safetensors", "--root", synthetic_root,
               "--workers", 0)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "ensemble" in r.output and "over the best member" in said(r)


def test_one_onnx_graph_gives_the_ensemble_probabilities(members, synthetic_root, tmp_path):
    a, b, small = members
    out = tmp_path / "ens.safetensors"
    assert invoke("ensemble", a, b, small, "--out", out, "--tta", "flip").exit_code == 0
    r = invoke("export", out, "--json")
    assert r.exit_code == 0, r.output
    onnx_file = out.with_suffix(".onnx")
    crops = _crops(synthetic_root)
    torch_p = Predictor(out).probabilities(crops)
    onnx_p = Predictor(onnx_file).probabilities(crops)
    assert Predictor(onnx_file).tta == "flip"
    assert np.abs(torch_p - onnx_p).max() < 1e-4
    r = invoke("predict", *sorted((synthetic_root / "img_align_celeba").glob("*.jpg"))[:3],
               "--model", onnx_file, "--no-detect", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [len(e["faces"]) for e in json.loads(r.stdout)] == [1, 1, 1]


def test_confident_members_give_finite_logits():
    import torch

    from faceattr.models.ensemble import _log_sigmoid, _log_sum_exp

    z = torch.tensor([[[-1e4, 0.0, 300.0]], [[-200.0, 5.0, 1e4]]])  # [M=2, B=1, A=3]
    out = _log_sum_exp(_log_sigmoid(z)) - _log_sum_exp(_log_sigmoid(-z))
    assert torch.isfinite(out).all()
    p = torch.sigmoid(z).mean(0)
    assert torch.allclose(torch.sigmoid(out), p, atol=1e-6)


def test_bad_ensembles_are_refused_with_a_reason(members, synthetic_root, tmp_path):
    from faceattr.engine.fit import fit

    a, b, _ = members
    r = invoke("ensemble", a, "--out", tmp_path / "one.safetensors")
    assert r.exit_code == 2 and "at least two models" in said(r)

    few = tmp_path / "few"
    fit(small_train_config(synthetic_root, few, epochs=1,
                           data=DataConfig(root=str(synthetic_root), img_size=40, workers=0,
                                           attributes=("Male", "Smiling"))))  # fmt: skip
    r = invoke("ensemble", a, few, "--out", tmp_path / "x.safetensors")
    assert r.exit_code == 1 and "other attributes" in said(r)

    ens = tmp_path / "ens.safetensors"
    assert invoke("ensemble", a, b, "--out", ens).exit_code == 0
    r = invoke("ensemble", ens, a, "--out", tmp_path / "y.safetensors")
    assert r.exit_code == 1 and "cannot be a member of another" in said(r)

    other_carve = tmp_path / "carve"
    shutil.copytree(b, other_carve)
    cfg = json.loads((other_carve / "config.json").read_text())
    cfg["data"]["split_seed"] = 7
    (other_carve / "config.json").write_text(json.dumps(cfg))
    r = invoke("ensemble", a, other_carve, "--out", tmp_path / "z.safetensors",
               "--root", synthetic_root, "--workers", 0)  # fmt: skip
    assert r.exit_code == 1 and "different validation identities" in said(r)
    assert not list(tmp_path.glob("*z.safetensors*"))  # nothing half-written left behind


def test_member_list_is_validated():
    from faceattr.errors import ModelError
    from faceattr.models.info import ModelInfo

    member = {"arch": "celebnet", "img_size": 40, "mean": [0.5] * 3, "std": [0.5] * 3}
    ModelInfo("ensemble", ["Male"], members=[member, member]).validate()
    for bad, says in [
        (ModelInfo("ensemble", ["Male"], members=[member]), "two or more members"),
        (ModelInfo("ensemble", ["Male"], members=[member, {"arch": "x"}]), "lacks img_size"),
        (ModelInfo("celebnet", ["Male"], members=[member, member]), "arch is not 'ensemble'"),
        (ModelInfo("ensemble", ["Male"], members=[member, dict(member, arch="ensemble")]),
         "itself an ensemble"),
    ]:  # fmt: skip
        with pytest.raises(ModelError, match=says):
            bad.validate()


def test_int8_export_of_an_ensemble(members, synthetic_root, tmp_path):
    # The members' in-graph resizing defeats onnxruntime's symbolic shape inference; the
    # quantizer falls back to ONNX's own.
    a, _, small = members
    ens = tmp_path / "ens.safetensors"
    assert invoke("ensemble", a, small, "--out", ens).exit_code == 0
    out = tmp_path / "ens-int8.onnx"
    r = invoke("export", ens, "--int8", "--out", out, "--calibration-root", synthetic_root,
               "--calibration-images", 32, "--eval-split", "valid", "--max-accuracy-drop", 100,
               "--workers", 0, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["precision"] == "int8" and out.is_file()
    crops = _crops(synthetic_root, 8)
    diff = np.abs(Predictor(out).probabilities(crops) - Predictor(ens).probabilities(crops))
    assert diff.mean() < 0.05


def test_grad_cam_of_an_ensemble(members, synthetic_root, tmp_path):
    import torch

    from faceattr.models import load_model_file
    from faceattr.report.gradcam import grad_cam

    a, _, small = members
    out = tmp_path / "ens.safetensors"
    assert invoke("ensemble", a, small, "--out", out, "--tta", "flip").exit_code == 0
    model, info = load_model_file(out)
    ens = Predictor(out)
    x = torch.from_numpy(
        ens.preprocessing.normalize(ens.preprocessing.batch(_crops(synthetic_root, 2)))
    )
    maps, probs, layer = grad_cam(model, x, [0, 5])
    assert maps.shape == (2, 2, 40, 40) and layer.startswith("members.1.")  # the last member
    assert model.tta == "flip"  # switched off for the maps only
    assert np.allclose(
        probs,
        Predictor(out, tta="none").probabilities(_crops(synthetic_root, 2))[:, [0, 5]],
        atol=1e-5,
    )
