"""``fit()``: a whole training run, owning seeding, device, AMP, schedule, checkpoints and resume.

Every epoch ends with an atomic checkpoint, so Ctrl-C or ``kill -9`` loses at most the epoch
in progress and ``fit(..., resume=True)`` continues bit-for-bit: all randomness of epoch ``e``
(shuffling, augmentation, dropout) is drawn from generators seeded by ``(seed, e)``.

A run goes through named steps: :func:`open_run` (a new run directory, or the state of the one
to resume), :func:`setup` (data, model, optimizer: a :class:`Training`), :func:`restore`
(resume only), :func:`run_epoch` once per epoch (train, validate, checkpoint) and
:func:`finish` (thresholds, final model and metrics). Distributed training belongs in
:func:`setup` (the process group, the device of this rank, the wrapped ``train_model``) and in
the two functions that write files, :func:`save_checkpoint` and :func:`finish`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from faceattr import __version__
from faceattr.config import TrainConfig
from faceattr.data.registry import DATASETS
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import BatchAugment, Preprocessing
from faceattr.engine import distributed
from faceattr.engine.data import make_batches
from faceattr.engine.distributed import Dist
from faceattr.engine.ema import ModelEma
from faceattr.engine.loop import EpochStats, predict_batches, train_one_epoch
from faceattr.engine.optim import Scheduler, amp_setup, make_optimizer, make_scheduler
from faceattr.errors import Interrupted, ModelError, UsageError
from faceattr.fileio import (
    WriteError,
    atomic_open,
    atomic_write_text,
    check_free_space,
    hold_lock,
    remove_stale_temps,
)
from faceattr.losses import make_loss, pos_weight_from_rates
from faceattr.metrics import compute_metrics, metrics_report, tune_thresholds
from faceattr.models import AttributeModel, ModelInfo
from faceattr.progress import EpochEnd, NullProgress, Progress
from faceattr.runs import BEST_FILE, CONFIG_FILE, HISTORY_FILE, LAST_FILE, LOCK_FILE, STATE_FILE
from faceattr.utils import prefetch, to_json

HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_mean_accuracy",
    "val_strict_accuracy", "images_per_second", "seconds",
)  # fmt: skip


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_mean_accuracy: float
    epochs_done: int
    history: list[dict[str, float]]
    metrics: dict[str, Any]  # validation metrics of the best model at its thresholds
    notes: list[str] = field(default_factory=list)
    skipped_images: int = 0
    already_finished: bool = False
    stopped_early: bool = False
    world_size: int = 1  # processes that trained (torchrun)
    global_batch_size: int = 0  # batch_size * world_size


@dataclass
class Training:
    """Everything a run holds while it trains (made by :func:`setup`)."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    train_table: AttributeTable
    valid_table: AttributeTable
    notes: list[str]
    info: ModelInfo  # what the saved model files say about the model (no thresholds yet)
    model: AttributeModel  # the network itself, whose state_dict is checkpointed
    train_model: torch.nn.Module  # what a training step calls (model, or a compiled wrapper)
    ema: ModelEma | None
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    augment: BatchAugment | None
    preprocessing: Preprocessing
    steps_per_epoch: int
    valid_batches: Any  # an iterable of Batch, re-read every epoch
    channels_last: bool = False  # cfg.channels_last resolved for the device
    dist: Dist = field(default_factory=Dist)  # this process's rank in a torchrun job
    valid_rows: np.ndarray | None = None  # distributed: this rank's rows of the valid split
    # Progress through the run: what train_state.pt keeps besides the state dicts.
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float = -1.0  # validation mean accuracy of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    next_epoch: int = 1
    # This session's last validation: probabilities of the best epoch (if it ran in this
    # session) and the labels, so finish() need not predict the split again.
    best_probs: np.ndarray | None = None
    valid_targets: np.ndarray | None = None
    skipped_images: int = 0

    @property
    def eval_model(self) -> AttributeModel:
        """The weights that are validated and saved: the EMA's when there is one."""
        return cast(AttributeModel, self.ema.module) if self.ema is not None else self.model


