"""Settings of a training run, as frozen dataclasses.

The resolved :class:`TrainConfig` is written to every run directory as ``config.json``; it is
enough to rebuild the model and to resume or fine-tune the run.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

# A crop: fractions (left, top, right, bottom) of the image kept before resizing. Fractions,
# not pixels, so CelebA's half-size 89x109 copies work too.
Crop = tuple[float, float, float, float]
# CelebA's face band: rows 20..198 of the 218-row aligned crops, all columns. On CelebA's
# 178x218 images that is the central 178x178 square (the face without most of the background).
CELEBA_CROP: Crop = (0.0, 20 / 218, 1.0, 198 / 218)
FULL_IMAGE: Crop = (0.0, 0.0, 1.0, 1.0)
# `--crop` values: None = the dataset's default (DATASET_CROPS). "square" is the old name of
# "band", kept so existing commands still work.
CROP_MODES: dict[str, Crop | None] = {
    "auto": None,
    "band": CELEBA_CROP,
    "full": FULL_IMAGE,
    "square": CELEBA_CROP,
}
# The part of each image a model of a dataset format sees by default (DataConfig.crop when none
# is given; a format not listed gets CelebA's band). WFLW faces are already cut out by their
# box (with a margin): keep the whole cut; a csv dataset's framing is unknown: the whole image.
DATASET_CROPS: dict[str, Crop] = {"celeba": CELEBA_CROP, "wflw": FULL_IMAGE, "csv": FULL_IMAGE}

# The allowed values of the string settings below, each listed once; the CLI's choices and
# the core's checks both read these.
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("cosine", "cyclic", "onecycle", "none")
LOSSES: tuple[str, ...] = ("bce", "weighted-bce", "focal")
THRESHOLD_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1")
# Folds of the cross-validation that decides, per attribute, whether a tuned threshold ships:
# its out-of-fold score must beat 0.5's by more than chance (a paired sign-flip test of
# THRESHOLD_DRAWS draws at THRESHOLD_SIGNIFICANCE; metrics.choose_thresholds).
THRESHOLD_FOLDS = 5
THRESHOLD_DRAWS = 2000
THRESHOLD_SIGNIFICANCE = 0.05
TTA_MODES: tuple[str, ...] = ("none", "flip")  # test-time augmentation (AttributeModel.tta)
ENSEMBLE_DTYPES: tuple[str, ...] = ("float32", "float16")  # `faceattr ensemble --dtype`
CACHE_MODES: tuple[str, ...] = ("auto", "off")
# How predict/eval run a model: auto (ONNX Runtime for .onnx files and the default model,
# PyTorch for run directories and .safetensors files), onnx, or torch.
BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")
EXPORT_FORMATS: tuple[str, ...] = ("onnx",)  # `faceattr export --format`
# `faceattr export` defaults: train images int8 calibrates on, held-out images it is checked
# on at most, and the points of mean accuracy int8 may lose against fp32.
EXPORT_CALIBRATION_IMAGES = 300
EXPORT_CHECK_IMAGES = 2000
EXPORT_MAX_ACCURACY_DROP = 0.2
# Faces per model call in predict; chosen by measurement on a 2-core CPU
# (benchmarks/bench_predict.py): larger batches were no faster per image.
PREDICT_BATCH_SIZE = 16
EVAL_BATCH_SIZE = 64  # images per model call in eval
# Decoded pixels predict and index hold at once (the pipeline's memory budget, whatever
# --workers says): a new image is decoded only while the pixels of those in flight plus its
# own stay under it; a larger image goes alone. 100 million: one 48-megapixel photo and a
# few phone photos beside it; about 17 bytes a pixel, 1.7 GB (benchmarks/bench_memory.py).
PIPELINE_PIXELS = 100_000_000
# Seconds a face may go unseen before its track ends (videos, cameras, streams): a blink, a
# turn of the head or a person walking past keeps the track; someone who leaves ends it.
VIDEO_TRACK_GAP = 1.0

# Faces whose box is shorter than this many pixels are dropped (predict, index, the detectors).
MIN_FACE_SIZE = 20.0
# `faceattr serve` and faceattr.serve.create_app: faces per model call across requests, the
# wait for a batch to fill (ms), predict requests in progress at once, the largest body (MB).
SERVE_MAX_BATCH = 32
SERVE_MAX_WAIT_MS = 5.0
SERVE_MAX_QUEUE = 64
SERVE_MAX_BODY_MB = 32.0


def default_lr(optimizer: str) -> float:
    """Peak learning rate when none is given: SGD needs a much larger one than Adam(W)."""
    return 0.05 if optimizer == "sgd" else 1e-3


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "celeba"  # a name registered in faceattr.data.registry.DATASETS
    root: str = ""
    labels: str | None = None  # labels CSV for --dataset csv
    attributes: tuple[str, ...] | None = None  # None = all the dataset has
    sample: int | None = None  # random subset of the training split (seeded)
    valid_fraction: float = 0.1  # carved out of train when the data has no validation split
    split_seed: int = 0  # seed of that carve: fixed so eval sees the same held-out identities
    img_size: int = 128  # model input, pixels (square)
    # Fractions of the (face) image kept before resizing; None = the dataset's default
    # (DATASET_CROPS), filled in on construction so a saved config holds the value.
    crop: Crop | None = None
    workers: int | None = None  # DataLoader workers; None = min(4, CPUs)
    cache: str = "auto"  # CACHE_MODES: auto = use a `data prepare` cache when one matches
    face_margin: float = 0.25  # wflw: crop = face box made square + this fraction per side

    def __post_init__(self) -> None:
        if self.crop is None:  # an unknown dataset name fails when the data is read
            object.__setattr__(self, "crop", DATASET_CROPS.get(self.dataset, CELEBA_CROP))


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; every field's default is "off" (see AUGMENT_PRESETS)."""

    hflip: bool = False  # random horizontal flip (p=0.5)
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


