"""Two ways to run a model, one interface: ONNX Runtime for ``.onnx`` files, PyTorch for
``.safetensors`` files.

A :class:`Backend` maps normalised pixels ``[B, 3, S, S]`` (float32 numpy) to logits
``[B, A]``; preprocessing, test-time augmentation and thresholds stay in
:class:`~faceattr.inference.predictor.Predictor`, so both backends give the same outputs.
Which file a MODEL argument and ``--backend`` mean is :class:`faceattr.models.file.ModelFile`'s
to say; :meth:`ModelFile.open` makes the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceattr.errors import ModelError
from faceattr.extras import require
from faceattr.models.file import ModelFile
from faceattr.models.info import ModelInfo

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "check_finite"]


class Backend:
    """A loaded model: ``info`` (its :class:`ModelInfo`) and :meth:`logits`."""

    name = "base"

    def __init__(self, file: ModelFile, info: ModelInfo) -> None:
        self.file = file
        self.path = file.path
        self.info = info

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Normalised pixels ``[B, 3, S, S]`` float32 -> logits ``[B, A]`` float32 (no TTA)."""
        raise NotImplementedError


class OnnxBackend(Backend):
    """An exported ``.onnx`` model run by ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    name = "onnx"

    def __init__(
        self, file: ModelFile, *, device: str = "auto", threads: int | None = None
    ) -> None:
        from faceattr.inference import onnx

        blob, info = file.read_verified()  # damaged weights: an error, not NaN predictions
        path = file.path
        self.session = onnx.open_session(path, device=device, threads=threads, model_bytes=blob)
        super().__init__(file, info)
        self.input_name = onnx.check_io(self.session, path, info.num_attributes, info.img_size)
        self._run = onnx.run_logits

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self._run(self.session, self.input_name, np.ascontiguousarray(x, np.float32))
        if out.shape != (len(x), self.info.num_attributes):  # a graph with free output sizes
            raise ModelError(
                f"{self.path} gave outputs of shape {list(out.shape)} for {len(x)} faces and "
                f"{self.info.num_attributes} attributes: its graph and metadata disagree.",
                "Export it again with `faceattr export MODEL --format onnx`.",
            )
        return out


class TorchBackend(Backend):
    """A ``.safetensors`` model run by PyTorch (channels-last on the CPU, where it is faster)."""

    name = "torch"

    def __init__(
        self, file: ModelFile, *, device: str = "auto", threads: int | None = None
    ) -> None:
        require("torch", what="A .safetensors model (the torch backend)")
        from faceattr.malloc import tune_allocator

        tune_allocator()
        import torch

        from faceattr.models.io import load_model_file
        from faceattr.utils import resolve_device

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        model, info = load_model_file(file, device=str(self.device))
        super().__init__(file, info)
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


def check_finite(logits: np.ndarray, path: Path) -> np.ndarray:
    """``logits`` unchanged, or a ModelError when any is NaN or infinite (damaged weights)."""
    if not np.isfinite(logits).all():
        raise ModelError(
            f"The model {path} produced non-finite outputs (NaN or infinity): its weights "
            "are damaged.",
            "Re-export or re-download the model file, or use the bundled model (`default`).",
        )
    return logits