def fit(
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
) -> FitResult:
    """Train a model as ``cfg`` says, writing the run directory ``cfg.out``.

    ``resume=True`` continues the run in ``cfg.out`` from its last finished epoch (its own
    ``config.json`` wins over ``cfg``). ``init_from`` is a model file whose weights start the
    run (fine-tuning): backbone tensors are copied, head rows are matched by attribute name.
    Progress, log lines and one :class:`~faceattr.progress.EpochEnd` per epoch go to
    ``progress``.
    """
    ctx = distributed.init(cfg.device)
    progress = (progress or NullProgress()) if ctx.is_main else NullProgress()
    if not cfg.out:
        raise UsageError("TrainConfig.out is empty: say which run directory to write.")
    run_dir = Path(cfg.out)
    # One process writes a run directory at a time: rank 0 holds its lock for the whole run.
    lock = (
        hold_lock(run_dir, LOCK_FILE, what="run directory", note=progress.log)
        if ctx.is_main
        else contextlib.nullcontext()
    )
    with lock:
        if ctx.is_main and (run_dir / CONFIG_FILE).exists():  # a run's own folder, locked:
            removed = remove_stale_temps(run_dir)  # nobody else writes here, all are stale
            if removed:
                progress.log(removed)
        try:
            return _fit(cfg, ctx, progress, resume=resume, init_from=init_from)
        except KeyboardInterrupt:
            raise Interrupted(resume_hint(run_dir)) from None


def _fit(
    cfg: TrainConfig,
    ctx: Dist,
    progress: Progress,
    *,
    resume: bool,
    init_from: str | Path | None,
) -> FitResult:
    cfg, state = open_run(cfg, resume)
    distributed.barrier(ctx)  # every rank has looked at the folder before rank 0 writes
    if state is not None and state.get("finished"):
        return _finished_result(Path(cfg.out), state)
    cfg = replace(cfg, world_size=ctx.world_size)
    if state is not None:
        init_from = None  # the checkpoint has the weights
    elif resume and cfg.parent:  # a fine-tuning run that had not finished an epoch
        init_from = Path(cfg.parent) / BEST_FILE
    t = setup(cfg, progress, init_from=init_from, ctx=ctx)
    if ctx.is_main:
        check_free_space(t.run_dir, checkpoint_bytes(t), "this run's checkpoints")
    if state is not None:
        restore(t, state, progress)
    elif ctx.is_main:
        if resume:
            progress.log(f"Resuming {t.run_dir}: no epoch was finished yet, starting at epoch 1.")
        t.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(t.run_dir / CONFIG_FILE)
    stopped_early = False
    for epoch in range(t.next_epoch, cfg.epochs + 1):
        run_epoch(t, epoch, progress)
        if cfg.patience is not None and t.bad_epochs >= cfg.patience and epoch < cfg.epochs:
            stopped_early = True
            progress.log(f"Early stopping: no improvement for {cfg.patience} epoch(s).")
            break
    return finish(t, stopped_early=stopped_early)


def resume_hint(run_dir: Path) -> str:
    """What an interrupted run kept and the command that continues it."""
    if not (run_dir / CONFIG_FILE).exists():
        return f"No epoch of {run_dir} was finished, so nothing was kept."
    epoch = saved_epoch(run_dir)
    done = {0: "No epoch was finished yet", 1: "Epoch 1 is saved"}.get(
        epoch, f"Epochs 1-{epoch} are saved"
    )
    return f"{done} in {run_dir}: `faceattr train --resume {run_dir}` continues the run."


def saved_epoch(run_dir: Path) -> int:
    """The last epoch whose resume state is complete on disk (0: none)."""
    if not (run_dir / STATE_FILE).exists():
        return 0
    try:
        state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:  # damaged state: open_run says so when it is resumed
        return 0
    return int(state.get("epoch", 0))


