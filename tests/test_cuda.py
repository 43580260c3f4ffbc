"""The CUDA path: training (AMP bf16 and fp16, channels-last, EMA, resume), the augmentation on
the GPU, eval/predict/Grad-CAM with ``--device cuda``, ONNX Runtime's CUDA provider.

The ``cuda``-marked tests need an NVIDIA GPU and skip without one (CI has none);
``benchmarks/gpu_check.sh`` runs them on a GPU machine. ``FACEATTR_CUDA_TESTS_ON_CPU=1`` runs
them on the CPU instead (a dry run of the tests' own logic; the GPU-only checks are skipped).
The unmarked tests at the end check, on any machine, what a user without a GPU is told.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import InterruptAfterEpoch, small_train_config
from faceattr.cli.app import app
from faceattr.config import AugmentConfig, DataConfig

torch = pytest.importorskip("torch")

HAS_CUDA = torch.cuda.is_available()
DRY_RUN = os.environ.get("FACEATTR_CUDA_TESTS_ON_CPU") == "1" and not HAS_CUDA
DEVICE = "cpu" if DRY_RUN else "cuda"
needs_cuda = pytest.mark.skipif(
    not (HAS_CUDA or DRY_RUN), reason="needs an NVIDIA GPU (CUDA not available)"
)
only_on_gpu = pytest.mark.skipif(not HAS_CUDA, reason="checks the GPU itself")

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _short(root: Path, out: Path, **changes):
    """Two epochs of celebnet at 32 px on 200 synthetic images, on CUDA."""
    cfg = small_train_config(root, out, device=DEVICE, epochs=2)
    data = DataConfig(root=str(root), img_size=32, workers=0, sample=200)
    return replace(cfg, data=data, **changes)


def _finite_history(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "history.csv is empty"
    for row in rows:
        assert np.isfinite(float(row["train_loss"])), row
        assert np.isfinite(float(row["val_loss"])), row
    return rows


@pytest.fixture(scope="module")
def cuda_run(synthetic_root, tmp_path_factory) -> Path:
    """A short celebnet run trained on CUDA (bf16 AMP, channels-last by default)."""
    if not (HAS_CUDA or DRY_RUN):
        pytest.skip("needs an NVIDIA GPU (CUDA not available)")
    from faceattr.engine.fit import fit

    out = tmp_path_factory.mktemp("cuda") / "run"
    fit(_short(synthetic_root, out))
    return out


# -- training ---------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@only_on_gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_training_on_cuda_with_amp(synthetic_root, tmp_path, monkeypatch, dtype):
    from faceattr.engine.fit import fit
    from faceattr.engine.optim import amp_setup

    if dtype == "float16":  # the path of GPUs without bf16 (V100, T4): fp16 with a scaler
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cfg = _short(synthetic_root, tmp_path / "run")
    amp_dtype, scaler = amp_setup(cfg, torch.device("cuda"))
    assert amp_dtype == getattr(torch, dtype)
    assert (scaler is None) == (dtype == "bfloat16")

    result = fit(cfg)
    assert result.epochs_done == 2
    _finite_history(tmp_path / "run")
    # It learned something: better than chance on the synthetic set's drawn-in labels.
    assert result.best_mean_accuracy > 0.6
    from faceattr.models import load_model_file

    model, _ = load_model_file(tmp_path / "run" / "model.safetensors")  # loads on the CPU
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.cuda
@needs_cuda
@only_on_gpu
def test_setup_on_cuda_uses_channels_last_and_bf16(synthetic_root, tmp_path):
    from faceattr.engine.training import setup
    from faceattr.progress import NullProgress

    t = setup(_short(synthetic_root, tmp_path / "run"), NullProgress(), init_from=None)
    assert t.device.type == "cuda" and t.channels_last
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.device.type == "cuda"
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    if torch.cuda.is_bf16_supported():
        assert t.amp_dtype == torch.bfloat16 and t.scaler is None


@pytest.mark.cuda
@needs_cuda
def test_channels_last_and_contiguous_train_alike(synthetic_root, tmp_path):
    """The same run with and without channels-last, in full precision: same losses (the
    memory format changes the kernels, not the arithmetic, beyond rounding)."""
    from faceattr.engine.fit import fit

    a = fit(_short(synthetic_root, tmp_path / "cl", amp=False, channels_last=True))
    b = fit(_short(synthetic_root, tmp_path / "nchw", amp=False, channels_last=False))
    la = [h["train_loss"] for h in a.history]
    lb = [h["train_loss"] for h in b.history]
    assert np.allclose(la, lb, rtol=0.05, atol=0.01), (la, lb)


@pytest.mark.cuda
@needs_cuda
def test_ema_on_cuda(synthetic_root, tmp_path):
    from faceattr.engine.fit import fit
    from faceattr.engine.training import setup
    from faceattr.progress import NullProgress

    cfg = _short(synthetic_root, tmp_path / "run", ema=0.99)
    t = setup(cfg, NullProgress(), init_from=None)
    assert t.ema is not None
    assert all(p.device.type == DEVICE for p in t.ema.module.parameters())
    result = fit(replace(cfg, out=str(tmp_path / "run2")))
    assert result.epochs_done == 2
    _finite_history(tmp_path / "run2")


@pytest.mark.cuda
@needs_cuda
def test_resume_on_cuda(synthetic_root, tmp_path, monkeypatch):
    """Interrupted after epoch 2 of 3 and resumed on CUDA: ends where the uninterrupted run
    does (within the GPU's run-to-run rounding: cuDNN kept deterministic)."""
    from faceattr.engine.fit import fit, resume

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    aug = AugmentConfig(hflip=True, brightness=0.2, erasing=0.3)
    cfg = _short(synthetic_root, tmp_path / "full", epochs=3, augment=aug)
    fit(cfg)
    with pytest.raises(KeyboardInterrupt):
        fit(replace(cfg, out=str(tmp_path / "cut")), progress=InterruptAfterEpoch(2))
    resumed = resume(tmp_path / "cut")
    assert resumed.epochs_done == 3 and not resumed.already_finished
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True, map_location="cpu")
    b = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True, map_location="cpu")
    for key, value in a["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["model"][key], rtol=1e-2, atol=1e-3), key
        else:
            assert torch.equal(value, b["model"][key]), key


# -- the augmentation on the GPU --------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_gpu_augmentation_matches_the_cpu(synthetic_root):
    """One batch, one seed: BatchAugment draws its randomness on the CPU generator, so the
    GPU and the CPU make the same warp, jitter and erasing; pixels agree within rounding."""
    from faceattr.data.transforms import BatchAugment

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 48, 48, generator=gen)
    aug = BatchAugment(AugmentConfig(hflip=True, crop_scale=0.1, shift=0.05, rotation=10,
                                     brightness=0.2, erasing=0.5))  # fmt: skip
    cpu = aug(x.clone(), torch.Generator().manual_seed(7))
    gpu = aug(x.to(DEVICE), torch.Generator().manual_seed(7)).cpu()
    assert not torch.equal(cpu, x)  # it did augment
    diff = (cpu - gpu).abs()
    # bilinear sampling rounds differently on the GPU; an erased rectangle's edge may move by
    # a pixel where a boundary falls on a pixel centre: allow a few such pixels.
    assert float(diff.median()) < 1e-5
    assert float((diff > 1e-3).float().mean()) < 0.01, float(diff.max())


