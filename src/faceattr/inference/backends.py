"""Two ways to run a model, one interface: ONNX Runtime for ``.onnx`` files, PyTorch for
``.safetensors`` files and run directories.

A :class:`Backend` maps normalised pixels ``[B, 3, S, S]`` (float32 numpy) to logits
``[B, A]``; preprocessing, test-time augmentation and thresholds stay in
:class:`~faceattr.inference.predictor.Predictor`, so both backends give the same outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import BACKENDS
from faceattr.errors import ModelError, UsageError, unknown_name_error
from faceattr.extras import has_module, require
from faceattr.models.info import ModelInfo, info_from_metadata, is_onnx
from faceattr.runs import DEFAULT_MODEL_NAME, default_model_path, resolve_model

__all__ = ["BACKENDS", "Backend", "OnnxBackend", "TorchBackend", "open_backend",
           "resolve_backend"]  # fmt: skip


def resolve_backend(model: str | Path | None, backend: str = "auto") -> tuple[Path, str]:
    """The model file and backend (``"onnx"`` or ``"torch"``) that MODEL and ``--backend`` mean.

    auto: ONNX Runtime for ``.onnx`` files and the default model, PyTorch for run directories
    and ``.safetensors`` files (or, without PyTorch installed, a run directory's
    ``model.onnx`` from `faceattr export`).
    """
    if backend not in BACKENDS:
        raise unknown_name_error("backend", backend, BACKENDS)
    is_default = model is None or str(model) == DEFAULT_MODEL_NAME
    if is_default and backend != "torch":
        onnx_file = default_model_path(onnx=True)
        if onnx_file.exists() or backend == "onnx":
            return resolve_model(model, onnx=True), "onnx"
    path = resolve_model(model)
    if is_onnx(path):
        if backend == "torch":
            raise UsageError(
                f"--backend torch cannot run {path}: an .onnx file runs through ONNX Runtime.",
                "Use --backend onnx (or auto), or pass the .safetensors model it was "
                "exported from.",
            )
        return path, "onnx"
    if backend == "onnx":
        exported = path.with_suffix(".onnx")
        hint = (
            f"Its ONNX export is beside it: --model {exported}"
            if exported.exists()
            else f"Export it first: faceattr export {model} --format onnx"
        )
        raise UsageError(
            f"--backend onnx needs an .onnx model file; {path} is a PyTorch model file.",
            f"{hint}; or use --backend torch.",
        )
    if backend == "auto" and not has_module("torch"):
        exported = path.with_suffix(".onnx")
        if exported.exists():
            return exported, "onnx"
    return path, "torch"


class Backend:
    """A loaded model: ``info`` (its :class:`ModelInfo`) and :meth:`logits`."""

    name = "base"

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = path
        self.info = info

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Normalised pixels ``[B, 3, S, S]`` float32 -> logits ``[B, A]`` float32 (no TTA)."""
        raise NotImplementedError


class OnnxBackend(Backend):
    """An exported ``.onnx`` model run by ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    name = "onnx"

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        from faceattr.inference import onnx
        from faceattr.models.digest import verify_onnx

        blob = path.read_bytes()
        metadata = verify_onnx(blob, path)  # damaged weights: an error, not NaN predictions
        self.session = onnx.open_session(path, device=device, threads=threads, model_bytes=blob)
        info = info_from_metadata(metadata, path, "an ONNX file")
        super().__init__(path, info)
        self.input_name = onnx.check_io(self.session, path, info.num_attributes, info.img_size)
        self._run = onnx.run_logits

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.session, self.input_name, np.ascontiguousarray(x, np.float32))


class TorchBackend(Backend):
    """A ``.safetensors`` model run by PyTorch (channels-last on the CPU, where it is faster)."""

    name = "torch"

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        require("torch", what="--backend torch (a .safetensors model)")
        from faceattr.malloc import tune_allocator

        tune_allocator()
        import torch

        from faceattr.models.io import load_model_file
        from faceattr.utils import resolve_device

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        model, info = load_model_file(path, device=str(self.device))
        super().__init__(path, info)
        model.tta = "none"  # the Predictor applies test-time augmentation, as for ONNX
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._torch = torch

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out: Any = self.model(t)
        return out.float().cpu().numpy()


def open_backend(
    model: str | Path | None = None,
    backend: str = "auto",
    *,
    device: str = "auto",
    threads: int | None = None,
) -> Backend:
    """Load MODEL with the backend ``--backend`` asks for (see :func:`resolve_backend`)."""
    path, name = resolve_backend(model, backend)
    if name == "onnx":
        return OnnxBackend(path, device=device, threads=threads)
    return TorchBackend(path, device=device, threads=threads)


def check_finite(logits: np.ndarray, path: Path) -> np.ndarray:
    """``logits`` unchanged, or a ModelError when any is NaN or infinite (damaged weights)."""
    if not np.isfinite(logits).all():
        raise ModelError(
            f"The model {path} produced non-finite outputs (NaN or infinity): its weights "
            "are damaged.",
            "Re-export or re-download the model file (`--model default` uses the bundled one).",
        )
    return logits