def checkpoint_bytes(t: Training) -> int:
    """Disk space the run's checkpoints still need: the best and last model files, the resume
    state (weights, optimizer moments, EMA) and, while one is replaced, a temp copy of it."""
    weights = sum(v.numel() * v.element_size() for v in t.model.state_dict().values())
    state = weights * (3 + (t.ema is not None))  # AdamW keeps two moments per weight
    need = 2 * weights + 2 * state
    have = sum(
        (t.run_dir / n).stat().st_size
        for n in (BEST_FILE, LAST_FILE, STATE_FILE)
        if (t.run_dir / n).exists()
    )
    return max(state, need - have)


def open_run(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration to train and, when resuming, the saved training state (None when the
    run has not finished an epoch yet). A new run refuses a folder that holds one already."""
    run_dir = Path(cfg.out)
    if not resume:
        if (run_dir / CONFIG_FILE).exists():
            raise UsageError(
                f"{run_dir} already holds a training run.",
                f"Continue it with `faceattr train --resume {run_dir}`, or choose another --out.",
            )
        return cfg, None
    if not (run_dir / CONFIG_FILE).exists():
        raise UsageError(
            f"Cannot resume: {run_dir} is not a run directory (no {CONFIG_FILE}).",
            "Pass the directory a previous `faceattr train` wrote (its --out).",
        )
    cfg = replace(TrainConfig.load(run_dir / CONFIG_FILE), out=str(run_dir))
    state = None
    if (run_dir / STATE_FILE).exists():
        try:
            state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged zip or pickle
            raise ModelError(
                f"The resume state {run_dir / STATE_FILE} cannot be read: {e}",
                f"Its model files can still be used ({BEST_FILE}, {LAST_FILE}); to train "
                "again, start a new run.",
            ) from e
    return cfg, state


def _finished_result(run_dir: Path, state: dict[str, Any]) -> FitResult:
    metrics_path = run_dir / "metrics-valid.json"
    return FitResult(
        run_dir=run_dir,
        best_epoch=state["best_epoch"],
        best_mean_accuracy=state["best_metric"],
        epochs_done=state["epoch"],
        history=state["history"],
        metrics=json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
        already_finished=True,
    )


def load_train_valid(cfg: TrainConfig) -> tuple[AttributeTable, AttributeTable]:
    """The training split (sampled, attributes selected) and its validation split."""
    from faceattr.data import load_split, read_dataset

    d = cfg.data
    table = read_dataset(d)  # once: the annotation files of full CelebA take ~1 s to parse
    train = load_split(d, "train", sample=d.sample, seed=cfg.seed, table=table)
    valid = load_split(d, "valid", attributes=train.attributes, table=table)
    return train, valid


def build_model(cfg: TrainConfig, num_attributes: int, progress: Progress) -> AttributeModel:
    """The untrained model ``cfg.model`` describes: backbone weights imported, frozen parts
    frozen."""
    from faceattr.models import create_model
    from faceattr.models.freeze import freeze_backbone, unfreeze
    from faceattr.models.weights import load_backbone_weights

    m = cfg.model
    model = create_model(
        m.arch,
        num_attributes,
        num_features=m.num_features,
        dropout=m.dropout,
        pretrained=m.pretrained,
        img_size=cfg.data.img_size,
    )
    if m.weights:
        report = load_backbone_weights(model, m.weights, by_order=m.weights_by_order)
        progress.log(f"Backbone weights from {m.weights}: {report.summary()}")
    if m.freeze_backbone or cfg.unfreeze is not None:
        freeze_backbone(model)
    if cfg.unfreeze is not None:
        n: int | Literal["all"] = "all" if cfg.unfreeze == "all" else int(cfg.unfreeze)
        groups = unfreeze(model, n)
        progress.log(f"Unfrozen backbone groups: {groups}")
    return model


def model_info_for(cfg: TrainConfig, attributes: list[str], train_rates: np.ndarray) -> ModelInfo:
    """The self-description saved in the run's model files (thresholds come at the end)."""
    from faceattr.models import model_data_config

    data_cfg = model_data_config(cfg.model.arch)
    spec = DATASETS.get(cfg.data.dataset)
    assert cfg.data.crop is not None  # filled in when the config is built
    return ModelInfo(
        arch=cfg.model.arch,
        attributes=list(attributes),
        num_features=cfg.model.num_features,
        dropout=cfg.model.dropout,
        img_size=cfg.data.img_size,
        crop=list(cfg.data.crop),
        mean=list(data_cfg["mean"]),
        std=list(data_cfg["std"]),
        thresholds=None,
        tta=cfg.tta,
        train_positive_rates=[float(r) for r in train_rates],
        dataset=cfg.data.dataset,
        license=spec.license if spec is not None else None,
        faceattr_version=__version__,
    )


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """``--channels-last`` as given, or (None) on for the CPU and CUDA."""
    return device.type in ("cpu", "cuda") if setting is None else bool(setting)


def setup(
    cfg: TrainConfig,
    progress: Progress,
    *,
    init_from: str | Path | None,
    ctx: Dist | None = None,
) -> Training:
    """Read the data, build the model, loss, optimizer and schedule of a run (``ctx``: this
    process's rank when distributed: its device, its share of validation, DDP)."""
    from faceattr.engine.finetune import start_from_parent
    from faceattr.models.head import check_tta

    ctx = ctx or Dist()
    device = distributed.device_for(ctx, cfg.device)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    train_table, valid_table = load_train_valid(cfg)
    notes = list(dict.fromkeys(train_table.notes + valid_table.notes))
    for note in notes:
        progress.log(note)
    attributes = train_table.attributes
    train_rates = train_table.positive_rates()

    model = build_model(cfg, len(attributes), progress)
    model.tta = check_tta(cfg.tta)
    if init_from is not None:
        progress.log(start_from_parent(model, init_from, attributes))
    info = model_info_for(cfg, attributes, train_rates)
    if cfg.sync_bn:
        if not (ctx.enabled and device.type == "cuda"):
            raise UsageError("--sync-bn needs a distributed run on CUDA (torchrun, NCCL).")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = distributed.wrap(ctx, model, device)  # DDP averages gradients over ranks
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    ema = ModelEma(model, cfg.ema) if cfg.ema else None

    pos_weight = None
    if cfg.optim.loss == "weighted-bce":
        pos_weight = pos_weight_from_rates(torch.as_tensor(train_rates)).to(device)
    optimizer = make_optimizer(cfg, model)
    # drop_last when it fits; distributed, each rank takes len // world_size of the rows.
    steps_per_epoch = max(1, len(train_table) // (cfg.batch_size * ctx.world_size))
    amp_dtype, scaler = amp_setup(cfg, device)
    valid_rows = ctx.shard(np.arange(len(valid_table))) if ctx.enabled else None
    valid_batches = make_batches(
        valid_table if valid_rows is None else valid_table.subset(valid_rows),
        img_size=cfg.data.img_size,
        crop=info.crop,
        batch_size=cfg.batch_size * 2,
        workers=cfg.data.workers,
        pin_memory=device.type == "cuda",
        data=cfg.data,  # a matching `data prepare` cache is used when there is one
        progress=progress,
    )
    return Training(
        cfg=cfg,
        run_dir=Path(cfg.out),
        device=device,
        train_table=train_table,
        valid_table=valid_table,
        notes=notes,
        info=info,
        model=model,
        train_model=train_model,
        ema=ema,
        loss_fn=make_loss(cfg.optim.loss, pos_weight=pos_weight, gamma=cfg.optim.focal_gamma),
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch),
        amp_dtype=amp_dtype,
        scaler=scaler,
        augment=BatchAugment(cfg.augment) if cfg.augment.enabled else None,
        preprocessing=Preprocessing.from_info(info),
        steps_per_epoch=steps_per_epoch,
        valid_batches=valid_batches,
        dist=ctx,
        valid_rows=valid_rows,
        channels_last=channels_last,
    )


def restore(t: Training, state: dict[str, Any], progress: Progress) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA and the run's counters."""
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    saved_world = int(state.get("world_size", 1))
    if t.scheduler is not None and saved_world != t.dist.world_size:
        # Another number of processes: other steps per epoch. Rebuild the schedule's
        # position from the epochs done instead of the saved step count.
        progress.log(
            f"Resuming with {t.dist.world_size} process(es) a run that used {saved_world}: "
            f"the schedule continues from epoch {state['epoch']} at {t.steps_per_epoch} "
            "steps per epoch."
        )
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps is the point
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state["epoch"] * t.steps_per_epoch):
                t.scheduler.step()
    elif t.scheduler is not None and state.get("scheduler") is not None:
        t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler") is not None:
        t.scaler.load_state_dict(state["scaler"])
    if t.ema is not None and state.get("ema") is not None:
        t.ema.load_state_dict(state["ema"])
    t.history = state["history"]
    t.best_metric, t.best_epoch = state["best_metric"], state["best_epoch"]
    t.bad_epochs, t.next_epoch = state["bad_epochs"], state["epoch"] + 1
    repaired = repair_epoch_files(t, state["epoch"]) if t.dist.is_main else []
    distributed.barrier(t.dist)
    fixed = f"; rewrote {', '.join(repaired)} from it" if repaired else ""
    progress.log(
        f"Resuming {t.run_dir} after epoch {state['epoch']} of {t.cfg.epochs} (the newest "
        f"complete epoch in {STATE_FILE}{fixed})."
    )