# `faceattr tune`: what a study maximises, how it samples, how it prunes.
TUNE_METRICS = ("mean_accuracy", "mean_balanced_accuracy", "strict_accuracy")
TUNE_SAMPLERS = ("tpe", "random", "grid")
TUNE_PRUNERS = ("median", "none")

# Images per split (train, valid, test) of `faceattr data fetch synthetic`: enough for
# `faceattr train --arch celebnet --epochs 3` under the default settings to learn clearly.
SYNTHETIC_SIZES = (2000, 300, 300)

# `--augment` presets. The default (DEFAULT_AUGMENT) is what the shipped model was trained with.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "flip": AugmentConfig(hflip=True),
    "light": AugmentConfig(hflip=True, crop_scale=0.1, shift=0.05, brightness=0.2),
    "strong": AugmentConfig(hflip=True, crop_scale=0.15, shift=0.08, rotation=15.0,
                            brightness=0.3, erasing=0.25),
}  # fmt: skip
DEFAULT_AUGMENT = "light"


def augment_preset(name: str) -> AugmentConfig:
    """The preset called ``name``; a UsageError listing them otherwise."""
    if name not in AUGMENT_PRESETS:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("augmentation preset", name, tuple(AUGMENT_PRESETS))
    return AUGMENT_PRESETS[name]


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "celebnet"
    num_features: int = 512  # hidden width of the attribute head (0 = linear head)
    dropout: float = 0.2
    pretrained: bool = False  # ImageNet weights through timm/torchvision (needs network)
    weights: str | None = None  # local backbone weights file (.pth/.pt/.safetensors)
    # Map the weights file's tensors onto the backbone by position when their names are in a
    # layout faceattr does not recognise (the ordered shapes must agree).
    weights_by_order: bool = False
    freeze_backbone: bool = False  # linear probe: only the head trains


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # OPTIMIZERS
    # Peak learning rate; None = default_lr(optimizer), filled in on construction.
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # SCHEDULERS, stepped per batch
    warmup_epochs: float = 0.0
    loss: str = "bce"  # LOSSES
    focal_gamma: float = 2.0
    # Subgroup specs ("Male|Heavy_Makeup,Wearing_Lipstick", faceattr.subgroups): every cell of
    # the target's label x the groups' labels weighs the same in the target's loss
    # (losses.GroupBalance, from the training labels); None or "" = off.
    balance_groups: str | None = None
    balance_max_weight: float = 10.0  # cap on one image's group weight (tiny cells)
    backbone_lr_mult: float = 1.0  # backbone lr = lr * this (discriminative fine-tuning)

    def __post_init__(self) -> None:
        if self.lr is None:
            object.__setattr__(self, "lr", default_lr(self.optimizer))


