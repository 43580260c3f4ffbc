"""`faceattr train` and `faceattr finetune`."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from faceattr.cli.common import (
    CROPS,
    CropMode,
    RichProgress,
    TtaMode,
    err,
    handle_errors,
    out,
    pct,
    print_json,
)

TRAIN_HELP = "Training"
DATA_HELP = "Data"
AUG_HELP = "Augmentation"
MODEL_HELP = "Model"
RUN_HELP = "Run"


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Scheduler(str, Enum):
    cosine = "cosine"
    cyclic = "cyclic"
    onecycle = "onecycle"
    none = "none"


class Loss(str, Enum):
    bce = "bce"
    weighted_bce = "weighted-bce"
    focal = "focal"


class AugmentPreset(str, Enum):
    none = "none"
    flip = "flip"
    light = "light"
    strong = "strong"


class ThresholdMetric(str, Enum):
    balanced_accuracy = "balanced_accuracy"
    accuracy = "accuracy"
    f1 = "f1"


AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(hflip=False),
    "flip": dict(hflip=True),
    "light": dict(hflip=True, crop_scale=0.1, shift=0.05, brightness=0.2),
    "strong": dict(hflip=True, crop_scale=0.15, shift=0.08, rotation=15.0, brightness=0.3,
                   erasing=0.25),
}  # fmt: skip

# Options shared by train and finetune. In finetune a None default means "as the parent run".
Attributes = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated attribute names (case-insensitive), e.g. Male,Smiling. "
        "Default: all the dataset has.",
        rich_help_panel=DATA_HELP,
    ),
]
Sample = Annotated[
    int | None,
    typer.Option(help="Train on a seeded random subset of N training images.",
                 rich_help_panel=DATA_HELP, min=1),
]  # fmt: skip
Epochs = Annotated[
    int | None,
    typer.Option(
        help="Epochs [train default: 10; finetune: the parent's].",
        rich_help_panel=TRAIN_HELP,
        min=1,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(help="Batch size [train default: 64].", rich_help_panel=TRAIN_HELP, min=1),
]
Lr = Annotated[
    float | None,
    typer.Option(help="Peak learning rate (default 1e-3 for adam/adamw, 0.05 for sgd).",
                 rich_help_panel=TRAIN_HELP),
]  # fmt: skip
Opt = Annotated[
    Optimizer | None,
    typer.Option(help="Optimizer [train default: adamw].", rich_help_panel=TRAIN_HELP),
]
Sched = Annotated[
    Scheduler | None,
    typer.Option(
        help="Learning-rate schedule, stepped per batch [train default: cosine].",
        rich_help_panel=TRAIN_HELP,
    ),
]
LossOpt = Annotated[
    Loss | None,
    typer.Option(help="bce, weighted-bce (class weights from training positive rates) or focal "
                 "[train default: bce].",
                 rich_help_panel=TRAIN_HELP),
]  # fmt: skip
WeightDecay = Annotated[float | None, typer.Option(rich_help_panel=TRAIN_HELP)]
Warmup = Annotated[
    float | None, typer.Option(help="Warm-up epochs (cosine/onecycle).", rich_help_panel=TRAIN_HELP)
]
Patience = Annotated[
    int | None,
    typer.Option(help="Stop after N epochs without validation improvement.",
                 rich_help_panel=TRAIN_HELP, min=1),
]  # fmt: skip
Ema = Annotated[
    float | None,
    typer.Option(help="Keep an exponential moving average of the weights with this decay per "
                 "step (e.g. 0.998) and validate/save it; 0 = off [train default: 0].",
                 rich_help_panel=TRAIN_HELP, min=0.0, max=0.99999),
]  # fmt: skip
TtaOpt = Annotated[
    TtaMode | None,
    typer.Option(help="Test-time augmentation stored in the model: flip averages each face "
                 "with its mirror image (2x inference cost) [train default: none].",
                 rich_help_panel=TRAIN_HELP),
]  # fmt: skip
Augment = Annotated[
    AugmentPreset | None,
    typer.Option(help="Preset: none, flip, light (flip, crop, shift, colour) or strong "
                 "(+ rotation, erasing). The flags below override it [train default: light].",
                 rich_help_panel=AUG_HELP),
]  # fmt: skip
Hflip = Annotated[bool | None, typer.Option("--hflip/--no-hflip", rich_help_panel=AUG_HELP)]
RandomCrop = Annotated[
    float | None,
    typer.Option(
        help="Random crop: zoom in by up to this fraction (0.1).", rich_help_panel=AUG_HELP
    ),
]
Shift = Annotated[
    float | None, typer.Option(help="Random shift, fraction of the side.", rich_help_panel=AUG_HELP)
]
Rotation = Annotated[
    float | None, typer.Option(help="Random rotation, +-degrees.", rich_help_panel=AUG_HELP)
]
ColorJitter = Annotated[
    float | None,
    typer.Option(help="Brightness/contrast/saturation jitter (0.2 = +-20%).",
                 rich_help_panel=AUG_HELP),
]  # fmt: skip
Erasing = Annotated[
    float | None,
    typer.Option(
        help="Probability of a random erased patch (occlusion).", rich_help_panel=AUG_HELP
    ),
]


class CacheMode(str, Enum):
    auto = "auto"
    off = "off"


Cache = Annotated[
    CacheMode,
    typer.Option(help="auto: read pixels from a `faceattr data prepare` cache when one matches; "
                 "off: always decode the image files.", rich_help_panel=RUN_HELP),
]  # fmt: skip
Device = Annotated[
    str,
    typer.Option(
        help="auto (CUDA when present), cpu, cuda, cuda:N, mps.", rich_help_panel=RUN_HELP
    ),
]
Seed = Annotated[int | None, typer.Option(help="Random seed.", rich_help_panel=RUN_HELP)]
Workers = Annotated[
    int | None,
    typer.Option(help="Image decoding processes (default: min(4, CPUs)).", rich_help_panel=RUN_HELP,
                 min=0),
]  # fmt: skip
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]
Amp = Annotated[
    bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.", rich_help_panel=RUN_HELP)
]
BackboneLrMult = Annotated[
    float | None,
    typer.Option(help="Backbone learning rate = lr x this (discriminative fine-tuning).",
                 rich_help_panel=TRAIN_HELP),
]  # fmt: skip
TuneThresholds = Annotated[
    bool | None,
    typer.Option("--tune-thresholds/--no-tune-thresholds",
                 help="Tune one decision threshold per attribute on the validation split "
                 "(stored in the model; on by default).", rich_help_panel=TRAIN_HELP),
]  # fmt: skip
ThresholdDrop = Annotated[
    float | None,
    typer.Option(help="Tuned thresholds may cost an attribute at most this much accuracy "
                 "[train default: 0.02; 1 = no limit].", rich_help_panel=TRAIN_HELP, min=0),
]  # fmt: skip
ThresholdMetricOpt = Annotated[
    ThresholdMetric | None,
    typer.Option(help="What tuned thresholds maximise.", rich_help_panel=TRAIN_HELP),
]


def _augment_changes(preset, hflip, random_crop, shift, rotation, color_jitter, erasing) -> dict:
    values: dict[str, Any] = {}
    if preset is not None:
        values = {"hflip": False, "crop_scale": 0.0, "shift": 0.0, "rotation": 0.0,
                  "brightness": 0.0, "erasing": 0.0}  # fmt: skip
        values.update(AUGMENT_PRESETS[preset.value])
    explicit = dict(hflip=hflip, crop_scale=random_crop, shift=shift, rotation=rotation,
                    brightness=color_jitter, erasing=erasing)  # fmt: skip
    values.update({k: v for k, v in explicit.items() if v is not None})
    return values


def _default_lr(optimizer: str) -> float:
    return 0.05 if optimizer == "sgd" else 1e-3


@handle_errors
def train_command(
    dataset: Annotated[
        str,
        typer.Option(
            help="celeba (any CelebA layout; also the synthetic set), wflw, or "
            "csv (an image folder plus --labels FILE.csv).",
            rich_help_panel=DATA_HELP,
        ),
    ] = "celeba",  # fmt: skip
    root: Annotated[
        Path | None, typer.Option(help="Dataset folder.", rich_help_panel=DATA_HELP)
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="csv: labels file (columns image, optional split, then one 1/0 "
            "column per attribute; blank = unknown). Default ROOT/labels.csv.",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,  # fmt: skip
    arch: Annotated[
        str,
        typer.Option(
            help="celebnet (small CNN from scratch), a torchvision name (mobilenet_v2, "
            "resnet50, densenet121, ...) or any timm name. See --list-archs.",
            rich_help_panel=MODEL_HELP,
        ),
    ] = "celebnet",  # fmt: skip
    sample: Sample = None,
    attributes: Attributes = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    optimizer: Opt = None,
    scheduler: Sched = None,
    loss: LossOpt = None,
    weight_decay: WeightDecay = None,
    warmup_epochs: Warmup = None,
    patience: Patience = None,
    ema: Ema = None,
    tta: TtaOpt = None,
    img_size: Annotated[
        int, typer.Option(help="Input size in pixels (square).", rich_help_panel=DATA_HELP, min=16)
    ] = 128,
    valid_fraction: Annotated[
        float,
        typer.Option(
            help="Validation share carved out of train when the data has no "
            "validation split (by identity when known).",
            rich_help_panel=DATA_HELP,
        ),
    ] = 0.1,  # fmt: skip
    crop: Annotated[
        CropMode,
        typer.Option(
            help="Part of each image the model sees: square (CelebA: the central "
            "178x178 face square), full (the whole image, squashed to a square), or "
            "auto (the dataset's default).",
            rich_help_panel=DATA_HELP,
        ),
    ] = CropMode.auto,  # fmt: skip
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained",
            help="Start from ImageNet weights (downloads; needs network).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = False,  # fmt: skip
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Start the backbone from a local weights file (.pth/.pt/.safetensors).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,  # fmt: skip
    freeze_backbone: Annotated[
        bool,
        typer.Option(
            "--freeze-backbone",
            help="Train only the head (linear probe).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = False,  # fmt: skip
    num_features: Annotated[
        int,
        typer.Option(
            help="Hidden width of the attribute head (0 = linear).",
            rich_help_panel=MODEL_HELP,
            min=0,
        ),
    ] = 512,  # fmt: skip
    dropout: Annotated[float, typer.Option(help="Head dropout.", rich_help_panel=MODEL_HELP)] = 0.2,
    augment: Augment = None,
    hflip: Hflip = None,
    random_crop: RandomCrop = None,
    shift: Shift = None,
    rotation: Rotation = None,
    color_jitter: ColorJitter = None,
    erasing: Erasing = None,
    tune_thresholds: TuneThresholds = None,
    threshold_metric: ThresholdMetricOpt = None,
    threshold_accuracy_drop: ThresholdDrop = None,
    device: Device = "auto",
    amp: Amp = True,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last", help="Channels-last memory format.", rich_help_panel=RUN_HELP
        ),
    ] = False,  # fmt: skip
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=RUN_HELP)
    ] = False,
    seed: Seed = None,
    workers: Workers = None,
    cache: Cache = CacheMode.auto,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory to write (default: runs/<dataset>-<arch>-<time>).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,  # fmt: skip
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the interrupted run in RUN_DIR from its last finished epoch "
            "(its config.json is used; other options are ignored).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,  # fmt: skip
    list_archs: Annotated[
        bool, typer.Option("--list-archs", help="List the architecture names and exit.")
    ] = False,
    json_out: Json = False,
) -> None:
    """Train a model on a dataset, writing a run directory.

    The run directory gets config.json, model.safetensors (best epoch, with tuned thresholds),
    last.safetensors, history.csv, metrics-valid.json and a resume state. Ctrl-C loses at most
    the current epoch: continue with --resume RUN_DIR.

    Example: faceattr train --root data/celeba --arch densenet121 --sample 29500 --loss weighted-bce
    """
    from faceattr.attributes import parse_attribute_list
    from faceattr.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
    from faceattr.engine.fit import fit

    if list_archs:
        from faceattr.models import list_archs as _list

        for name in _list():
            out.print(name, highlight=False)
        return
    if resume is not None:
        cfg = TrainConfig(out=str(resume))
        result = fit(cfg, progress=RichProgress(), resume=True)
        _report(result, json_out)
        return
    if root is None:
        from faceattr.errors import UsageError

        raise UsageError(
            "Missing --root: the dataset folder.",
            "Fetch one with `faceattr data fetch celeba --root data/celeba` (or `faceattr data "
            "fetch synthetic --root data/synthetic` for a small demo set).",
        )
    opt = (optimizer or Optimizer.adamw).value
    aug = AugmentConfig(**_augment_changes(
        augment or AugmentPreset.light, hflip, random_crop, shift, rotation, color_jitter, erasing
    ))  # fmt: skip
    cfg = TrainConfig(
        data=DataConfig(
            dataset=dataset,
            root=str(root),
            labels=str(labels) if labels is not None else None,
            attributes=tuple(parse_attribute_list(attributes) or ()) or None,
            sample=sample,
            valid_fraction=valid_fraction,
            img_size=img_size,
            crop=CROPS[crop.value],
            workers=workers,
            cache=cache.value,
        ),
        model=ModelConfig(
            arch=arch,
            num_features=num_features,
            dropout=dropout,
            pretrained=pretrained,
            weights=str(weights) if weights else None,
            freeze_backbone=freeze_backbone,
        ),
        optim=OptimConfig(
            optimizer=opt,
            lr=lr if lr is not None else _default_lr(opt),
            weight_decay=weight_decay if weight_decay is not None else 1e-4,
            scheduler=(scheduler or Scheduler.cosine).value,
            warmup_epochs=warmup_epochs or 0.0,
            loss=(loss or Loss.bce).value,
        ),
        augment=aug,
        epochs=epochs or 10,
        batch_size=batch_size or 64,
        device=device,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        seed=seed if seed is not None else 0,
        patience=patience,
        ema=ema or 0.0,
        tta=(tta or TtaMode.none).value,
        tune_thresholds=True if tune_thresholds is None else tune_thresholds,
        threshold_metric=(threshold_metric or ThresholdMetric.balanced_accuracy).value,
        threshold_accuracy_drop=0.02
        if threshold_accuracy_drop is None
        else threshold_accuracy_drop,
        out=str(out_dir or _default_run_dir(dataset, arch)),
    )
    err.print(f"Training {arch} -> [bold]{cfg.out}[/]", highlight=False)
    result = fit(cfg, progress=RichProgress())
    _report(result, json_out)


def _default_run_dir(dataset: str, arch: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = arch.replace("/", "_")
    return Path("runs") / f"{dataset}-{safe}-{stamp}"


def _report(result, json_out: bool) -> None:
    m = result.metrics
    if json_out:
        print_json(
            {
                "run_dir": str(result.run_dir),
                "best_epoch": result.best_epoch,
                "epochs_done": result.epochs_done,
                "already_finished": result.already_finished,
                "stopped_early": result.stopped_early,
                "skipped_images": result.skipped_images,
                "history": result.history,
                "valid": m,
            }
        )
        return
    if result.already_finished:
        out.print(
            f"{result.run_dir} already finished ({result.epochs_done} epochs); nothing to do."
        )
    half = m.get("at_threshold_0.5", m)
    out.print(
        f"[bold green]Done.[/] Best epoch {result.best_epoch}: validation mean accuracy "
        f"{pct(half.get('mean_accuracy'))}% at 0.5, strict {pct(half.get('strict_accuracy'))}%"
        + (
            f"; tuned thresholds: balanced accuracy {pct(m.get('mean_balanced_accuracy'))}% "
            f"(vs {pct(half.get('mean_balanced_accuracy'))}% at 0.5)"
            if "at_threshold_0.5" in m
            else ""
        ),
        highlight=False,
    )
    out.print(
        f"Model: {result.run_dir / 'model.safetensors'}\n"
        f"Next: faceattr eval {result.run_dir} --root ... | faceattr predict IMAGE --model "
        f"{result.run_dir}",
        highlight=False,
    )


@handle_errors
def finetune_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory to start from.")],
    unfreeze: Annotated[
        str,
        typer.Option(
            help="Unfreeze the last N backbone stages/blocks, or 'all'.", rich_help_panel=MODEL_HELP
        ),
    ] = "all",  # fmt: skip
    lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate (default: the parent's / 10).", rich_help_panel=TRAIN_HELP
        ),
    ] = None,
    backbone_lr_mult: BackboneLrMult = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    attributes: Annotated[
        str | None,
        typer.Option(
            help="Attributes (may differ from the parent's: matching head rows are kept, "
            "new ones start fresh).",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,  # fmt: skip
    sample: Sample = None,
    optimizer: Opt = None,
    scheduler: Sched = None,
    loss: LossOpt = None,
    weight_decay: WeightDecay = None,
    warmup_epochs: Warmup = None,
    patience: Patience = None,
    ema: Ema = None,
    tta: TtaOpt = None,
    augment: Augment = None,
    hflip: Hflip = None,
    random_crop: RandomCrop = None,
    shift: Shift = None,
    rotation: Rotation = None,
    color_jitter: ColorJitter = None,
    erasing: Erasing = None,
    tune_thresholds: TuneThresholds = None,
    threshold_metric: ThresholdMetricOpt = None,
    threshold_accuracy_drop: ThresholdDrop = None,
    device: Device = "auto",
    seed: Seed = None,
    workers: Workers = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory to write (default: RUN_DIR-finetune).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,  # fmt: skip
    json_out: Json = False,
) -> None:
    """Fine-tune a trained run: unfreeze (part of) its backbone and train on at a lower rate.

    Writes a new run directory that records its parent. Options left out are inherited from
    the parent run.

    Example: faceattr finetune runs/frozen --unfreeze all --epochs 3
    """
    from faceattr.attributes import parse_attribute_list
    from faceattr.engine.finetune import finetune, finetune_config

    aug = _augment_changes(augment, hflip, random_crop, shift, rotation, color_jitter, erasing)
    attrs = parse_attribute_list(attributes)
    cfg = finetune_config(
        run_dir,
        unfreeze=unfreeze,
        data=dict(attributes=tuple(attrs) if attrs else None, sample=sample, workers=workers),
        optim=dict(
            lr=lr,
            optimizer=optimizer.value if optimizer else None,
            scheduler=scheduler.value if scheduler else None,
            loss=loss.value if loss else None,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            backbone_lr_mult=backbone_lr_mult,
        ),
        augment=aug,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        ema=ema,
        tta=tta.value if tta else None,
        tune_thresholds=tune_thresholds,
        threshold_metric=threshold_metric.value if threshold_metric else None,
        threshold_accuracy_drop=threshold_accuracy_drop,
        device=device,
        seed=seed,
        out=str(out_dir) if out_dir else None,
    )
    err.print(f"Fine-tuning {run_dir} -> [bold]{cfg.out}[/] (unfreeze {unfreeze})", highlight=False)
    result = finetune(cfg, progress=RichProgress())
    _report(result, json_out)