def _file_epoch(path: Path) -> int | None:
    from faceattr.models.info import read_model_info

    try:
        return int(read_model_info(path).extra.get("epoch", 0)) if path.exists() else None
    except Exception:  # damaged or foreign: rewrite it
        return None


def repair_epoch_files(t: Training, epoch: int) -> list[str]:
    """The resume state is written first in every checkpoint: a run killed after it but
    before the epoch's model files and history gets them rewritten here (names returned)."""
    from faceattr.models import save_model_file

    info = replace(t.info, extra={"epoch": epoch})
    repaired = []
    if _file_epoch(t.run_dir / LAST_FILE) != epoch:
        save_model_file(t.run_dir / LAST_FILE, t.eval_model, info)
        repaired.append(LAST_FILE)
    if t.best_epoch == epoch and _file_epoch(t.run_dir / BEST_FILE) != epoch:
        save_model_file(t.run_dir / BEST_FILE, t.eval_model, info)
        repaired.append(BEST_FILE)
    if _history_rows(t.run_dir / HISTORY_FILE) != len(t.history):
        write_history(t.run_dir / HISTORY_FILE, t.history)
        repaired.append(HISTORY_FILE)
    return repaired


def _history_rows(path: Path) -> int:
    if not path.exists():
        return -1
    with open(path, encoding="utf-8", newline="") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def train_epoch(t: Training, epoch: int, progress: Progress) -> EpochStats:
    """One pass over the training split, with this epoch's seeded shuffle and augmentation."""
    cfg, ctx = t.cfg, t.dist
    # Dropout etc. of this epoch (and of this rank: ranks see different images).
    torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919 * ctx.rank)
    order, rows = None, len(t.train_table)
    if ctx.enabled:
        # The same permutation on every rank; each trains on its share, all shares equal.
        perm = torch.randperm(rows, generator=_epoch_generator(cfg.seed, epoch, 1)).numpy()
        rows = rows // ctx.world_size
        order = ctx.shard(perm)[:rows]
    batches = make_batches(
        t.train_table,
        img_size=cfg.data.img_size,
        crop=t.info.crop,
        batch_size=cfg.batch_size,
        shuffle=order is None,
        generator=_epoch_generator(cfg.seed, epoch, 1),
        workers=cfg.data.workers,
        pin_memory=t.device.type == "cuda",
        drop_last=rows >= cfg.batch_size,
        data=cfg.data,
        progress=progress if epoch == t.next_epoch else None,  # say it once per session
        order=order,
    )
    if t.device.type == "cuda":  # read (and pin) the next batch while the GPU trains
        batches = prefetch(batches)
    progress.start(f"epoch {epoch}/{cfg.epochs}", total=t.steps_per_epoch * cfg.batch_size)

    def on_batch(n: int, s: EpochStats) -> None:
        progress.advance(n, loss=s.loss, acc=s.accuracy, ips=s.images_per_second)

    stats = train_one_epoch(
        t.train_model,
        batches,
        loss_fn=t.loss_fn,
        optimizer=t.optimizer,
        scheduler=t.scheduler,
        device=t.device,
        preprocessing=t.preprocessing,
        augment=t.augment,
        generator=_epoch_generator(cfg.seed, epoch, 2 + 1000 * ctx.rank),
        amp_dtype=t.amp_dtype,
        scaler=t.scaler,
        channels_last=t.channels_last,
        ema=t.ema,
        on_batch=on_batch,
    )
    progress.finish()
    if stats.images == 0:
        raise UsageError(
            "No training image could be read.",
            f"Check the images under {t.train_table.image_dir}.",
        )
    if stats.skipped:
        t.skipped_images += len(stats.skipped)
        progress.log(
            f"Skipped {len(stats.skipped)} unreadable image(s) this epoch, e.g. "
            + ", ".join(Path(p).name for p in stats.skipped[:3])
        )
    return stats