@dataclass(frozen=True)
class DistillConfig:
    """`faceattr distill`: a teacher's logits as soft targets (docs/distill.md)."""

    teacher: str | None = None  # model file, run directory or ensemble; None = no teacher
    # Recorded when the run starts (resume refuses a teacher whose weights changed).
    teacher_digest: str | None = None
    # loss = alpha * label loss + (1 - alpha) * T^2 * binary KL(teacher_T || student_T)
    alpha: float = 0.5
    temperature: float = 2.0
    unlabeled: tuple[str, ...] = ()  # folders of face images without labels
    unlabeled_aligned: bool = False  # they are aligned crops already (no detection)


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=lambda: AUGMENT_PRESETS[DEFAULT_AUGMENT])
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = 10
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # mixed precision where the device supports it (CUDA)
    # Channels-last memory format; None: on for the CPU and CUDA, where it measured faster
    # (EfficientNet-Lite0 training on a 2-core CPU: 2x), off elsewhere.
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # distributed on CUDA: batch-norm statistics over all processes
    # Processes the run trained with (torchrun); recorded by fit(). --batch-size is per
    # process, so the global batch is batch_size * world_size.
    world_size: int = 1
    seed: int = 0
    patience: int | None = None  # early stopping: epochs without validation improvement
    # Exponential moving average of the weights (decay per optimiser step, e.g. 0.998; 0 = off);
    # when on, validation, the best-epoch choice and the saved model files use the EMA weights.
    ema: float = 0.0
    tta: str = "none"  # test-time augmentation recorded in the model (TTA_MODES)
    qat: bool = False  # fake int8 quantization in the graph (models.qat; export --int8)
    # Tune a threshold per attribute on the validation split; one ships only where it beats
    # 0.5 under cross-validation (metrics.choose_thresholds), the others stay at 0.5.
    tune_thresholds: bool = True
    threshold_metric: str = "accuracy"  # THRESHOLD_METRICS
    # balanced_accuracy / f1: a tuned threshold may cost its attribute at most this much
    # accuracy against 0.5 (None: no limit).
    threshold_accuracy_drop: float | None = 0.02
    out: str = ""  # run directory
    parent: str | None = None  # run this one was fine-tuned from
    unfreeze: str | None = None  # finetune: number of backbone groups unfrozen, or "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from ``to_dict`` output; unknown keys are ignored (newer/older versions).
        A ModelError names every value of the wrong type, outside its range (:data:`LIMITS`)
        or not among its choices (:func:`config_problems`)."""
        problems = config_problems(data)
        if problems:
            from faceattr.errors import ModelError

            raise ModelError(f"Invalid training settings: {'; '.join(problems)}.")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            if f.name in SECTIONS:
                kwargs[f.name] = _build(SECTIONS[f.name], data[f.name])
            else:
                kwargs[f.name] = data[f.name]
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        from faceattr.fileio import atomic_write_text
        from faceattr.utils import to_json

        atomic_write_text(path, to_json(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """The config a run saved; a ModelError naming the file when it is unreadable or not
        a TrainConfig."""
        from faceattr.errors import ModelError

        hint = (
            "It is the run's resolved settings, written by `faceattr train`; restore it from a "
            "backup or start a new run."
        )
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelError(f"Cannot read the run's settings {path}: {e}", hint) from e
        problems = config_problems(data)
        if problems:
            raise ModelError(f"{path} is not a faceattr run's settings: {'; '.join(problems)}.",
                             hint)  # fmt: skip
        return cls.from_dict(data)


def field_default(key: str) -> Any:
    """The declared default of a TrainConfig setting (``"epochs"``, ``"optim.lr"``), read from
    the dataclasses without building one (for help texts)."""
    section, _, name = key.rpartition(".")
    cls = SECTIONS[section] if section else TrainConfig
    return {f.name: f.default for f in fields(cls)}[name]


# The nested parts of a TrainConfig, by field name.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "augment": AugmentConfig,
    "distill": DistillConfig,
}


@dataclass(frozen=True)
class Limit:
    """The allowed range of a number: ``low``/``high`` (None: unbounded), each end included
    unless ``low_open``/``high_open``. NaN and infinities are never allowed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def allows(self, value: float) -> bool:
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (
            self.high is not None and (v > self.high or (self.high_open and v == self.high))
        )


