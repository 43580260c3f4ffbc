"""`faceattr train` and `faceattr finetune`.

Every option that sets a TrainConfig field is declared with
:func:`faceattr.cli.options.setting` (the shared ones in :mod:`faceattr.cli.settings`) and
defaults to None ("not given"); :func:`faceattr.cli.options.config_changes` reads the given ones
from the command's context. train applies them to the library's defaults
(:func:`faceattr.config.build_config`), finetune to its parent run's settings
(:func:`faceattr.config.with_overrides`). No default or range is restated here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, pct, print_json
from faceattr.cli.options import JsonOption, choice, config_changes, setting
from faceattr.cli.settings import (
    DATA_HELP,
    DATASET_HELP,
    MODEL_HELP,
    RUN_HELP,
    TRAIN_HELP,
    Attributes,
    Augment,
    BackboneLrMult,
    BalanceGroups,
    BalanceMaxWeight,
    BatchSize,
    CacheOption,
    ColorJitter,
    CropOption,
    Device,
    Ema,
    Epochs,
    Erasing,
    Hflip,
    LossOpt,
    Lr,
    Opt,
    Patience,
    Qat,
    RandomCrop,
    Rotation,
    Sample,
    Sched,
    Seed,
    Shift,
    ThresholdDrop,
    ThresholdMetricOpt,
    TtaOpt,
    TuneThresholds,
    ValidFraction,
    Warmup,
    WeightDecay,
    Workers,
)
from faceattr.data.registry import dataset_names
from faceattr.runs import RunDir

if TYPE_CHECKING:
    from faceattr.config import TrainConfig
    from faceattr.engine.fit import FitResult

# Options of train and finetune that set no config field.
PrintConfig = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the resolved configuration (defaults filled in) as JSON and exit "
        "without training.",
    ),
]


@handle_errors
def train_command(
    cli: typer.Context,  # the options given (ctx is the distributed context below)
    dataset: Annotated[
        str | None,
        setting(
            "data.dataset",
            "--dataset",
            **choice(dataset_names()),
            panel=DATA_HELP,
            help=f"{DATASET_HELP} (default: {{default}}).",
        ),
    ] = None,
    root: Annotated[
        Path | None, setting("data.root", "--root", help="Dataset folder.", panel=DATA_HELP)
    ] = None,
    labels: Annotated[
        Path | None,
        setting(
            "data.labels",
            "--labels",
            panel=DATA_HELP,
            help="csv: labels file (columns image, optional split, then one 1/0 column per "
            "attribute; blank = unknown). Default ROOT/labels.csv.",
        ),
    ] = None,
    arch: Annotated[
        str | None,
        setting(
            "model.arch",
            "--arch",
            panel=MODEL_HELP,
            help="celebnet (small CNN from scratch), a torchvision name (mobilenet_v2, "
            "resnet50, densenet121, ...) or any timm name. See --list-archs "
            "(default: {default}).",
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
    balance_groups: BalanceGroups = None,
    balance_max_weight: BalanceMaxWeight = None,
    weight_decay: WeightDecay = None,
    warmup_epochs: Warmup = None,
    patience: Patience = None,
    ema: Ema = None,
    tta: TtaOpt = None,
    qat: Qat = None,
    img_size: Annotated[
        int | None,
        setting(
            "data.img_size",
            "--img-size",
            panel=DATA_HELP,
            help="Input size in pixels (square) (default: {default}).",
        ),
    ] = None,
    valid_fraction: ValidFraction = None,
    crop: CropOption = None,
    pretrained: Annotated[
        bool | None,
        setting(
            "model.pretrained",
            "--pretrained",
            panel=MODEL_HELP,
            help="Start from ImageNet weights (downloads; needs network).",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        setting(
            "model.weights",
            "--weights",
            panel=MODEL_HELP,
            help="Start the backbone from a local weights file (.pth/.pt/.safetensors).",
        ),
    ] = None,
    weights_by_order: Annotated[
        bool | None,
        setting(
            "model.weights_by_order",
            "--weights-by-order",
            panel=MODEL_HELP,
            help="Map --weights onto the backbone tensor by tensor in order, for a file "
            "whose names faceattr does not recognise (the shapes must line up).",
        ),
    ] = None,
    freeze_backbone: Annotated[
        bool | None,
        setting(
            "model.freeze_backbone",
            "--freeze-backbone",
            panel=MODEL_HELP,
            help="Train only the head (linear probe).",
        ),
    ] = None,
    num_features: Annotated[
        int | None,
        setting(
            "model.num_features",
            "--num-features",
            panel=MODEL_HELP,
            help="Hidden width of the attribute head (0 = linear) (default: {default}).",
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        setting(
            "model.dropout",
            "--dropout",
            panel=MODEL_HELP,
            help="Head dropout (default: {default}).",
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
        setting(
            "amp",
            "--amp/--no-amp",
            panel=RUN_HELP,
            help="Mixed precision on CUDA (default: {default}).",
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        setting(
            "channels_last",
            "--channels-last/--no-channels-last",
            panel=RUN_HELP,
            help="Channels-last memory format (default: on for the CPU and CUDA, where it "
            "is faster).",
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        setting("compile", "--compile", help="torch.compile the model.", panel=RUN_HELP),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Train with N processes on this machine (distributed data parallel: one per "
            "GPU, or CPU processes with gloo) by starting torchrun for you. --batch-size is "
            "per process. On a cluster run torchrun yourself (docs/distributed.md).",
            rich_help_panel=RUN_HELP,
        ),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        setting(
            "sync_bn",
            "--sync-bn",
            panel=RUN_HELP,
            help="Distributed on CUDA: batch-norm statistics over all processes.",
        ),
    ] = None,
    seed: Seed = None,
    workers: Workers = None,
    cache: CacheOption = None,
    out_dir: Annotated[
        Path | None,
        setting(
            "out",
            "--out",
            panel=RUN_HELP,
            help="Run directory to write (default: runs/<dataset>-<arch>-<time>).",
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
    json_out: JsonOption = False,
) -> None:
    """Train a model on a dataset, writing a run directory.

    The run directory gets config.json, model.safetensors (best epoch, with tuned thresholds),
    last.safetensors, history.csv, metrics-valid.json and a resume state. Ctrl-C loses at most
    the current epoch: continue with --resume RUN_DIR.

    \b
    Example:
      faceattr train --root data/celeba --arch densenet121 --sample 29500 --loss weighted-bce
    """
    from faceattr.extras import require

    require("torch", what="faceattr train")
    from faceattr.engine import distributed
    from faceattr.engine.fit import fit
    from faceattr.engine.fit import resume as resume_run

    if handled_before_run(nproc, print_config=print_config, list_archs=list_archs):
        return
    if resume is not None:
        result = resume_run(resume, progress=RichProgress())
        if distributed.init().is_main:  # the process group resume_run joined
            _report(result, json_out)
        return
    if root is None:
        raise missing_root("the dataset folder")
    cfg = config_with_run_dir(config_changes(cli))
    if print_config:
        print_json(cfg.to_dict())
        return
    ctx = distributed.init(cfg.device)
    if ctx.is_main:
        where = f" on {ctx.world_size} processes, global batch {cfg.batch_size * ctx.world_size}"
        err.print(f"Training {literal(cfg.model.arch)} -> [bold]{literal(cfg.out)}[/]"
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


def missing_root(what: str) -> Exception:
    """The error of a train-like command run without --root (``what``: the folder's role)."""
    from faceattr.errors import UsageError

    return UsageError(
        f"Missing --root: {what}.",
        "Fetch one with `faceattr data fetch celeba --root data/celeba` (or `faceattr data "
        "fetch synthetic --root data/synthetic` for a small demo set).",
    )


def handled_before_run(nproc: int | None, *, print_config: bool, list_archs: bool) -> bool:
    """What train and distill do before a run: with ``--nproc N``, run this same command in
    N processes (torchrun; does not return); ``--list-archs``: print them. True when the
    command is done."""
    from faceattr.engine import distributed

    if nproc and nproc > 1 and not (distributed.launched() or print_config or list_archs):
        _launch_torchrun(nproc)  # runs this same command in N processes, then exits
    if list_archs:
        from faceattr.models import list_archs as _list

        for name in _list():
            out.print(literal(name), highlight=False)
    return bool(list_archs)


def config_with_run_dir(changes: dict[str, Any]) -> TrainConfig:
    """The run's config from the command line's ``changes``; without ``--out``, a new folder
    under runs/ (distributed, every rank takes rank 0's: the name has a time stamp)."""
    from faceattr.config import build_config
    from faceattr.engine import distributed

    cfg = build_config(changes)
    if not cfg.out:
        from dataclasses import replace

        ctx = distributed.init(cfg.device) if distributed.launched() else distributed.Dist()
        default_dir = str(_default_run_dir(cfg.data.dataset, cfg.model.arch))
        cfg = replace(cfg, out=str(distributed.broadcast(ctx, default_dir)))
    return cfg


def _default_run_dir(dataset: str, arch: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = arch.replace("/", "_")
    return Path("runs") / f"{dataset}-{safe}-{stamp}"


def _report(result: FitResult, json_out: bool) -> None:
    m = result.metrics
    if json_out:
        print_json(result.to_json())
        return
    if result.already_finished:
        out.print(
            f"{literal(result.run_dir)} already finished ({result.epochs_done} epochs); "
            "nothing to do.",
            highlight=False,
        )
    at_half = m.get("at_threshold_0.5", m)
    out.print(
        f"[bold green]Done.[/] Best epoch {result.best_epoch}: validation mean accuracy "
        f"{pct(at_half.get('mean_accuracy'))}% at 0.5, "
        f"strict {pct(at_half.get('strict_accuracy'))}%"
        + (
            f"; tuned thresholds: balanced accuracy {pct(m.get('mean_balanced_accuracy'))}% "
            f"(vs {pct(at_half.get('mean_balanced_accuracy'))}% at 0.5)"
            if "at_threshold_0.5" in m
            else ""
        ),
        highlight=False,
    )
    from faceattr.errors import command  # the run folder shell-quoted: safe to copy

    then = command("faceattr eval {run} --root ... | faceattr predict IMAGE --model {run}",
                   run=result.run_dir)  # fmt: skip
    out.print(f"Model: {literal(RunDir(result.run_dir).best_file)}\nNext: {literal(then)}",
              highlight=False)  # fmt: skip


@handle_errors
def finetune_command(
    cli: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory to start from.")],
    unfreeze: Annotated[
        str,
        typer.Option(
            help="Unfreeze the last N backbone stages/blocks, or 'all'.", rich_help_panel=MODEL_HELP
        ),
    ] = "all",
    lr: Annotated[
        float | None,
        setting(
            "optim.lr", "--lr", help="Learning rate (default: the parent's / 10).", panel=TRAIN_HELP
        ),
    ] = None,
    backbone_lr_mult: BackboneLrMult = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    attributes: Annotated[
        str | None,
        setting(
            "data.attributes",
            "--attributes",
            panel=DATA_HELP,
            help="Attributes (may differ from the parent's: matching head rows are kept, "
            "new ones start fresh).",
        ),
    ] = None,
    sample: Sample = None,
    optimizer: Opt = None,
    scheduler: Sched = None,
    loss: LossOpt = None,
    balance_groups: BalanceGroups = None,
    balance_max_weight: BalanceMaxWeight = None,
    weight_decay: WeightDecay = None,
    warmup_epochs: Warmup = None,
    patience: Patience = None,
    ema: Ema = None,
    tta: TtaOpt = None,
    qat: Qat = None,
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
        setting(
            "out",
            "--out",
            help="Run directory to write (default: RUN_DIR-finetune).",
            panel=RUN_HELP,
        ),
    ] = None,
    print_config: PrintConfig = False,
    json_out: JsonOption = False,
) -> None:
    """Fine-tune a trained run: unfreeze (part of) its backbone and train on at a lower rate.

    Writes a new run directory that records its parent. Options left out are inherited from
    the parent run.

    \b
    Example:
      faceattr finetune runs/frozen --unfreeze all --epochs 3
    """
    from faceattr.extras import require

    require("torch", what="faceattr finetune")
    from faceattr.engine.finetune import finetune, finetune_config

    cfg = finetune_config(run_dir, unfreeze=unfreeze, changes=config_changes(cli))
    if print_config:
        print_json(cfg.to_dict())
        return
    err.print(f"Fine-tuning {literal(run_dir)} -> [bold]{literal(cfg.out)}[/] "
              f"(unfreeze {literal(unfreeze)})", highlight=False)  # fmt: skip
    result = finetune(cfg, progress=RichProgress())
    _report(result, json_out)
