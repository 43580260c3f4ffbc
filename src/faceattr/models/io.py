"""The self-describing model file: safetensors weights + a ``ModelInfo`` JSON header.

One ``.safetensors`` file is enough to predict: its header metadata (key ``"faceattr"``)
holds the architecture, the attribute names, preprocessing (input size, face crop,
normalisation) and decision thresholds. Loading never unpickles anything.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from faceattr.errors import FaceAttrError, ModelError
from faceattr.fileio import atomic_write_bytes
from faceattr.models.digest import with_safetensors_digest
from faceattr.models.ensemble import EnsembleModel
from faceattr.models.file import ModelFile, ModelRef
from faceattr.models.head import AttributeModel
from faceattr.models.info import FORMAT_VERSION, METADATA_KEY, ModelInfo
from faceattr.models.qat import QAT_KEY, is_qat, learned_scales, plain_state

__all__ = ["load_model_file", "save_model_file"]


def _state_for_saving(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in plain_state(model.state_dict()).items():  # no fake quantizers (--qat)
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        # safetensors refuses tensors sharing memory (tied weights): give repeats their own.
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel() > 0:
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def save_model_file(
    path: str | os.PathLike,
    model: AttributeModel | EnsembleModel,
    info: ModelInfo,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model``'s weights and ``info`` to one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors to make a smaller file; loading
    casts back to float32. The file appears complete or not at all (temp file + fsync +
    ``os.replace``); its header carries a digest of the tensor data, checked on load.
    """
    from safetensors.torch import save

    # DDP (.module) and torch.compile (._orig_mod) wrappers would prefix every tensor name.
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    if info.num_attributes != model.num_attributes:
        raise ModelError(
            f"Model has {model.num_attributes} outputs but info names "
            f"{info.num_attributes} attributes."
        )
    if is_qat(model):  # quantization-aware training: the scales its int8 export will keep
        info = replace(info, extra={**info.extra, QAT_KEY: learned_scales(model, info.img_size)})
    info.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _state_for_saving(model, dtype)
    metadata = {METADATA_KEY: info.to_json(), "format": "pt",
                "faceattr_format": str(FORMAT_VERSION)}  # fmt: skip
    blob = with_safetensors_digest(save(tensors, metadata=metadata))
    atomic_write_bytes(path, blob, what="model file")
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mismatch_summary(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
    return "; ".join(parts)


def _build(info: ModelInfo) -> AttributeModel | EnsembleModel:
    """The untrained model ``info`` describes: an AttributeModel, or an EnsembleModel."""
    from faceattr.models.ensemble import ENSEMBLE_ARCH, build_ensemble
    from faceattr.models.registry import create_model

    if info.arch == ENSEMBLE_ARCH:
        return build_ensemble(info)
    return create_model(
        info.arch,
        len(info.attributes),
        num_features=info.num_features,
        dropout=info.dropout,
        pretrained=False,
        img_size=info.img_size,
    )


def _arch_names(info: ModelInfo) -> str:
    if info.members:
        return "ensemble of " + ", ".join(repr(m.get("arch")) for m in info.members)
    return repr(info.arch)


def load_model_file(
    path: ModelRef, *, device: str | torch.device = "cpu"
) -> tuple[AttributeModel | EnsembleModel, ModelInfo]:
    """Rebuild the model a file describes and load its weights (float32, eval mode).

    ``path`` is any MODEL reference :meth:`ModelFile.resolve` accepts.
    """
    from safetensors.torch import load

    file = ModelFile.resolve(path)
    p = file.path
    if file.format == "onnx":
        raise ModelError(
            f"{p} is an ONNX file: it runs through ONNX Runtime only, not as a PyTorch model.",
            'Predict or evaluate it with `backend="onnx"` (or `backend="auto"`); for training, '
            'Grad-CAM or `backend="torch"`, use the .safetensors model it was exported from.',
        )
    info = file.info
    try:
        model = _build(info)
    except FaceAttrError as e:
        raise ModelError(
            f"{p} needs architecture {_arch_names(info)} (img_size {info.img_size}), which this "
            f"installation cannot build: {e.message}",
            f"The file was written by faceattr {info.faceattr_version}; upgrading faceattr "
            "and timm/torchvision usually helps.",
        ) from e
    blob, _ = file.read_verified()
    try:
        state = load(blob)
    except Exception as e:
        raise ModelError(f"Cannot read the tensors of {p} (truncated or corrupt?): {e}") from e
    own = model.state_dict()
    state = {
        k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v)
        for k, v in state.items()
    }
    problems = _mismatch_summary(model, state)
    if problems:
        raise ModelError(
            f"The tensors in {p} do not match architecture {info.arch!r} with "
            f"{len(info.attributes)} attributes and num_features={info.num_features}: "
            f"{problems}.",
            "The file's header and weights disagree; re-export it with `faceattr train` "
            "or check that it was not edited.",
        )
    model.load_state_dict(state, strict=True)
    model.tta = info.tta
    model.to(device).eval()
    return model, info