def validate(t: Training, model: torch.nn.Module, progress: Progress) -> np.ndarray:
    """``[N, A]`` probabilities of ``model`` on the validation split (labels kept in ``t``)."""
    mine = len(t.valid_table) if t.valid_rows is None else len(t.valid_rows)
    progress.start("validating", total=mine)
    probs, targets, index, _ = predict_batches(
        model,
        t.valid_batches,
        device=t.device,
        preprocessing=t.preprocessing,
        amp_dtype=t.amp_dtype,
        channels_last=t.channels_last,
        on_batch=lambda n: progress.advance(n),
    )
    progress.finish()
    if t.valid_rows is not None:  # distributed: every rank's share, back in split order
        parts = distributed.gather(t.dist, (t.valid_rows[index], probs, targets))
        rows = np.concatenate([p[0] for p in parts])
        order = np.argsort(rows, kind="stable")
        probs = np.concatenate([p[1] for p in parts])[order]
        targets = np.concatenate([p[2] for p in parts])[order]
    t.valid_targets = targets
    return probs


def run_epoch(t: Training, epoch: int, progress: Progress) -> EpochEnd:
    """Train epoch ``epoch``, validate, checkpoint, and tell ``progress``."""
    lr = t.optimizer.param_groups[0]["lr"]
    stats = train_epoch(t, epoch, progress)
    distributed.sync_buffers(t.dist, t.model)  # one model on every rank (running statistics)
    if t.ema is not None:
        distributed.sync_buffers(t.dist, t.ema.module)
    start = time.perf_counter()
    probs = validate(t, t.eval_model, progress)
    assert t.valid_targets is not None
    val = compute_metrics(
        probs, t.valid_targets, t.info.attributes, train_positive_rates=t.info.train_positive_rates
    )
    row = {
        "epoch": epoch,
        "lr": float(lr),
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "val_loss": _val_loss(probs, t.valid_targets),
        "val_mean_accuracy": val["mean_accuracy"],
        "val_strict_accuracy": val["strict_accuracy"],
        "val_mean_balanced_accuracy": val["mean_balanced_accuracy"],  # not in history.csv
        # All processes together (each trains an equal share of the epoch).
        "images_per_second": stats.images_per_second * t.dist.world_size,
        "seconds": stats.seconds + (time.perf_counter() - start),
    }
    t.history.append(row)
    best = val["mean_accuracy"] > t.best_metric
    if best:
        t.best_metric, t.best_epoch, t.bad_epochs = val["mean_accuracy"], epoch, 0
        t.best_probs = probs
    else:
        t.bad_epochs += 1
    save_checkpoint(t, epoch, best)
    event = EpochEnd(epoch=epoch, epochs=t.cfg.epochs, row=row, best=best)
    progress.epoch_end(event)
    return event


