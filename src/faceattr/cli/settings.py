"""The options that set TrainConfig fields and that several commands share (train and finetune;
eval, export, ensemble and data), each declared once with :func:`faceattr.cli.options.setting`.

An option declared here is None when not given: train then uses the config's default (shown in
--help from the dataclasses), finetune the parent run's value. Options only one command has
are declared in that command's signature, with :func:`~faceattr.cli.options.setting` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faceattr.cli.options import WORKERS_HELP, choice, setting, setting_argument
from faceattr.config import (
    AUGMENT_PRESETS,
    CACHE_MODES,
    CROP_MODES,
    DEFAULT_AUGMENT,
    LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    THRESHOLD_METRICS,
    TTA_MODES,
    default_lr,
)
from faceattr.data.registry import DATASETS, dataset_names

# The panels of `train --help`.
TRAIN_HELP = "Training"
DATA_HELP = "Data"
AUG_HELP = "Augmentation"
MODEL_HELP = "Model"
RUN_HELP = "Run"


def _lr_defaults() -> str:
    """ "0.001 for adam/adamw, 0.05 for sgd": config.default_lr of every optimizer."""
    by_lr: dict[float, list[str]] = {}
    for name in OPTIMIZERS:
        by_lr.setdefault(default_lr(name), []).append(name)
    return ", ".join(f"{lr:g} for {'/'.join(names)}" for lr, names in by_lr.items())


# Data: the dataset and how its images are read.
DATASET_HELP = "Dataset format: " + "; ".join(f"{s.name}: {s.summary}" for s in DATASETS.values())
DatasetOption = Annotated[
    str | None,
    setting("data.dataset", "--dataset", **choice(dataset_names()),
            help=f"{DATASET_HELP} (default: {{default}})."),
]  # fmt: skip
DatasetArgument = Annotated[
    str,
    setting_argument("data.dataset", "DATASET", **choice(dataset_names(), "DATASET"),
                     help=f"{DATASET_HELP}."),
]  # fmt: skip
CropOption = Annotated[
    str | None,
    setting(
        "data.crop",
        "--crop",
        **choice(CROP_MODES),
        help="Part of each image the model sees: band (CelebA's face band, rows 20-198 of the "
        "218-row aligned crop: on CelebA's 178x218 images the central 178x178 square), full "
        "(the whole image, squashed to a square), or auto (the dataset's default). square is "
        "the old name of band.",
    ),
]
CacheOption = Annotated[
    str | None,
    setting(
        "data.cache",
        "--cache",
        **choice(CACHE_MODES),
        help="auto: read pixels from a `faceattr data prepare` cache when one matches; "
        "off: always decode the image files (default: {default}).",
    ),
]
LabelsOption = Annotated[
    Path | None,
    setting("data.labels", "--labels", help="csv: the labels file (default ROOT/labels.csv)."),
]
# eval, export, ensemble: the threads that decode the dataset's images.
DataWorkers = Annotated[int | None, setting("data.workers", "--workers", help=WORKERS_HELP)]
Attributes = Annotated[
    str | None,
    setting(
        "data.attributes",
        "--attributes",
        help="Comma-separated attribute names (case-insensitive), e.g. Male,Smiling. "
        "Default: all the dataset has.",
        panel=DATA_HELP,
    ),
]
# train, data stats: the validation carve (data stats shows the split train will use).
ValidFraction = Annotated[
    float | None,
    setting(
        "data.valid_fraction",
        "--valid-fraction",
        panel=DATA_HELP,
        help="Validation share carved out of train when the data has no validation "
        "split (by identity when known) (default: {default}).",
    ),
]
Sample = Annotated[
    int | None,
    setting("data.sample", "--sample", panel=DATA_HELP,
            help="Train on a seeded random subset of N training images."),
]  # fmt: skip

# Training.
Epochs = Annotated[
    int | None,
    setting("epochs", "--epochs", panel=TRAIN_HELP,
            help="Epochs (train default: {default}; finetune: the parent's)."),
]  # fmt: skip
BatchSize = Annotated[
    int | None,
    setting("batch_size", "--batch-size", panel=TRAIN_HELP,
            help="Batch size (train default: {default})."),
]  # fmt: skip
Lr = Annotated[
    float | None,
    setting("optim.lr", "--lr", panel=TRAIN_HELP, default=_lr_defaults(),
            help="Peak learning rate (train default: {default}; finetune: the parent's / 10)."),
]  # fmt: skip
Opt = Annotated[
    str | None,
    setting("optim.optimizer", "--optimizer", **choice(OPTIMIZERS), panel=TRAIN_HELP,
            help="Optimizer (train default: {default})."),
]  # fmt: skip
Sched = Annotated[
    str | None,
    setting("optim.scheduler", "--scheduler", **choice(SCHEDULERS), panel=TRAIN_HELP,
            help="Learning-rate schedule, stepped per batch: cosine (optional warm-up, then "
            "down to 1% of --lr), cyclic (each epoch a triangle from --lr/10 up to --lr and "
            "back, the peak halving every epoch), onecycle (up to --lr over the warm-up, then "
            "down to near 0) or none (--lr throughout); docs/training.md (train default: "
            "{default})."),
]  # fmt: skip
LossOpt = Annotated[
    str | None,
    setting("optim.loss", "--loss", **choice(LOSSES), panel=TRAIN_HELP,
            help="bce, weighted-bce (class weights from training positive rates) or focal "
            "(train default: {default})."),
]  # fmt: skip
BalanceGroups = Annotated[
    str | None,
    setting("optim.balance_groups", "--balance-groups", panel=TRAIN_HELP,
            help="Against subgroup bias: TARGET|BY[,BY...], several joined by ; (e.g. "
            "Male|Heavy_Makeup,Wearing_Lipstick): in TARGET's loss every combination of the BY "
            "labels weighs the same within each class of TARGET, from the training labels; "
            "other losses unchanged (docs/fairness.md). An empty value turns it off (finetune)."),
]  # fmt: skip
BalanceMaxWeight = Annotated[
    float | None,
    setting("optim.balance_max_weight", "--balance-max-weight", panel=TRAIN_HELP,
            help="--balance-groups: the most one image may weigh; a smaller combination gets "
            "this and the others of its class share the rest (train default: {default})."),
]  # fmt: skip
WeightDecay = Annotated[
    float | None,
    setting("optim.weight_decay", "--weight-decay", panel=TRAIN_HELP,
            help="Weight decay (train default: {default})."),
]  # fmt: skip
Warmup = Annotated[
    float | None,
    setting("optim.warmup_epochs", "--warmup-epochs", panel=TRAIN_HELP,
            help="Warm-up epochs (cosine/onecycle; cyclic has none) (train default: "
            "{default})."),
]  # fmt: skip
BackboneLrMult = Annotated[
    float | None,
    setting("optim.backbone_lr_mult", "--backbone-lr-mult", panel=TRAIN_HELP,
            help="Backbone learning rate = lr x this (discriminative fine-tuning) "
            "(train default: {default})."),
]  # fmt: skip
Patience = Annotated[
    int | None,
    setting("patience", "--patience", panel=TRAIN_HELP,
            help="Stop after N epochs without validation improvement."),
]  # fmt: skip
Ema = Annotated[
    float | None,
    setting("ema", "--ema", panel=TRAIN_HELP,
            help="Keep an exponential moving average of the weights with this decay per step "
            "(e.g. 0.998) and validate/save it; 0 = off (train default: {default})."),
]  # fmt: skip
TtaOpt = Annotated[
    str | None,
    setting("tta", "--tta", **choice(TTA_MODES), panel=TRAIN_HELP,
            help="Test-time augmentation stored in the model: flip averages each face with its "
            "mirror image (2x inference cost) (train default: {default})."),
]  # fmt: skip
Qat = Annotated[
    bool | None,
    setting("qat", "--qat/--no-qat", panel=TRAIN_HELP,
            help="Quantization-aware training: train with int8 rounding simulated in the "
            "graph, so that `faceattr export --int8` of the run keeps its accuracy and the "
            "scales it learned; best as a short `finetune --qat` of a trained run "
            "(docs/distill.md) ({default} by default)."),
]  # fmt: skip
TuneThresholds = Annotated[
    bool | None,
    setting("tune_thresholds", "--tune-thresholds/--no-tune-thresholds", panel=TRAIN_HELP,
            help="Tune one decision threshold per attribute on the validation split; one is "
            "stored only where it beats 0.5 under cross-validation, the others stay 0.5 "
            "({default} by default)."),
]  # fmt: skip
ThresholdMetricOpt = Annotated[
    str | None,
    setting("threshold_metric", "--threshold-metric", **choice(THRESHOLD_METRICS),
            panel=TRAIN_HELP, help="What tuned thresholds maximise: accuracy, or "
            "balanced_accuracy / f1 to find more of the rare attributes (train default: "
            "{default})."),
]  # fmt: skip
ThresholdDrop = Annotated[
    float | None,
    setting("threshold_accuracy_drop", "--threshold-accuracy-drop", panel=TRAIN_HELP,
            help="balanced_accuracy/f1: a tuned threshold may cost its attribute at most "
            "this much accuracy against 0.5 (train default: {default}; 1 = no limit)."),
]  # fmt: skip

# Augmentation: a preset, adjusted by the flags after it.
Augment = Annotated[
    str | None,
    setting("augment", "--augment", **choice(tuple(AUGMENT_PRESETS)), panel=AUG_HELP,
            default=DEFAULT_AUGMENT,
            help="Preset: none, flip, light (flip, crop, shift, colour) or strong (+ rotation, "
            "erasing). The flags below adjust it (train default: {default}; finetune: the "
            "parent's)."),
]  # fmt: skip
Hflip = Annotated[
    bool | None,
    setting("augment.hflip", "--hflip/--no-hflip", panel=AUG_HELP,
            help="Random horizontal flips (default: as --augment says; on in light and strong)."),
]  # fmt: skip
RandomCrop = Annotated[
    float | None,
    setting("augment.crop_scale", "--random-crop", panel=AUG_HELP,
            help="Random crop: zoom in by up to this fraction (e.g. 0.1)."),
]  # fmt: skip
Shift = Annotated[
    float | None,
    setting("augment.shift", "--shift", panel=AUG_HELP,
            help="Random shift, fraction of the side."),
]  # fmt: skip
Rotation = Annotated[
    float | None,
    setting("augment.rotation", "--rotation", panel=AUG_HELP, help="Random rotation, +-degrees."),
]  # fmt: skip
ColorJitter = Annotated[
    float | None,
    setting("augment.brightness", "--color-jitter", panel=AUG_HELP,
            help="Brightness/contrast/saturation jitter (0.2 = +-20%)."),
]  # fmt: skip
Erasing = Annotated[
    float | None,
    setting("augment.erasing", "--erasing", panel=AUG_HELP,
            help="Probability of a random erased patch (occlusion)."),
]  # fmt: skip

# Run: where and how.
Device = Annotated[
    str | None,
    setting("device", "--device", panel=RUN_HELP,
            help="auto (CUDA when present), cpu, cuda, cuda:N, mps (default: {default})."),
]  # fmt: skip
Seed = Annotated[
    int | None,
    setting("seed", "--seed", panel=RUN_HELP, help="Random seed (train default: {default})."),
]  # fmt: skip
Workers = Annotated[
    int | None,
    setting("data.workers", "--workers", panel=RUN_HELP,
            help="Image decoding processes (default: min(4, CPUs))."),
]  # fmt: skip

# Videos (predict): how a video, camera or stream is read and its faces followed
# (faceattr.video.pipeline.VideoOptions; docs/video.md). Ranges: config.NUMBER_LIMITS.
VIDEO_HELP = "Videos"
EveryOption = Annotated[
    int,
    typer.Option(rich_help_panel=VIDEO_HELP,
                 help="Search every Nth frame processed for faces; the frames between carry "
                 "each face along its track's motion (faster, fewer frames per track)."),
]  # fmt: skip
StartOption = Annotated[
    float, typer.Option(rich_help_panel=VIDEO_HELP, help="Start at this many seconds.")
]
EndOption = Annotated[
    float | None,
    typer.Option(rich_help_panel=VIDEO_HELP, help="Stop at this many seconds (default: the end)."),
]
FpsOption = Annotated[
    float | None,
    typer.Option(rich_help_panel=VIDEO_HELP,
                 help="Process at most this many frames a second (default: every frame)."),
]  # fmt: skip
MaxFramesOption = Annotated[
    int | None,
    typer.Option(rich_help_panel=VIDEO_HELP, help="Stop after this many frames processed."),
]
TrackGapOption = Annotated[
    float,
    typer.Option(rich_help_panel=VIDEO_HELP,
                 help="A face unseen for longer than this many seconds ends its track."),
]  # fmt: skip
FramesOption = Annotated[
    bool,
    typer.Option("--frames", rich_help_panel=VIDEO_HELP,
                 help="Add each frame's faces to --json (frame_results) and write --csv one "
                 "row per face and frame instead of one per track."),
]  # fmt: skip
SourceOption = Annotated[
    str | None,
    typer.Option(rich_help_panel=VIDEO_HELP,
                 help="Read a camera (0, 1, ... or a device such as /dev/video0) or a stream "
                 "(rtsp://, http(s)://) until it ends or Ctrl-C; with --json one JSON line per "
                 "track as it ends, then the summary."),
]  # fmt: skip
