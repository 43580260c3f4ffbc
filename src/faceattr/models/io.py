"""The self-describing model file: safetensors weights + a ``ModelInfo`` JSON header.

One ``.safetensors`` file is enough to predict: its header metadata (key ``"faceattr"``)
holds the architecture, the attribute names, preprocessing (input size, face crop,
normalisation) and decision thresholds. Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from faceattr import __version__
from faceattr.errors import FaceAttrError, ModelError
from faceattr.models.head import TTA_MODES, AttributeModel
from faceattr.models.registry import IMAGENET_MEAN, IMAGENET_STD
from faceattr.runs import resolve_model
from faceattr.utils import publish

METADATA_KEY = "faceattr"
# Bumped only when a reader of the old layout would misread the new one.
FORMAT_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelInfo:
    """Everything besides the weights that a model file needs to rebuild and use the model.

    ``crop`` is (left, top, right, bottom) as fractions of the image width/height, applied
    before resizing to ``img_size``; ``mean``/``std`` normalise RGB in [0, 1].
    ``thresholds`` are per-attribute decision thresholds on probabilities (None: 0.5).
    """

    arch: str
    attributes: list[str]
    num_features: int = 512
    dropout: float = 0.2
    img_size: int = 224
    crop: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 1.0])
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    thresholds: list[float] | None = None
    tta: str = "none"  # test-time augmentation in eval mode: none | flip
    train_positive_rates: list[float] | None = None
    dataset: str = "unknown"
    license: str | None = None
    faceattr_version: str = __version__
    created: str = field(default_factory=_now)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise tuples / numpy values so the JSON round trip is exact.
        self.attributes = [str(a) for a in self.attributes]
        self.crop = [float(v) for v in self.crop]
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        if self.thresholds is not None:
            self.thresholds = [float(v) for v in self.thresholds]
        if self.train_positive_rates is not None:
            self.train_positive_rates = [float(v) for v in self.train_positive_rates]

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def validate(self) -> None:
        """ModelError when the fields contradict each other."""
        a = len(self.attributes)
        problems = []
        if a == 0:
            problems.append("no attributes")
        if len(self.crop) != 4:
            problems.append(f"crop has {len(self.crop)} values, expected 4")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean/std need 3 values (RGB)")
        if self.tta not in TTA_MODES:
            problems.append(f"tta is {self.tta!r}, expected one of {TTA_MODES}")
        for name in ("thresholds", "train_positive_rates"):
            values = getattr(self, name)
            if values is not None and len(values) != a:
                problems.append(f"{name} has {len(values)} values for {a} attributes")
        if problems:
            raise ModelError(f"Invalid model info for arch {self.arch!r}: {'; '.join(problems)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from a dict, ignoring unknown keys (files from newer versions) and filling
        defaults for missing ones (files from older versions)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("arch", "attributes") if k not in kwargs]
        if missing:
            raise ModelError(f"Model info lacks required field(s): {', '.join(missing)}.")
        return cls(**kwargs)


def _state_for_saving(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in model.state_dict().items():
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
    model: AttributeModel,
    info: ModelInfo,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model``'s weights and ``info`` to one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors to make a smaller file; loading
    casts back to float32. The file appears complete or not at all (temp file + fsync +
    ``os.replace``).
    """
    from safetensors.torch import save_file

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
    info.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _state_for_saving(model, dtype)
    metadata = {METADATA_KEY: info.to_json(), "format": "pt",
                "faceattr_format": str(FORMAT_VERSION)}  # fmt: skip
    # Same folder so the final replace is a rename.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for any malformed header
        raise ModelError(
            f"{path} is not a safetensors file (or it is truncated/corrupt): {e}",
            "Pass a model file written by `faceattr train` (model.safetensors), or use "
            "`--model default`.",
        ) from e


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """The :class:`ModelInfo` of a model file, reading only its header.

    ``path`` is any MODEL reference :func:`faceattr.runs.resolve_model` accepts.
    """
    p = resolve_model(path)
    meta = _read_header(p)
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise ModelError(
            f"{p} is a safetensors file but not a faceattr model file (no {METADATA_KEY!r} "
            "metadata in its header).",
            "Train one with `faceattr train`, or use `--model default`. To start training "
            "from a backbone's weights file, pass it with `--weights FILE` instead.",
        )
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ModelError(f"{p}: the faceattr metadata is not valid JSON ({e}).") from e
    info = ModelInfo.from_dict(data)
    info.validate()
    return info


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


def load_model_file(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[AttributeModel, ModelInfo]:
    """Rebuild the model a file describes and load its weights (float32, eval mode).

    ``path`` is any MODEL reference :func:`faceattr.runs.resolve_model` accepts.
    """
    from safetensors.torch import load_file

    from faceattr.models.registry import create_model

    p = resolve_model(path)
    info = read_model_info(p)
    try:
        model = create_model(
            info.arch,
            len(info.attributes),
            num_features=info.num_features,
            dropout=info.dropout,
            pretrained=False,
            img_size=info.img_size,
        )
    except FaceAttrError as e:
        raise ModelError(
            f"{p} needs architecture {info.arch!r} (img_size {info.img_size}), which this "
            f"installation cannot build: {e.message}",
            f"The file was written by faceattr {info.faceattr_version}; upgrading faceattr "
            "and timm/torchvision usually helps.",
        ) from e
    try:
        state = load_file(str(p), device="cpu")
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