def save_checkpoint(t: Training, epoch: int, best: bool) -> None:
    """The files of a finished epoch, each written atomically: first the resume state (the
    epoch counts as done once it is on disk), then the model (also as the best one when it
    is) and the history, which :func:`repair_epoch_files` can rebuild from the state."""
    from faceattr.models import save_model_file

    if not t.dist.is_main:  # only rank 0 writes; the others wait until the files are there
        distributed.barrier(t.dist)
        return
    info = replace(t.info, extra={"epoch": epoch})
    state = {
        "epoch": epoch,
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "history": t.history,
        "best_metric": t.best_metric,
        "best_epoch": t.best_epoch,
        "bad_epochs": t.bad_epochs,
        "world_size": t.dist.world_size,
        "finished": False,  # set after thresholds are stored
    }
    run = t.run_dir
    try:
        _save_state(run / STATE_FILE, state)
    except WriteError as e:
        done = f"epoch {epoch - 1}" if epoch > 1 else "none yet"
        raise WriteError(e.message, _kept(run, f"The last complete checkpoint ({done}) is "
                                              "intact.", e)) from e  # fmt: skip
    try:
        if best:
            save_model_file(run / BEST_FILE, t.eval_model, info)
        save_model_file(run / LAST_FILE, t.eval_model, info)
        write_history(run / HISTORY_FILE, t.history)
    except WriteError as e:
        raise WriteError(
            e.message,
            _kept(
                run,
                f"Epoch {epoch} is saved in {STATE_FILE}; its model files are rewritten on resume.",
                e,
            ),
        ) from e
    distributed.barrier(t.dist)