# -- eval, predict, Grad-CAM on CUDA ----------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_eval_with_device_cuda_matches_the_cpu(cuda_run, synthetic_root):
    results = {}
    for device in (DEVICE, "cpu"):
        r = invoke("eval", cuda_run, "--root", synthetic_root, "--split", "valid",
                   "--device", device, "--workers", 0, "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        results[device] = json.loads(r.stdout)
    assert results[DEVICE]["n_images"] == results["cpu"]["n_images"] == 150
    assert abs(results[DEVICE]["mean_accuracy"] - results["cpu"]["mean_accuracy"]) < 0.005


def _probabilities(output: str) -> np.ndarray:
    entries = json.loads(output)
    return np.array([[f["probabilities"][k] for k in sorted(f["probabilities"])]
                     for e in entries for f in e["faces"]])  # fmt: skip


def _images(root: Path, n: int = 8) -> list[Path]:
    return sorted((root / "img_align_celeba").glob("*.jpg"))[:n]


@pytest.mark.cuda
@needs_cuda
def test_predict_with_device_cuda_matches_the_cpu(cuda_run, synthetic_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in _images(synthetic_root):
        (folder / p.name).write_bytes(p.read_bytes())
    probs = {}
    for device in (DEVICE, "cpu"):
        r = invoke("predict", folder, "--model", cuda_run, "--backend", "torch", "--no-detect",
                   "--device", device, "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        probs[device] = _probabilities(r.stdout)
    assert probs[DEVICE].shape == (8, 40)
    assert np.abs(probs[DEVICE] - probs["cpu"]).max() < 1e-3


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.skipif(not _ort_has_cuda(), reason="needs onnxruntime-gpu (pip: faceattr[gpu])")
def test_onnx_predict_through_the_cuda_provider(cuda_run, synthetic_root, tmp_path):
    from faceattr.inference.onnx import open_session

    onnx_file = tmp_path / "model.onnx"
    r = invoke("export", cuda_run, "--out", onnx_file, "--json")
    assert r.exit_code == 0, r.output
    session = open_session(onnx_file, device=DEVICE)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in _images(synthetic_root):
        (folder / p.name).write_bytes(p.read_bytes())
    probs = {}
    for device in (DEVICE, "cpu"):
        r = invoke("predict", folder, "--model", onnx_file, "--backend", "onnx", "--no-detect",
                   "--device", device, "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        probs[device] = _probabilities(r.stdout)
    assert np.abs(probs[DEVICE] - probs["cpu"]).max() < 1e-3


@pytest.mark.cuda
@needs_cuda
def test_grad_cam_on_cuda_matches_the_cpu(cuda_run, synthetic_root):
    from faceattr.data.images import load_image
    from faceattr.inference.predictor import Predictor
    from faceattr.models import load_model_file
    from faceattr.report.gradcam import grad_cam

    predictor = Predictor(cuda_run / "model.safetensors", device="cpu")
    crops = [load_image(p) for p in _images(synthetic_root, 4)]
    x = torch.from_numpy(predictor.preprocessing.normalize(predictor.preprocessing.batch(crops)))
    model, _ = load_model_file(cuda_run / "model.safetensors")
    maps_cpu, probs_cpu, layer_cpu = grad_cam(model, x, [0, 20])
    maps_gpu, probs_gpu, layer_gpu = grad_cam(model.to(DEVICE), x.to(DEVICE), [0, 20])
    assert layer_gpu == layer_cpu
    assert maps_gpu.shape == (4, 2, 32, 32)
    assert np.isfinite(maps_gpu).all() and maps_gpu.min() >= 0 and maps_gpu.max() <= 1
    assert np.abs(probs_gpu - probs_cpu).max() < 1e-3
    assert np.abs(maps_gpu - maps_cpu).max() < 0.05


# -- without a GPU: what the user is told (these run everywhere) ------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_device_cuda_without_a_gpu_is_one_clear_error(trained_run, tmp_path, backend):
    from faceattr.inference.onnx import providers_for

    image = Path(__file__).parents[1] / "src" / "faceattr" / "assets" / "astronaut.jpg"
    model: Path | str = trained_run
    if backend == "onnx":
        model = "default"
        try:
            providers_for("cuda")
        except Exception:
            pass
        else:
            pytest.skip("this onnxruntime has a CUDA provider")
    r = invoke("predict", image, "--model", model, "--backend", backend, "--no-detect",
               "--device", "cuda")  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "--device cuda" in r.output
    assert "--device cpu" in r.output


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_device_cuda_without_a_gpu(trained_run, synthetic_root, tmp_path,
                                                  command):  # fmt: skip
    if command == "train":
        args = ["train", "--root", synthetic_root, "--arch", "celebnet", "--epochs", 1,
                "--img-size", 32, "--workers", 0, "--out", tmp_path / "run"]  # fmt: skip
    else:
        args = ["eval", trained_run, "--root", synthetic_root, "--workers", 0]
    r = invoke(*args, "--device", "cuda")
    assert r.exit_code == 1, r.output
    assert "CUDA is not available" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run" / "train_state.pt").exists()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_device_auto_without_a_gpu_is_the_cpu():
    from faceattr.utils import resolve_device

    assert resolve_device("auto").type in ("cpu", "mps")


class _FellBack:
    """An InferenceSession whose CUDA provider could not load (what onnxruntime-gpu does
    without its CUDA/cuDNN libraries: a log line, then the CPU)."""

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def test_onnx_silent_fallback_to_the_cpu_is_reported():
    from faceattr.errors import DeviceUnavailableError
    from faceattr.inference.onnx import check_providers

    asked = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    with pytest.raises(DeviceUnavailableError, match="could not be loaded") as info:
        check_providers(_FellBack(), "cuda", asked)
    assert info.value.exit_code == 1 and "cudnn" in str(info.value.hint).lower()
    # auto may fall back quietly; cpu never asks for CUDA.
    check_providers(_FellBack(), "auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    check_providers(_FellBack(), "cpu", ["CPUExecutionProvider"])


def test_onnx_without_a_cuda_provider_names_the_gpu_extra(monkeypatch):
    import onnxruntime as ort

    from faceattr.errors import DeviceUnavailableError
    from faceattr.inference import onnx

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError) as info:
        onnx.providers_for("cuda")
    assert "faceattr[gpu]" in str(info.value.hint)
    assert "pip uninstall -y onnxruntime" in str(info.value.hint)
    assert "installed:" in info.value.message


def test_both_onnxruntime_packages_installed_is_named(monkeypatch):
    from importlib import metadata

    from faceattr.inference import onnx

    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}

    def version(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", version)
    note = onnx.runtime_packages_note()
    assert "onnxruntime 1.20.0" in note and "onnxruntime-gpu 1.20.0" in note
    assert "must not be installed together" in note
    del versions["onnxruntime"]
    assert "must not" not in onnx.runtime_packages_note()
