"""The ONNX engine: `faceattr export` (fp32, int8), both backends agreeing, bad model files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.config import DataConfig
from faceattr.errors import ModelError, UsageError

runner = CliRunner()
EXAMPLES = Path(__file__).parents[1] / "examples"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def exported(trained_run: Path, synthetic_root: Path, tmp_path_factory) -> Path:
    """A copy of the shared celebnet run, with model.onnx (fp32) exported beside it."""
    from faceattr.engine.export import export_model

    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, run)
    summary = export_model(run, data=DataConfig(root=str(synthetic_root), workers=0),
                           eval_split="valid")  # fmt: skip
    assert summary.out == str(run / "model.onnx")
    return run


def _crops(root: Path, n: int = 24) -> list[Path]:
    return sorted((root / "img_align_celeba").glob("*.jpg"))[:n]


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_both_backends_give_the_same_probabilities(exported, synthetic_root, tta):
    from faceattr.inference.predictor import Predictor

    images = [str(p) for p in _crops(synthetic_root)]
    torch_p = Predictor(exported, backend="torch", tta=tta)
    onnx_p = Predictor(exported / "model.onnx", tta=tta)
    assert (torch_p.backend.name, onnx_p.backend.name) == ("torch", "onnx")
    from faceattr.data.images import load_image

    crops = [load_image(p) for p in images]
    a, b = torch_p.probabilities(crops), onnx_p.probabilities(crops)
    assert a.shape == b.shape == (len(images), 40)
    assert np.abs(a - b).max() < 1e-4
    if tta == "flip":  # TTA really changes something on these asymmetric synthetic images
        plain = Predictor(exported / "model.onnx", tta="none").probabilities(crops)
        assert np.abs(plain - b).max() > 1e-3


def test_onnx_file_describes_itself(exported):
    from faceattr.models import read_model_info

    original = read_model_info(exported / "model.safetensors")
    onnx_info = read_model_info(exported / "model.onnx")
    export = onnx_info.extra.pop("export")
    assert onnx_info == original  # attributes, preprocessing, thresholds, TTA, licence
    assert export["precision"] == "fp32" and len(export["source_sha256"]) == 64
    assert export["check"]["max_abs_probability_diff"] < 1e-4
    assert export["check"]["source"] == "celeba valid split"


def test_eval_of_the_onnx_file_matches_the_torch_path(exported, synthetic_root):
    from faceattr.engine.evaluate import evaluate_model

    data = DataConfig(root=str(synthetic_root), workers=0)
    torch_eval = evaluate_model(exported, data, "valid", save=False)
    onnx_eval = evaluate_model(exported / "model.onnx", data, "valid", save=False)
    assert (torch_eval.backend, onnx_eval.backend) == ("torch", "onnx")
    a, b = torch_eval.metrics, onnx_eval.metrics
    assert a["n_images"] == b["n_images"] == 150
    for key in ("mean_accuracy", "mean_balanced_accuracy", "strict_accuracy", "macro_f1",
                "mean_average_precision"):  # fmt: skip
        assert abs(a[key] - b[key]) <= 1e-3, key
    assert a["mean_accuracy"] > a["majority_accuracy"]  # a model that learned something


def test_cli_predict_and_eval_with_the_onnx_file(exported, synthetic_root, tmp_path):
    crops = _crops(synthetic_root, 5)
    r = invoke("predict", *crops, "--model", exported / "model.onnx", "--no-detect", "--json")
    assert r.exit_code == 0, r.output
    assert [len(e["faces"]) for e in json.loads(r.stdout)] == [1] * 5
    r = invoke("eval", exported / "model.onnx", "--root", synthetic_root, "--split", "test",
               "--json", "--workers", "0")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"] == "onnx"


def test_int8_export_is_calibrated_and_compared(exported, synthetic_root, tmp_path):
    out = tmp_path / "int8.onnx"
    r = invoke("export", exported, "--int8", "--out", out, "--calibration-root", synthetic_root,
               "--calibration-images", 64, "--eval-split", "valid", "--json",
               "--max-accuracy-drop", 5)  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["precision"] == "int8" and out.is_file()
    cmp = summary["int8_vs_fp32"]
    assert cmp["images"] == 150 and {"fp32", "int8", "drop"} <= set(cmp["at_0.5"])
    assert out.stat().st_size < (exported / "model.onnx").stat().st_size
    from faceattr.models import read_model_info

    assert read_model_info(out).extra["export"]["calibration"]["images"] == 64


def test_int8_that_loses_accuracy_is_refused(exported, synthetic_root, tmp_path, monkeypatch):
    """Calibrating on blank images wrecks int8's ranges: the export must refuse and write
    nothing."""
    from faceattr.engine import export as export_mod

    real = export_mod._quantize
    monkeypatch.setattr(
        export_mod, "_quantize", lambda src, dest, pixels, info: real(src, dest, pixels * 0, info)
    )
    out = tmp_path / "bad.onnx"
    with pytest.raises(export_mod.ExportRefused, match="nothing was written"):
        export_mod.export_model(exported, out, int8=True, calibration_images=32,
                                data=DataConfig(root=str(synthetic_root), workers=0),
                                eval_split="valid", max_accuracy_drop=0.2)  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_int8_needs_calibration_images(exported):
    r = invoke("export", exported, "--int8")
    assert r.exit_code == 2 and "--calibration-root" in said(r)


def test_backend_onnx_with_a_run_directory_is_a_usage_error(trained_run):
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", trained_run, "--backend", "onnx")
    assert r.exit_code == 2 and "faceattr export" in said(r)


def test_truncated_onnx_file(exported, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes((exported / "model.onnx").read_bytes()[:5000])
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", bad, "--no-detect")
    assert r.exit_code == 1 and "not a readable ONNX model" in said(r)


def test_onnx_without_faceattr_metadata(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported / "model.onnx"))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    from faceattr.inference.predictor import Predictor

    with pytest.raises(ModelError, match="not a faceattr model"):
        Predictor(plain)


def test_non_finite_outputs_are_an_error_not_nan_json(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported / "model.onnx"))
    # The classifier's bias: the float tensor with one value per attribute.
    [last] = [t for t in model.graph.initializer if list(t.dims) == [40] and t.data_type == 1]
    last.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(last).shape, np.nan,
                                                  np.float32), last.name))  # fmt: skip
    # As in a file written before digests: otherwise the digest catches the change first.
    kept = [m for m in model.metadata_props if m.key != "faceattr_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    broken = tmp_path / "nan.onnx"
    onnx.save(model, str(broken))
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", broken, "--no-detect", "--json")
    assert r.exit_code == 1 and "non-finite" in said(r) and "NaN," not in r.stdout


def test_damaged_onnx_weights_are_refused(exported, tmp_path):
    import onnx

    from faceattr.models.digest import DIGEST_KEY, onnx_digest

    blob = (exported / "model.onnx").read_bytes()
    model = onnx.load_from_string(blob)  # the byte-level metadata edit is valid protobuf
    onnx.checker.check_model(model)
    meta = {m.key: m.value for m in model.metadata_props}
    assert meta[DIGEST_KEY] == onnx_digest(blob) and model.producer_name == "faceattr"
    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    at = blob.index(weights.raw_data[:64]) + 32  # a byte inside the largest weight tensor
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1 :])
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", damaged, "--no-detect")
    assert r.exit_code == 1 and "are damaged" in said(r), r.output


def test_torch_backend_cannot_run_onnx(exported):
    from faceattr.models.file import ModelFile

    with pytest.raises(UsageError, match="ONNX Runtime"):
        ModelFile.for_backend(exported / "model.onnx", "torch")
    assert ModelFile.for_backend(exported, "auto").backend == "torch"
    assert ModelFile.for_backend(exported / "model.onnx", "auto").backend == "onnx"


BLOCK_TORCH = (
    "import sys\n"
    "for name in ('torch', 'torchvision', 'timm', 'onnx', 'onnxscript'):\n"
    "    sys.modules[name] = None  # as if the light install left them out\n"
    "from faceattr.cli.app import main\n"
    "sys.argv = ['faceattr', *sys.argv[1:]]\n"
    "main()\n"
)


@pytest.mark.parametrize("command", [["train", "--root", "."], ["export", "default", "--out",
                                     "x.onnx"]])  # fmt: skip
def test_commands_that_need_torch_name_the_extra(command, tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *command], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert 'pip install "faceattr[train]"' in r.stderr and "Traceback" not in r.stderr


def test_onnx_run_directory_without_torch_uses_its_export(exported):
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "from faceattr.models.file import ModelFile\n"
        f"print(ModelFile.for_backend({str(exported)!r}, 'auto').backend)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "onnx", r.stderr


def test_fp16_weights_halve_the_file_and_keep_the_probabilities(exported, synthetic_root, tmp_path):
    from faceattr.data.images import load_image
    from faceattr.inference.predictor import Predictor

    out = tmp_path / "half.onnx"
    r = invoke("export", exported, "--fp16-weights", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["precision"] == "fp32" and summary["weights_stored_as_fp16"] > 0
    assert out.stat().st_size < 0.6 * (exported / "model.onnx").stat().st_size
    crops = [load_image(p) for p in _crops(synthetic_root)]
    full = Predictor(exported / "model.onnx").probabilities(crops)
    assert np.abs(Predictor(out).probabilities(crops) - full).max() < 5e-3
    r = invoke("export", exported, "--fp16-weights", "--int8", "--calibration-root",
               synthetic_root, "--out", tmp_path / "x.onnx")  # fmt: skip
    assert r.exit_code == 2 and "fp32 exports" in said(r)
