"""`faceattr train` and `faceattr finetune`.

Every option defaults to None ("not given"); :func:`faceattr.cli.options.config_changes` maps
the given ones onto TrainConfig fields. train applies them to the library's defaults
(:func:`faceattr.config.build_config`), finetune to its parent run's settings
(:func:`faceattr.config.with_overrides`). No default is restated here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from faceattr.cli.common import RichProgress, err, handle_errors, out, pct, print_json
from faceattr.cli.options import DATASET_HELP, CacheOption, CropOption, choice, config_changes
from faceattr.config import (
    AUGMENT_PRESETS,
    DEFAULT_AUGMENT,
    LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    THRESHOLD_METRICS,
    TTA_MODES,
    field_default,
)
from faceattr.data.registry import dataset_names

TRAIN_HELP = "Training"
DATA_HELP = "Data"
AUG_HELP = "Augmentation"
MODEL_HELP = "Model"
RUN_HELP = "Run"

# Options shared by train and finetune; in finetune "not given" means "as the parent run".
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
    typer.Option(
        help="Train on a seeded random subset of N training images.",
        rich_help_panel=DATA_HELP,
        min=1,
    ),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        help=f"Epochs (train default: {field_default('epochs')}; finetune: the parent's).",
        rich_help_panel=TRAIN_HELP,
        min=1,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help=f"Batch size (train default: {field_default('batch_size')}).",
        rich_help_panel=TRAIN_HELP,
        min=1,
    ),
]
Lr = Annotated[
    float | None,
    typer.Option(
        help="Peak learning rate (train default: 1e-3 for adam/adamw, 0.05 for sgd; "
        "finetune: the parent's / 10).",
        rich_help_panel=TRAIN_HELP,
    ),
]
Opt = Annotated[
    str | None,
    typer.Option(
        **choice(OPTIMIZERS),
        help=f"Optimizer (train default: {field_default('optim.optimizer')}).",
        rich_help_panel=TRAIN_HELP,
    ),
]
Sched = Annotated[
    str | None,
    typer.Option(
        **choice(SCHEDULERS),
        help="Learning-rate schedule, stepped per batch "
        f"(train default: {field_default('optim.scheduler')}).",
        rich_help_panel=TRAIN_HELP,
    ),
]
LossOpt = Annotated[
    str | None,
    typer.Option(
        **choice(LOSSES),
        help="bce, weighted-bce (class weights from training positive rates) or focal "
        f"(train default: {field_default('optim.loss')}).",
        rich_help_panel=TRAIN_HELP,
    ),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(
        help=f"Weight decay (train default: {field_default('optim.weight_decay')}).",
        rich_help_panel=TRAIN_HELP,
    ),
]
Warmup = Annotated[
    float | None, typer.Option(help="Warm-up epochs (cosine/onecycle).", rich_help_panel=TRAIN_HELP)
]
Patience = Annotated[
    int | None,
    typer.Option(
        help="Stop after N epochs without validation improvement.",
        rich_help_panel=TRAIN_HELP,
        min=1,
    ),
]
Ema = Annotated[
    float | None,
    typer.Option(
        help="Keep an exponential moving average of the weights with this decay per "
        "step (e.g. 0.998) and validate/save it; 0 = off.",
        rich_help_panel=TRAIN_HELP,
        min=0.0,
        max=0.99999,
    ),
]
TtaOpt = Annotated[
    str | None,
    typer.Option(
        **choice(TTA_MODES),
        help="Test-time augmentation stored in the model: flip averages each face "
        f"with its mirror image (2x inference cost) (train default: {field_default('tta')}).",
        rich_help_panel=TRAIN_HELP,
    ),
]
Augment = Annotated[
    str | None,
    typer.Option(
        **choice(tuple(AUGMENT_PRESETS)),
        help="Preset: none, flip, light (flip, crop, shift, colour) or strong "
        "(+ rotation, erasing). The flags below adjust it "
        f"(train default: {DEFAULT_AUGMENT}; finetune: the parent's).",
        rich_help_panel=AUG_HELP,
    ),
]
Hflip = Annotated[
    bool | None,
    typer.Option(
        "--hflip/--no-hflip",
        help="Random horizontal flips (default: as --augment says; on in light and strong).",
        rich_help_panel=AUG_HELP,
    ),
]
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
    typer.Option(
        help="Brightness/contrast/saturation jitter (0.2 = +-20%).", rich_help_panel=AUG_HELP
    ),
]
Erasing = Annotated[
    float | None,
    typer.Option(
        help="Probability of a random erased patch (occlusion).", rich_help_panel=AUG_HELP
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        help="auto (CUDA when present), cpu, cuda, cuda:N, mps (default: auto).",
        rich_help_panel=RUN_HELP,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        help=f"Random seed (train default: {field_default('seed')}).", rich_help_panel=RUN_HELP
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        help="Image decoding processes (default: min(4, CPUs)).", rich_help_panel=RUN_HELP, min=0
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]
PrintConfig = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the resolved configuration (defaults filled in) as JSON and exit "
        "without training.",
    ),
]
BackboneLrMult = Annotated[
    float | None,
    typer.Option(
        help="Backbone learning rate = lr x this (discriminative fine-tuning).",
        rich_help_panel=TRAIN_HELP,
    ),
]
TuneThresholds = Annotated[
    bool | None,
    typer.Option(
        "--tune-thresholds/--no-tune-thresholds",
        help="Tune one decision threshold per attribute on the validation split "
        "(stored in the model; on by default).",
        rich_help_panel=TRAIN_HELP,
    ),
]
ThresholdDrop = Annotated[
    float | None,
    typer.Option(
        help="Tuned thresholds may cost an attribute at most this much accuracy "
        f"(train default: {field_default('threshold_accuracy_drop')}; 1 = no limit).",
        rich_help_panel=TRAIN_HELP,
        min=0,
    ),
]
ThresholdMetricOpt = Annotated[
    str | None,
    typer.Option(
        **choice(THRESHOLD_METRICS),
        help="What tuned thresholds maximise.",
        rich_help_panel=TRAIN_HELP,
    ),
]


@handle_errors
def train_command(
    dataset: Annotated[
        str | None,
        typer.Option(
            **choice(dataset_names()),
            help=f"{DATASET_HELP} (default: {field_default('data.dataset')}).",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
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
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="celebnet (small CNN from scratch), a torchvision name (mobilenet_v2, "
            "resnet50, densenet121, ...) or any timm name. See --list-archs "
            f"(default: {field_default('model.arch')}).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
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
        int | None,
        typer.Option(
            help=f"Input size in pixels (square) (default: {field_default('data.img_size')}).",
            rich_help_panel=DATA_HELP,
            min=16,
        ),
    ] = None,
    valid_fraction: Annotated[
        float | None,
        typer.Option(
            help="Validation share carved out of train when the data has no "
            "validation split (by identity when known) "
            f"(default: {field_default('data.valid_fraction')}).",
            rich_help_panel=DATA_HELP,
        ),
    ] = None,
    crop: CropOption = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained",
            help="Start from ImageNet weights (downloads; needs network).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Start the backbone from a local weights file (.pth/.pt/.safetensors).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    weights_by_order: Annotated[
        bool | None,
        typer.Option(
            "--weights-by-order",
            help="Map --weights onto the backbone tensor by tensor in order, for a file whose "
            "names faceattr does not recognise (the shapes must line up).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    freeze_backbone: Annotated[
        bool | None,
        typer.Option(
            "--freeze-backbone",
            help="Train only the head (linear probe).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
    num_features: Annotated[
        int | None,
        typer.Option(
            help="Hidden width of the attribute head (0 = linear) "
            f"(default: {field_default('model.num_features')}).",
            rich_help_panel=MODEL_HELP,
            min=0,
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help=f"Head dropout (default: {field_default('model.dropout')}).",
            rich_help_panel=MODEL_HELP,
        ),
    ] = None,
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
    device: Device = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp",
            help="Mixed precision on CUDA (default: on).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last memory format (default: on for the CPU and CUDA, where it is "
            "faster).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile", help="torch.compile the model.", rich_help_panel=RUN_HELP),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Train with N processes on this machine (distributed data parallel: one per "
            "GPU, or CPU processes with gloo) by starting torchrun for you. --batch-size is "
            "per process. On a cluster run torchrun yourself (docs/distributed.md).",
            min=1,
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        typer.Option(
            "--sync-bn",
            help="Distributed on CUDA: batch-norm statistics over all processes.",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    seed: Seed = None,
    workers: Workers = None,
    cache: CacheOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory to write (default: runs/<dataset>-<arch>-<time>).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the interrupted run in RUN_DIR from its last finished epoch "
            "(its config.json is used; other options are ignored).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    list_archs: Annotated[
        bool, typer.Option("--list-archs", help="List the architecture names and exit.")
    ] = False,
    print_config: PrintConfig = False,
    json_out: Json = False,
) -> None:
    """Train a model on a dataset, writing a run directory.

    The run directory gets config.json, model.safetensors (best epoch, with tuned thresholds),
    last.safetensors, history.csv, metrics-valid.json and a resume state. Ctrl-C loses at most
    the current epoch: continue with --resume RUN_DIR.

    \b
    Example:
      faceattr train --root data/celeba --arch densenet121 --sample 29500 --loss weighted-bce
    """
    options = dict(locals())  # every option, before anything else is defined here
    from faceattr.extras import require

    require("torch", what="faceattr train")
    from faceattr.config import TrainConfig, build_config
    from faceattr.engine import distributed
    from faceattr.engine.fit import fit

    if nproc and nproc > 1 and not (distributed.launched() or print_config or list_archs):
        _launch_torchrun(nproc)  # runs this same command in N processes, then exits

    if list_archs:
        from faceattr.models import list_archs as _list

        for name in _list():
            out.print(name, highlight=False)
        return
    if resume is not None:
        cfg = TrainConfig(out=str(resume))
        result = fit(cfg, progress=RichProgress(), resume=True)
        if distributed.init(cfg.device).is_main:
            _report(result, json_out)
        return
    if root is None:
        from faceattr.errors import UsageError

        raise UsageError(
            "Missing --root: the dataset folder.",
            "Fetch one with `faceattr data fetch celeba --root data/celeba` (or `faceattr data "
            "fetch synthetic --root data/synthetic` for a small demo set).",
        )
    cfg = build_config(config_changes(options))
    if not cfg.out:
        from dataclasses import replace

        # Distributed, every rank must use rank 0's folder (the name has a time stamp).
        ctx = distributed.init(cfg.device) if distributed.launched() else distributed.Dist()
        default_dir = str(_default_run_dir(cfg.data.dataset, cfg.model.arch))
        cfg = replace(cfg, out=str(distributed.broadcast(ctx, default_dir)))
    if print_config:
        print_json(cfg.to_dict())
        return
    ctx = distributed.init(cfg.device)
    if ctx.is_main:
        where = f" on {ctx.world_size} processes, global batch {cfg.batch_size * ctx.world_size}"
        err.print(f"Training {cfg.model.arch} -> [bold]{cfg.out}[/]"
                  + (where if ctx.enabled else ""), highlight=False)  # fmt: skip
    result = fit(cfg, progress=RichProgress())
    if ctx.is_main:
        _report(result, json_out)


def _launch_torchrun(nproc: int) -> None:
    """Run the command line of this process again in ``nproc`` processes (without
    ``--nproc``) and exit: 0, or 1 naming the ranks that failed (their errors are above)."""
    import sys

    from faceattr.engine.distributed import launch

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    failed = launch(nproc, args)
    if failed:
        ranks = ", ".join(str(r) for r in failed)
        err.print(f"[bold red]Training failed[/] in process(es) {ranks} of {nproc}; the error "
                  "is above.", highlight=False)  # fmt: skip
        raise typer.Exit(1)
    raise typer.Exit(0)


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
                "world_size": result.world_size,
                "global_batch_size": result.global_batch_size,
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
    ] = "all",
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
    ] = None,
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
    device: Device = None,
    seed: Seed = None,
    workers: Workers = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory to write (default: RUN_DIR-finetune).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    print_config: PrintConfig = False,
    json_out: Json = False,
) -> None:
    """Fine-tune a trained run: unfreeze (part of) its backbone and train on at a lower rate.

    Writes a new run directory that records its parent. Options left out are inherited from
    the parent run.

    \b
    Example:
      faceattr finetune runs/frozen --unfreeze all --epochs 3
    """
    options = dict(locals())  # every option, before anything else is defined here
    from faceattr.extras import require

    require("torch", what="faceattr finetune")
    from faceattr.engine.finetune import finetune, finetune_config

    cfg = finetune_config(run_dir, unfreeze=unfreeze, changes=config_changes(options))
    if print_config:
        print_json(cfg.to_dict())
        return
    err.print(f"Fine-tuning {run_dir} -> [bold]{cfg.out}[/] (unfreeze {unfreeze})", highlight=False)
    result = finetune(cfg, progress=RichProgress())
    _report(result, json_out)
