"""`faceattr distill` on synthetic data: the student learns the teacher, the teacher's outputs
are cached (reused, invalidated by another teacher, rebuilt when damaged), resume, unlabeled
photos with detection, and bad inputs with clear messages."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import InterruptAfterEpoch, perturb_head, small_train_config
from faceattr.cli.app import app
from faceattr.config import DataConfig, DistillConfig
from faceattr.engine.distill import distill, resume_distill, teacher_cache_file
from faceattr.errors import UsageError
from faceattr.inference.predictor import Predictor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Teacher caches (and aligned unlabeled faces) in this test's folder, never in the shared
    synthetic set."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def teacher_calls(monkeypatch):
    """How many images the teacher (any Predictor) was run on."""
    calls = {"images": 0}
    original = Predictor.logits

    def counted(self, pixels):
        calls["images"] += len(pixels)
        return original(self, pixels)

    monkeypatch.setattr(Predictor, "logits", counted)
    return calls


def student_config(root, out, teacher, **distill):
    """A seconds-long celebnet student of ``teacher`` on 200 synthetic images."""
    return small_train_config(
        root,
        out,
        data=DataConfig(root=str(root), img_size=32, workers=0, sample=200),
        epochs=2,
        distill=DistillConfig(teacher=str(teacher), **distill),
    )


def agreement(a: Path, b: Path, root: Path) -> float:
    """Fraction of (validation image, attribute) decisions at 0.5 on which two models agree."""
    from faceattr.engine.evaluate import predict_table, split_table
    from faceattr.progress import NullProgress

    out = []
    for model in (a, b):
        p = Predictor(model)
        table = split_table(p.file.path, p.info, DataConfig(root=str(root), workers=0), "valid")
        probs, *_ = predict_table(p, table, None, progress=NullProgress(), description="valid")
        out.append(probs > 0.5)
    return float((out[0] == out[1]).mean())


def contrary_teacher(trained_run: Path, folder: Path) -> Path:
    """A copy of ``trained_run``'s model whose head is negated: it says the opposite of what
    the labels taught it, so learning the labels and learning the teacher part ways."""
    import torch

    from faceattr.models import load_model_file, save_model_file

    folder.mkdir()
    model, info = load_model_file(trained_run / "model.safetensors")
    with torch.no_grad():
        model.classifier.weight.neg_()
        model.classifier.bias.neg_()
    path = folder / "contrary.safetensors"
    save_model_file(path, model, replace(info, thresholds=None))
    return path


def test_student_agrees_with_its_teacher_more_than_a_labels_only_student(
    synthetic_root, trained_run, tmp_path
):
    from faceattr.engine.fit import fit

    teacher = contrary_teacher(trained_run, tmp_path / "teacher")
    distilled = distill(student_config(synthetic_root, tmp_path / "kd", teacher, alpha=0.0))
    plain_cfg = replace(
        student_config(synthetic_root, tmp_path / "plain", teacher), distill=DistillConfig()
    )  # same seed, data and epochs; no teacher
    fit(plain_cfg)  # fmt: skip
    kd = agreement(tmp_path / "kd", teacher, synthetic_root)
    plain = agreement(tmp_path / "plain", teacher, synthetic_root)
    assert kd > 0.75 and kd > plain + 0.3, (kd, plain)
    # The run records its teacher: config, metrics beside the student's, the result.
    cfg = json.loads((tmp_path / "kd" / "config.json").read_text())
    assert cfg["distill"]["teacher"] == str(teacher.resolve())
    assert cfg["distill"]["teacher_digest"] == distilled.teacher["sha256"]
    assert cfg["distill"]["alpha"] == 0.0
    teacher_metrics = json.loads((tmp_path / "kd" / "metrics-valid-teacher.json").read_text())
    assert teacher_metrics["role"] == "teacher" and teacher_metrics["n_images"] == 150
    # The contrary teacher is wrong where the labels are learnable: below majority.
    assert distilled.to_json()["teacher"]["valid"]["mean_accuracy"] < 0.5


def test_teacher_cache_is_reused_invalidated_by_another_teacher_and_rebuilt(
    synthetic_root, trained_run, tmp_path, teacher_calls
):
    def one_epoch(out, teacher):
        cfg = student_config(synthetic_root, tmp_path / out, teacher, alpha=0.5)
        return replace(cfg, epochs=1, data=replace(cfg.data, sample=64))

    first = one_epoch("a", trained_run)
    distill(first)
    assert teacher_calls["images"] == 64 + 150  # the training sample and validation, once each
    digest = Predictor(trained_run).file.digest
    cached = teacher_cache_file(first, digest, "none")
    assert cached.is_file()

    teacher_calls["images"] = 0
    distill(one_epoch("b", trained_run))
    assert teacher_calls["images"] == 0  # every output read from the cache

    other = tmp_path / "other-teacher"
    shutil.copytree(trained_run, other)
    perturb_head(other / "model.safetensors", seed=3)  # other weights: another digest
    distill(one_epoch("c", other))
    assert teacher_calls["images"] == 214
    assert teacher_cache_file(first, Predictor(other).file.digest, "none") != cached

    cached.write_bytes(b"not a cache")  # damaged: rebuilt, and the run still trains
    teacher_calls["images"] = 0
    distill(one_epoch("d", trained_run))
    assert teacher_calls["images"] == 214
    with np.load(cached) as f:
        assert f["logits"].shape == (214, 40)


def test_distillation_resumes_with_its_teacher_cache(
    synthetic_root, trained_run, tmp_path, teacher_calls
):
    import torch

    cfg = student_config(synthetic_root, tmp_path / "full", trained_run, alpha=0.3)
    distill(cfg)
    with pytest.raises(KeyboardInterrupt):
        distill(replace(cfg, out=str(tmp_path / "cut")), progress=InterruptAfterEpoch(1))
    teacher_calls["images"] = 0
    resumed = resume_distill(tmp_path / "cut")
    assert teacher_calls["images"] == 0
    assert resumed.fit.epochs_done == 2 and resumed.teacher["sha256"]
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_unlabeled_photos_are_detected_aligned_and_taught(
    synthetic_root, trained_run, tmp_path, monkeypatch
):
    from faceattr.engine import distill as distill_module
    from faceattr.engine.training import setup
    from faceattr.progress import NullProgress

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.jpg", "two-portraits.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    cfg = distill_module.resolve_teacher(
        student_config(synthetic_root, tmp_path / "run", trained_run, unlabeled=(str(photos),))
    )
    training = setup(cfg, NullProgress(), init_from=None)
    extra = len(training.train_table) - 200
    assert extra == 3  # one face in the astronaut photo, two in the portraits
    rows = training.train_table.labels[200:]
    assert np.isnan(rows).all()  # no labels: the label loss skips them
    assert np.isfinite(training.teacher.logits[200:].numpy()).all()  # the teacher's are there
    crops = training.train_table.paths[200:]
    assert all(p.suffix == ".png" and p.is_file() for p in crops)

    # The aligned faces are kept: a second setup detects nothing.
    def no_detection(*args, **kwargs):
        raise AssertionError("detected again")

    monkeypatch.setattr("faceattr.inference.detect.create_detector", no_detection)
    again = setup(replace(cfg, out=str(tmp_path / "run2")), NullProgress(), init_from=None)
    assert [str(p) for p in again.train_table.paths[200:]] == [str(p) for p in crops]


def test_a_teacher_without_the_runs_attributes_is_refused_before_training(synthetic_root, tmp_path):
    from faceattr.engine.fit import fit

    narrow = tmp_path / "narrow"
    fit(small_train_config(
        synthetic_root, narrow, epochs=1,
        data=DataConfig(root=str(synthetic_root), img_size=32, workers=0, sample=64,
                        attributes=("Male", "Smiling")),
    ))  # fmt: skip
    out = tmp_path / "student"
    with pytest.raises(UsageError, match="38 of the 40 this run learns are not among them"):
        distill(student_config(synthetic_root, out, narrow))
    assert not (out / "config.json").exists() and not (out / "train_state.pt").exists()
    # A student of the teacher's own attributes (or fewer) is fine.
    cfg = student_config(synthetic_root, tmp_path / "ok", narrow)
    cfg = replace(cfg, epochs=1, data=replace(cfg.data, attributes=("Smiling",)))
    assert distill(cfg).fit.epochs_done == 1


def test_cli_bad_inputs_have_clear_messages(synthetic_root, trained_run, tmp_path):
    runner = CliRunner()
    base = ["distill", str(trained_run), "--root", str(synthetic_root), "--img-size", "32",
            "--epochs", "1", "--sample", "64", "--workers", "0"]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--unlabeled", str(empty)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "holds no images" in text and "Traceback" not in text, r.output
    r = runner.invoke(app, ["distill", str(tmp_path / "missing"), "--root", str(synthetic_root)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Model file not found" in text, r.output
    r = runner.invoke(app, [*base, "--alpha", "1.5"])
    assert r.exit_code == 2 and "--alpha" in r.output and "[0, 1]" in r.output, r.output
    r = runner.invoke(app, ["distill", str(trained_run)])
    assert r.exit_code == 2 and "Missing --root" in r.output, r.output


def test_cli_distills_with_qat_and_reports_the_teacher(synthetic_root, trained_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["distill", str(trained_run), "--root", str(synthetic_root),
                            "--arch", "celebnet", "--img-size", "32", "--epochs", "1",
                            "--sample", "64", "--workers", "0", "--out", str(tmp_path / "s"),
                            "--qat", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["teacher"]["name"] == str(trained_run.resolve()) and data["epochs_done"] == 1
    # --qat: the student trained with int8 rounding in its graph (tests/test_qat.py)
    from faceattr.models import read_model_info

    assert read_model_info(tmp_path / "s").extra["qat"]
    # The report puts the teacher beside the student, on the run's validation split.
    page = tmp_path / "report.md"
    r = runner.invoke(app, ["report", str(tmp_path / "s"), "--format", "md", "--out", str(page),
                            "--gallery", "0", "--gradcam", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    md = page.read_text()
    assert "## Teacher and student" in md and "| teacher |" in md and "| student |" in md
    teacher_acc = data["teacher"]["valid"]["mean_accuracy"]
    assert f"{100 * teacher_acc:.1f}" in md  # the teacher's mean accuracy at 0.5


def test_the_default_onnx_ensemble_teaches_a_torch_student(synthetic_root, tmp_path):
    from faceattr.models.file import ModelFile

    cfg = student_config(synthetic_root, tmp_path / "s", "default", alpha=0.5)
    result = distill(replace(cfg, epochs=1, data=replace(cfg.data, sample=64)))
    assert ModelFile.for_backend("default").format == "onnx"  # run by ONNX Runtime
    assert result.teacher["name"] == "default" and result.fit.epochs_done == 1
    assert result.teacher["sha256"] == ModelFile.for_backend("default").digest
    # It ran on every validation image (drawn faces: its accuracy on them is not the point).
    metrics = json.loads((tmp_path / "s" / "metrics-valid-teacher.json").read_text())
    assert metrics["n_images"] == 150 and metrics["model"] == "default"