# The numeric settings' ranges, each listed once: build_config / with_overrides check them, and
# the CLI checks the options that set them (and the commands' other numbers, NUMBER_LIMITS).
LIMITS: dict[str, Limit] = {
    "data.sample": Limit(1),
    "data.valid_fraction": Limit(0, 1, low_open=True, high_open=True),
    "data.img_size": Limit(16, 4096),
    "data.workers": Limit(0),
    "model.num_features": Limit(0, 65536),  # a model file asking for more is refused
    "model.dropout": Limit(0, 1, high_open=True),
    "optim.lr": Limit(0, 10, low_open=True),
    "optim.weight_decay": Limit(0, 1),
    "optim.momentum": Limit(0, 1, high_open=True),
    "optim.warmup_epochs": Limit(0),
    "optim.focal_gamma": Limit(0, 10),
    "optim.balance_max_weight": Limit(1, 1000),
    "optim.backbone_lr_mult": Limit(0),
    "augment.crop_scale": Limit(0, 1, high_open=True),
    "augment.shift": Limit(0, 0.5),
    "augment.rotation": Limit(0, 180),
    "augment.brightness": Limit(0, 1),
    "augment.erasing": Limit(0, 1),
    "distill.alpha": Limit(0, 1),
    "distill.temperature": Limit(0, 100, low_open=True),
    "epochs": Limit(1),
    "batch_size": Limit(1),
    "patience": Limit(1),
    "ema": Limit(0, 1, high_open=True),
    "threshold_accuracy_drop": Limit(0, 1),
}
# The other numbers of the commands, by option name (the Python name of its parameter),
# checked as the settings' are; the library checks some of them too.
NUMBER_LIMITS: dict[str, Limit] = {
    "threshold": Limit(0, 1),  # predict, eval: a decision threshold is a probability
    "fail_under": Limit(0, 1),  # eval: metrics are fractions
    "batch_size": Limit(1),  # predict, eval: images per model call
    "workers": Limit(0),  # predict, index: decoding threads (0: none)
    "min_score": Limit(0, 1),  # predict, index: the face finding
    "min_face_size": Limit(0),
    "max_faces": Limit(1),
    "max_pixels": Limit(1),  # predict
    "top": Limit(0),  # predict: rows per face (0: all)
    "every": Limit(1),  # predict (videos): search every Nth frame processed for faces
    "start": Limit(0),  # predict (videos): seconds
    "end": Limit(0, low_open=True),
    "fps": Limit(0, low_open=True),  # predict (videos): frames processed per second
    "max_frames": Limit(1),
    "track_gap": Limit(0),  # predict (videos): seconds a track may go unseen
    "limit": Limit(0),  # search: faces (0: all)
    "max_accuracy_drop": Limit(0, 100),  # export: points of mean accuracy
    "calibration_images": Limit(16),
    "eval_images": Limit(0),  # 0: all
    "gap": Limit(0),  # report: points of accuracy
    "gallery": Limit(0),
    "gradcam": Limit(0),
    "trials": Limit(1),  # tune
    "nproc": Limit(1),  # train: processes
    "n_train": Limit(1),  # data fetch synthetic: images per split
    "n_valid": Limit(1),
    "n_test": Limit(1),
    "top_pairs": Limit(1),  # data stats --top
    "port": Limit(0, 65535),  # serve (0: any free port)
    "max_batch": Limit(1),  # serve: faces per model call, across requests
    "max_wait_ms": Limit(0),  # serve: how long a batch waits for more faces
    "max_queue": Limit(1),  # serve: requests admitted at once (more: 503)
    "max_body_mb": Limit(0, low_open=True),  # serve: one request's body
}


def limit_problem(limit: Limit | None, value: Any) -> str | None:
    """Why ``value`` breaks ``limit`` ("must be > 0, got nan"), or None when it is fine."""
    if limit is None or value is None or isinstance(value, bool):
        return None
    try:
        ok = limit.allows(value)
    except (TypeError, ValueError, OverflowError):
        return f"must be a number {limit.describe()}, got {value!r}"
    return None if ok else f"must be {limit.describe()}, got {value!r}"


def check_number(name: str, value: Any, limit: Limit) -> Any:
    """``value`` unchanged, or a UsageError saying that ``name`` breaks ``limit``."""
    problem = limit_problem(limit, value)
    if problem:
        from faceattr.errors import UsageError

        raise UsageError(f"{name} {problem}.")
    return value


