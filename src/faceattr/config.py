"""Settings of a training run, as frozen dataclasses.

The resolved :class:`TrainConfig` is written to every run directory as ``config.json``; it is
enough to rebuild the model and to resume or fine-tune the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Fractions (left, top, right, bottom) of the image kept before resizing: the central
# 178x178 square of CelebA's 178x218 aligned crops (rows 20..198), i.e. the face without
# most of the background. Fractions, not pixels, so the half-size 89x109 copies work too.
CELEBA_CROP: tuple[float, float, float, float] = (0.0, 20 / 218, 1.0, 198 / 218)
FULL_IMAGE: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
# Default crop per dataset: WFLW faces are already cut out by their box (with a margin), and
# custom images have no known framing, so both keep the whole (face) image.
DATASET_CROPS: dict[str, tuple[float, float, float, float]] = {
    "celeba": CELEBA_CROP,
    "wflw": FULL_IMAGE,
    "csv": FULL_IMAGE,
}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "celeba"  # celeba | wflw | csv
    root: str = ""
    labels: str | None = None  # labels CSV for --dataset csv
    attributes: tuple[str, ...] | None = None  # None = all the dataset has
    sample: int | None = None  # random subset of the training split (seeded)
    valid_fraction: float = 0.1  # carved out of train when the data has no validation split
    split_seed: int = 0  # seed of that carve: fixed so eval sees the same held-out identities
    img_size: int = 128  # model input, pixels (square)
    # Fractions of the (face) image kept before resizing; None = the dataset's default
    # (DATASET_CROPS), filled in on construction so a saved config always holds the value.
    crop: tuple[float, float, float, float] | None = None
    workers: int | None = None  # DataLoader workers; None = min(4, CPUs)
    cache: str = "auto"  # auto | off: use a `data prepare` cache when one matches
    face_margin: float = 0.25  # wflw: crop = face box made square + this fraction per side

    def __post_init__(self) -> None:
        if self.crop is None:
            object.__setattr__(self, "crop", DATASET_CROPS.get(self.dataset, CELEBA_CROP))


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True  # random horizontal flip (p=0.5)
    crop_scale: float = 0.0  # random crop: zoom in by up to this fraction (0.1 = 10%)
    shift: float = 0.0  # random translation, fraction of the image side
    rotation: float = 0.0  # random rotation, +-degrees
    brightness: float = 0.0  # brightness/contrast/saturation jitter strength (0.2 = +-20%)
    erasing: float = 0.0  # probability of a random erased rectangle (occlusion)

    @property
    def enabled(self) -> bool:
        return bool(
            self.hflip
            or self.crop_scale
            or self.shift
            or self.rotation
            or self.brightness
            or self.erasing
        )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "celebnet"
    num_features: int = 512  # hidden width of the attribute head (0 = linear head)
    dropout: float = 0.2
    pretrained: bool = False  # ImageNet weights through timm/torchvision (needs network)
    weights: str | None = None  # local backbone weights file (.pth/.pt/.safetensors)
    freeze_backbone: bool = False  # linear probe: only the head trains


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | cyclic | onecycle | none
    warmup_epochs: float = 0.0
    loss: str = "bce"  # bce | weighted-bce | focal
    focal_gamma: float = 2.0
    backbone_lr_mult: float = 1.0  # backbone lr = lr * this (discriminative fine-tuning)


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 10
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # mixed precision where the device supports it (CUDA)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    seed: int = 0
    patience: int | None = None  # early stopping: epochs without validation improvement
    # Exponential moving average of the weights (decay per optimiser step, e.g. 0.998; 0 = off);
    # when on, validation, the best-epoch choice and the saved model files use the EMA weights.
    ema: float = 0.0
    tta: str = "none"  # test-time augmentation recorded in the model: none | flip (TTA_MODES)
    tune_thresholds: bool = True
    threshold_metric: str = "balanced_accuracy"  # balanced_accuracy | accuracy | f1
    # Tuned thresholds may cost each attribute at most this much accuracy (None: no limit).
    threshold_accuracy_drop: float | None = 0.02
    out: str = ""  # run directory
    parent: str | None = None  # run this one was fine-tuned from
    unfreeze: str | None = None  # finetune: number of backbone groups unfrozen, or "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``to_dict`` output; unknown keys are ignored (newer/older versions)."""
        parts = {
            "data": DataConfig,
            "model": ModelConfig,
            "optim": OptimConfig,
            "augment": AugmentConfig,
        }
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            if f.name in parts:
                kwargs[f.name] = _build(parts[f.name], data[f.name])
            else:
                kwargs[f.name] = data[f.name]
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        from faceattr.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_changes(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            continue
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)