def _kept(run_dir: Path, what: str, error: WriteError) -> str:
    """A checkpoint's write failed: what is safe, the fix, and the command that continues."""
    fix = (error.hint or "").splitlines()[-1]
    return f"{what}\n{fix} Then `faceattr train --resume {run_dir}` continues the run."


def finish(t: Training, *, stopped_early: bool = False) -> FitResult:
    """Tune the best model's thresholds on the validation split and store them in it; write
    its validation metrics; mark the run finished."""
    from faceattr.models import load_model_file, save_model_file

    cfg = t.cfg
    if t.best_epoch == 0:
        raise ModelError("Training produced no model (no epoch finished).")
    best_model, _ = load_model_file(t.run_dir / BEST_FILE, device=str(t.device))
    probs = t.best_probs
    if probs is None:  # the best epoch ran before a resume
        probs = validate(t, best_model, NullProgress())
    targets = t.valid_targets
    assert targets is not None
    attributes, train_rates = t.info.attributes, t.info.train_positive_rates
    info = replace(t.info, extra={"epoch": t.best_epoch})
    thresholds = None
    if cfg.tune_thresholds:
        thresholds = tune_thresholds(
            probs,
            targets,
            metric=cfg.threshold_metric,
            max_accuracy_drop=cfg.threshold_accuracy_drop,
        )
        info = replace(info, thresholds=[float(x) for x in thresholds])
    metrics = metrics_report(probs, targets, attributes, thresholds, train_rates)
    metrics.update(split="valid", model=str(t.run_dir / BEST_FILE))
    if t.dist.is_main:
        save_model_file(t.run_dir / BEST_FILE, best_model, info)
        atomic_write_text(t.run_dir / "metrics-valid.json", to_json(metrics, indent=2) + "\n")
        final_state = torch.load(t.run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        final_state["finished"] = True
        _save_state(t.run_dir / STATE_FILE, final_state)
    distributed.barrier(t.dist)
    return FitResult(
        run_dir=t.run_dir,
        best_epoch=t.best_epoch,
        best_mean_accuracy=t.best_metric,
        epochs_done=int(t.history[-1]["epoch"]) if t.history else 0,
        history=t.history,
        metrics=metrics,
        notes=t.notes,
        skipped_images=t.skipped_images,
        stopped_early=stopped_early,
        world_size=t.dist.world_size,
        global_batch_size=cfg.batch_size * t.dist.world_size,
    )


def _val_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    known = ~np.isnan(targets)
    t = np.nan_to_num(targets)
    ll = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return float(ll[known].mean()) if known.any() else float("nan")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