def check_limits(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` unchanged, or a UsageError naming every setting outside its range."""
    problems = []
    for key, limit in LIMITS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        problem = limit_problem(limit, value)
        if problem:
            problems.append(f"{key} {problem}")
    if problems:
        from faceattr.errors import UsageError

        raise UsageError("Invalid settings: " + "; ".join(problems) + ".")
    return cfg


def build_config(changes: Mapping[str, Any]) -> TrainConfig:
    """The library's default configuration with ``changes`` applied.

    Keys are TrainConfig fields (``"epochs"``) or ``"section.field"`` (``"optim.lr"``); a None
    value means "not given" and is skipped. ``"augment"`` may be a preset name, which the
    ``"augment.*"`` fields then adjust. Defaults that depend on other settings follow the
    given values: the crop follows ``data.dataset``, the learning rate ``optim.optimizer``.
    """
    top, sections = _group_changes(changes)
    for name, cls in SECTIONS.items():
        values = sections.get(name, {})
        if name in top:
            top[name] = replace(top[name], **values)
        elif name == "augment":
            top[name] = replace(AUGMENT_PRESETS[DEFAULT_AUGMENT], **values)
        else:
            top[name] = cls(**values)  # fresh, so derived defaults are derived again
    return check_limits(TrainConfig(**top))


def with_overrides(cfg: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """``cfg`` with ``changes`` (keys and None as in :func:`build_config`) applied; everything
    not named keeps ``cfg``'s value (fine-tuning inherits its parent's settings this way)."""
    top, sections = _group_changes(changes)
    for name in SECTIONS:
        base = top.get(name, getattr(cfg, name))
        top[name] = replace(base, **sections.get(name, {}))
    return check_limits(replace(cfg, **top))


def _group_changes(changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split flat ``changes`` into top-level fields and per-section fields, without Nones."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    top_names = {f.name for f in fields(TrainConfig)}
    for key, value in changes.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section:
            if section not in SECTIONS or name not in {f.name for f in fields(SECTIONS[section])}:
                raise ValueError(f"No setting {key!r} in TrainConfig.")
            sections.setdefault(section, {})[name] = value
        elif name in top_names:
            top[name] = (
                augment_preset(value) if name == "augment" and isinstance(value, str) else value
            )
        else:
            raise ValueError(f"No setting {key!r} in TrainConfig.")
    return top, sections


# The allowed values of the settings that take a name, by config field.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.cache": CACHE_MODES,
    "optim.optimizer": OPTIMIZERS,
    "optim.scheduler": SCHEDULERS,
    "optim.loss": LOSSES,
    "tta": TTA_MODES,
    "threshold_metric": THRESHOLD_METRICS,
}


def config_problems(data: Any, *, strict: bool = True) -> list[str]:
    """Every way ``data`` (a TrainConfig's ``to_dict``, as read from JSON) is not one: a section
    that is no object, a value of another type than its field's, and with ``strict`` a number
    outside its range (:data:`LIMITS`) or a name not among its choices. Unknown keys are
    allowed, missing ones take their defaults."""
    if not isinstance(data, Mapping):
        return [f"the settings are a JSON {type(data).__name__}, not an object"]
    problems: list[str] = []
    for section, values in [("", data)] + [(s, data[s]) for s in SECTIONS if s in data]:
        if not isinstance(values, Mapping):
            problems.append(f"{section} must be an object, got {_short_repr(values)}")
            continue
        for name, kind in _field_types(SECTIONS[section] if section else TrainConfig).items():
            key = f"{section}.{name}" if section else name
            if name not in values or (name in SECTIONS and not section):
                continue
            value = values[name]
            if not _is_a(value, kind):
                problems.append(f"{key} must be {_describe(kind)}, got {_short_repr(value)}")
            elif not strict:
                continue
            elif key in CHOICES and value not in CHOICES[key]:
                problems.append(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
            elif (problem := limit_problem(LIMITS.get(key), value)) is not None:
                problems.append(f"{key} {problem}")
    return problems


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_a(value: Any, kind: Any) -> bool:
    """Whether a JSON ``value`` fits the annotation ``kind`` (a tuple may be a JSON list)."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_a(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _is_a(v, a) for v, a in zip(value, args, strict=True)
        )
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ')}s"
        return f"a list of {len(args)} numbers"
    names = {int: "a whole number", float: "a number", str: "a text", bool: "true or false",
             type(None): "null"}  # fmt: skip
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _short_repr(value: Any, n: int = 60) -> str:
    if isinstance(value, (dict, list)) and len(value) > 8:
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)}"
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return text if len(text) <= n else text[: n - 3] + "..."


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            continue
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)
