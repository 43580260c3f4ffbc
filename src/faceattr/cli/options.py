"""Options several commands share, and how options become a TrainConfig.

Every option that sets a configuration value defaults to None ("not given");
:func:`config_changes` turns the given ones into changes that
:func:`faceattr.config.build_config` applies to the library's defaults (train, eval, data
prepare) or :func:`faceattr.config.with_overrides` to a parent run's settings (finetune).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from faceattr.config import (
    BACKENDS,
    CACHE_MODES,
    CROP_MODES,
    LIMITS,
    NUMBER_LIMITS,
    TTA_MODES,
    DataConfig,
    Limit,
    build_config,
    field_default,
    limit_problem,
)
from faceattr.data.registry import DATASETS, dataset_names

# Command-line option (its Python parameter name) -> the TrainConfig field it sets.
OPTION_FIELDS: dict[str, str] = {
    "dataset": "data.dataset",
    "root": "data.root",
    "labels": "data.labels",
    "attributes": "data.attributes",
    "sample": "data.sample",
    "valid_fraction": "data.valid_fraction",
    "img_size": "data.img_size",
    "crop": "data.crop",
    "workers": "data.workers",
    "cache": "data.cache",
    "arch": "model.arch",
    "num_features": "model.num_features",
    "dropout": "model.dropout",
    "pretrained": "model.pretrained",
    "weights": "model.weights",
    "weights_by_order": "model.weights_by_order",
    "freeze_backbone": "model.freeze_backbone",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "scheduler": "optim.scheduler",
    "warmup_epochs": "optim.warmup_epochs",
    "loss": "optim.loss",
    "backbone_lr_mult": "optim.backbone_lr_mult",
    "augment": "augment",  # a preset; the flags below adjust it
    "hflip": "augment.hflip",
    "random_crop": "augment.crop_scale",
    "shift": "augment.shift",
    "rotation": "augment.rotation",
    "color_jitter": "augment.brightness",
    "erasing": "augment.erasing",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "device": "device",
    "amp": "amp",
    "channels_last": "channels_last",
    "compile": "compile",
    "sync_bn": "sync_bn",
    "seed": "seed",
    "patience": "patience",
    "ema": "ema",
    "tta": "tta",
    "tune_thresholds": "tune_thresholds",
    "threshold_metric": "threshold_metric",
    "threshold_accuracy_drop": "threshold_accuracy_drop",
    "out_dir": "out",
}


def _attribute_tuple(text: str) -> tuple[str, ...] | None:
    from faceattr.attributes import parse_attribute_list

    names = parse_attribute_list(text)
    return tuple(names) if names else None


# How an option's value becomes the config's (paths are stored as strings).
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "attributes": _attribute_tuple,
    "crop": lambda mode: CROP_MODES[mode],
}


def option_limit(name: str) -> Limit | None:
    """The allowed range of the option ``name`` (its config field's, or its own)."""
    return NUMBER_LIMITS.get(name) or LIMITS.get(OPTION_FIELDS.get(name, ""))


def check_numbers(options: Mapping[str, Any]) -> None:
    """A UsageError (exit 2) naming every numeric option outside its range or not finite:
    the ranges of the config fields the options set (``config.LIMITS``) and of the other
    commands' numbers (``config.NUMBER_LIMITS``)."""
    from faceattr.errors import UsageError

    problems = []
    for name, value in options.items():
        problem = limit_problem(option_limit(name), value)
        if problem:
            problems.append(f"--{name.replace('_', '-')} {problem}")
    if problems:
        raise UsageError("; ".join(problems) + ".")


def config_changes(options: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig changes (``"section.field" -> value``) from a command's options (each
    number checked against its range first)."""
    check_numbers(options)
    changes: dict[str, Any] = {}
    for name, value in options.items():
        if name not in OPTION_FIELDS or value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        changes[OPTION_FIELDS[name]] = _CONVERT.get(name, lambda v: v)(value)
    return changes


def data_config(options: Mapping[str, Any]) -> DataConfig:
    """The DataConfig that data options (``dataset``, ``root``, ``img_size``, ...) describe,
    with the library's defaults for the ones not given."""
    return build_config(config_changes(options)).data


def choice(values: Sequence[str], name: str | None = None) -> dict[str, Any]:
    """``typer.Option``/``typer.Argument`` settings that accept exactly ``values`` (a list the
    core owns, e.g. ``config.OPTIMIZERS``) and show them in --help, so no command restates a
    list. An argument passes its ``name`` (shown instead of the list: say the choices in its
    help)."""
    allowed = tuple(values)

    def parse(text: str) -> str:
        if text not in allowed:
            shown = ", ".join(repr(v) for v in allowed)
            raise typer.BadParameter(f"{text!r} is not one of {shown}.")
        return text

    listed = "|".join(allowed)
    return {"parser": parse, "metavar": name or f"[{listed}]"}


# Options several commands share.
DATASET_HELP = "Dataset format: " + "; ".join(f"{s.name}: {s.summary}" for s in DATASETS.values())
DatasetOption = Annotated[
    str | None,
    typer.Option(
        **choice(dataset_names()),
        help=f"{DATASET_HELP} (default: {field_default('data.dataset')}).",
    ),
]
DatasetArgument = Annotated[
    str, typer.Argument(**choice(dataset_names(), "DATASET"), help=f"{DATASET_HELP}.")
]
CropOption = Annotated[
    str | None,
    typer.Option(
        **choice(CROP_MODES),
        help="Part of each image the model sees: band (CelebA's face band, rows 20-198 of the "
        "218-row aligned crop: on CelebA's 178x218 images the central 178x178 square), full "
        "(the whole image, squashed to a square), or auto (the dataset's default). square is "
        "the old name of band.",
    ),
]
CacheOption = Annotated[
    str | None,
    typer.Option(
        **choice(CACHE_MODES),
        help="auto: read pixels from a `faceattr data prepare` cache when one matches; "
        "off: always decode the image files.",
    ),
]
# eval/predict: override the test-time augmentation stored in the model file.
TtaOverride = Annotated[
    str | None,
    typer.Option(
        **choice(TTA_MODES),
        help="Test-time augmentation: none (faster), or flip (average each face with its "
        "mirror image). Default: the model's own setting.",
    ),
]
# predict/eval: which engine runs the model.
BackendOption = Annotated[
    str,
    typer.Option(
        **choice(BACKENDS),
        help="auto: ONNX Runtime for .onnx files and the default model, PyTorch for run "
        "directories and .safetensors files; onnx or torch to choose (torch needs "
        '`pip install "faceattr\\[train]"`).',
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        help="Threads that decode (and detect and align) images ahead of the model; 0: none "
        "(default: one per core, at most 4).",
        min=0,
    ),
]


# The face-finding options `predict` and `index` share.
DetectorOption = Annotated[
    str | None,
    typer.Option(help="Face detector: retinaface (default), yunet or mtcnn, when installed."),
]
MinScoreOption = Annotated[
    float | None, typer.Option(help="Drop faces the detector scores below this.")
]
MinFaceSizeOption = Annotated[
    float, typer.Option(help="Drop faces smaller than this many pixels (shorter side).")
]
MaxFacesOption = Annotated[
    int | None, typer.Option(help="Keep at most N faces per image (best first).", min=1)
]
