"""``fit()`` and ``resume()``: a whole training run, owning seeding, device, AMP, schedule and
the epoch loop; the run directory's files belong to :class:`faceattr.runs.RunDir`.

Every epoch ends with an atomic checkpoint, so Ctrl-C or ``kill -9`` loses at most the epoch
in progress and :func:`resume` continues bit-for-bit: all randomness of epoch ``e``
(shuffling, augmentation, dropout) is drawn from generators seeded by ``(seed, e)``.

A run goes through named steps: :func:`setup` (data, model, optimizer: a :class:`Training`),
:func:`restore` (resume only: the state dicts and the :class:`RunState`), :func:`run_epoch`
once per epoch (train, validate, checkpoint) and :func:`finish` (thresholds, final model and
metrics). Distributed training belongs in :func:`setup` (the process group, the device of this
rank, the wrapped ``train_model``), in :func:`validate` (the gathered predictions) and in the
two functions that write files, :func:`save_checkpoint` and :func:`finish` (rank 0 only).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch

from faceattr.config import TrainConfig
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import BatchAugment, Preprocessing
from faceattr.engine import distributed
from faceattr.engine.data import make_batches
from faceattr.engine.distributed import Dist
from faceattr.engine.ema import ModelEma
from faceattr.engine.loop import EpochStats, predict_batches, train_one_epoch
from faceattr.engine.optim import Scheduler, amp_setup, make_optimizer, make_scheduler
from faceattr.errors import Interrupted, ModelError, UsageError
from faceattr.fileio import check_free_space
from faceattr.losses import make_loss, pos_weight_from_rates
from faceattr.malloc import tune_allocator
from faceattr.metrics import compute_metrics, metrics_report, tune_thresholds
from faceattr.models.build import build_model, model_info_for, start_from_parent
from faceattr.models.head import AttributeModel
from faceattr.models.info import ModelInfo, check_tta
from faceattr.progress import EpochEnd, NullProgress, Progress
from faceattr.runs import RunDir
from faceattr.utils import prefetch


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

    def to_json(self) -> dict[str, Any]:
        """``faceattr train --json`` (see docs/formats.md)."""
        return {
            "run_dir": str(self.run_dir),
            "best_epoch": self.best_epoch,
            "epochs_done": self.epochs_done,
            "already_finished": self.already_finished,
            "stopped_early": self.stopped_early,
            "skipped_images": self.skipped_images,
            "history": self.history,
            "world_size": self.world_size,
            "global_batch_size": self.global_batch_size,
            "valid": self.metrics,
        }


@dataclass
class RunState:
    """Where a run stands: what ``train_state.pt`` keeps besides the state dicts."""

    epoch: int = 0  # the last finished epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float = -1.0  # validation mean accuracy of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> RunState:
        return cls(epoch=saved["epoch"], history=saved["history"],
                   best_metric=saved["best_metric"], best_epoch=saved["best_epoch"],
                   bad_epochs=saved.get("bad_epochs", 0))  # fmt: skip


@dataclass
class Training:
    """What a run is built from (made once by :func:`setup`; the epochs change only the
    weights and optimizer state inside it)."""

    cfg: TrainConfig
    run: RunDir
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

    @property
    def eval_model(self) -> AttributeModel:
        """The weights that are validated and saved: the EMA's when there is one."""
        return cast(AttributeModel, self.ema.module) if self.ema is not None else self.model


class Validation(NamedTuple):
    """Probabilities ``[N, A]`` of a model on the validation split and its labels."""

    probs: np.ndarray
    targets: np.ndarray


class Epoch(NamedTuple):
    """What :func:`run_epoch` did: the event told to progress, its validation, images skipped."""

    event: EpochEnd
    validation: Validation
    skipped: int


def fit(
    cfg: TrainConfig, *, progress: Progress | None = None, init_from: str | Path | None = None
) -> FitResult:
    """Train a new model as ``cfg`` says, writing the run directory ``cfg.out``.

    ``init_from`` is a model file whose weights start the run (fine-tuning): backbone tensors
    are copied, head rows are matched by attribute name. Progress, log lines and one
    :class:`~faceattr.progress.EpochEnd` per epoch go to ``progress``.
    """
    if not cfg.out:
        raise UsageError("TrainConfig.out is empty: say which run directory to write.")
    return _locked(cfg, progress, resume=False, init_from=init_from)


def resume(run_dir: str | Path, *, progress: Progress | None = None) -> FitResult:
    """Continue the run in ``run_dir`` from its last finished epoch, with its own settings
    (``config.json``); a finished run returns its result without training."""
    run = RunDir(run_dir)
    run.check_resumable()
    cfg = replace(run.config(), out=str(run.path))
    return _locked(cfg, progress, resume=True, init_from=None)


def _locked(
    cfg: TrainConfig, progress: Progress | None, *, resume: bool, init_from: str | Path | None
) -> FitResult:
    """The run, with its folder locked by rank 0 (one process writes a run at a time)."""
    tune_allocator()  # the training step is 2x faster on the CPU (faceattr.malloc)
    ctx = distributed.init(cfg.device)
    progress = (progress or NullProgress()) if ctx.is_main else NullProgress()
    run = RunDir(cfg.out)
    with run.lock(note=progress.log) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            removed = run.remove_stale_temps()  # locked: nobody else writes here
            if removed:
                progress.log(removed)
        try:
            return _fit(cfg, run, ctx, progress, resume=resume, init_from=init_from)
        except KeyboardInterrupt:
            raise Interrupted(run.resume_hint()) from None


def _fit(
    cfg: TrainConfig,
    run: RunDir,
    ctx: Dist,
    progress: Progress,
    *,
    resume: bool,
    init_from: str | Path | None,
) -> FitResult:
    if not resume:
        run.check_new()
    saved = run.load_state() if resume else None
    distributed.barrier(ctx)  # every rank has looked at the folder before rank 0 writes
    if saved is not None and saved.get("finished"):
        return _finished_result(run, saved)
    cfg = replace(cfg, world_size=ctx.world_size)
    if saved is not None:
        init_from = None  # the checkpoint has the weights
    elif resume and cfg.parent:  # a fine-tuning run that had not finished an epoch
        init_from = RunDir(cfg.parent).best_file
    t = setup(cfg, progress, init_from=init_from, ctx=ctx)
    if ctx.is_main:
        check_free_space(run.path, checkpoint_bytes(t), "this run's checkpoints")
    state = RunState()
    if saved is not None:
        state = restore(t, saved, progress)
    elif ctx.is_main:
        if resume:
            progress.log(f"Resuming {run.path}: no epoch was finished yet, starting at epoch 1.")
        run.save_config(cfg)
    first = state.epoch + 1
    best: Validation | None = None  # of the best epoch, when it ran in this session
    skipped, stopped_early = 0, False
    for epoch in range(first, cfg.epochs + 1):
        done = run_epoch(t, state, epoch, progress, first=epoch == first)
        skipped += done.skipped
        if done.event.best:
            best = done.validation
        if cfg.patience is not None and state.bad_epochs >= cfg.patience and epoch < cfg.epochs:
            stopped_early = True
            progress.log(f"Early stopping: no improvement for {cfg.patience} epoch(s).")
            break
    return finish(t, state, best, stopped_early=stopped_early, skipped_images=skipped)


def checkpoint_bytes(t: Training) -> int:
    """Disk space the run's checkpoints still need (see :meth:`RunDir.bytes_needed`)."""
    weights = sum(v.numel() * v.element_size() for v in t.model.state_dict().values())
    state = weights * (3 + (t.ema is not None))  # AdamW keeps two moments per weight
    return t.run.bytes_needed(weights, state)


def _finished_result(run: RunDir, saved: dict[str, Any]) -> FitResult:
    metrics_file = run.metrics_file("valid")
    return FitResult(
        run_dir=run.path,
        best_epoch=saved["best_epoch"],
        best_mean_accuracy=saved["best_metric"],
        epochs_done=saved["epoch"],
        history=saved["history"],
        metrics=run.read_metrics("valid") if metrics_file.exists() else {},
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
    ctx = ctx or Dist()
    device = distributed.device_for(ctx, cfg.device)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    train_table, valid_table = load_train_valid(cfg)
    notes = list(dict.fromkeys(train_table.notes + valid_table.notes))
    for note in notes:
        progress.log(note)
    attributes = train_table.attributes
    train_rates = train_table.positive_rates()

    model = build_model(cfg, len(attributes), progress.log)
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
        run=RunDir(cfg.out),
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


def restore(t: Training, saved: dict[str, Any], progress: Progress) -> RunState:
    """Continue from a checkpoint: weights, optimizer, schedule and EMA into ``t``; the run's
    counters returned. Model files and history a kill left behind the state are rewritten."""
    t.model.load_state_dict(saved["model"])
    t.optimizer.load_state_dict(saved["optimizer"])
    saved_world = int(saved.get("world_size", 1))
    if t.scheduler is not None and saved_world != t.dist.world_size:
        # Another number of processes: other steps per epoch. Rebuild the schedule's
        # position from the epochs done instead of the saved step count.
        progress.log(
            f"Resuming with {t.dist.world_size} process(es) a run that used {saved_world}: "
            f"the schedule continues from epoch {saved['epoch']} at {t.steps_per_epoch} "
            "steps per epoch."
        )
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps is the point
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(saved["epoch"] * t.steps_per_epoch):
                t.scheduler.step()
    elif t.scheduler is not None and saved.get("scheduler") is not None:
        t.scheduler.load_state_dict(saved["scheduler"])
    if t.scaler is not None and saved.get("scaler") is not None:
        t.scaler.load_state_dict(saved["scaler"])
    if t.ema is not None and saved.get("ema") is not None:
        t.ema.load_state_dict(saved["ema"])
    state = RunState.from_saved(saved)
    repaired: list[str] = []
    if t.dist.is_main:
        info = replace(t.info, extra={"epoch": state.epoch})
        best = state.best_epoch == state.epoch
        repaired = t.run.repair(state.epoch, t.eval_model, info, best=best, history=state.history)
    distributed.barrier(t.dist)
    fixed = f"; rewrote {', '.join(repaired)} from it" if repaired else ""
    progress.log(
        f"Resuming {t.run.path} after epoch {state.epoch} of {t.cfg.epochs} (the newest "
        f"complete epoch in {t.run.state_file.name}{fixed})."
    )
    return state


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def train_epoch(t: Training, epoch: int, progress: Progress, *, first: bool) -> EpochStats:
    """One pass over the training split, with this epoch's seeded shuffle and augmentation
    (``first``: the session's first epoch, which says where its batches come from)."""
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
        progress=progress if first else None,
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
        progress.log(
            f"Skipped {len(stats.skipped)} unreadable image(s) this epoch, e.g. "
            + ", ".join(Path(p).name for p in stats.skipped[:3])
        )
    return stats


def validate(t: Training, model: torch.nn.Module, progress: Progress) -> Validation:
    """``model``'s probabilities on the validation split, and the labels."""
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
    return Validation(probs, targets)


def run_epoch(
    t: Training, state: RunState, epoch: int, progress: Progress, *, first: bool = False
) -> Epoch:
    """Train epoch ``epoch``, validate, update ``state``, checkpoint, and tell ``progress``."""
    lr = t.optimizer.param_groups[0]["lr"]
    stats = train_epoch(t, epoch, progress, first=first)
    distributed.sync_buffers(t.dist, t.model)  # one model on every rank (running statistics)
    if t.ema is not None:
        distributed.sync_buffers(t.dist, t.ema.module)
    start = time.perf_counter()
    validation = validate(t, t.eval_model, progress)
    probs, targets = validation
    val = compute_metrics(
        probs, targets, t.info.attributes, train_positive_rates=t.info.train_positive_rates
    )
    row = {
        "epoch": epoch,
        "lr": float(lr),
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "val_loss": _val_loss(probs, targets),
        "val_mean_accuracy": val["mean_accuracy"],
        "val_strict_accuracy": val["strict_accuracy"],
        "val_mean_balanced_accuracy": val["mean_balanced_accuracy"],  # not in history.csv
        # All processes together (each trains an equal share of the epoch).
        "images_per_second": stats.images_per_second * t.dist.world_size,
        "seconds": stats.seconds + (time.perf_counter() - start),
    }
    state.history.append(row)
    state.epoch = epoch
    best = val["mean_accuracy"] > state.best_metric
    if best:
        state.best_metric, state.best_epoch, state.bad_epochs = val["mean_accuracy"], epoch, 0
    else:
        state.bad_epochs += 1
    save_checkpoint(t, state, best)
    event = EpochEnd(epoch=epoch, epochs=t.cfg.epochs, row=row, best=best)
    progress.epoch_end(event)
    return Epoch(event, validation, len(stats.skipped))


def save_checkpoint(t: Training, state: RunState, best: bool) -> None:
    """The files of the epoch ``state`` has just finished (rank 0 writes, the others wait)."""
    if t.dist.is_main:
        saved = {
            "epoch": state.epoch,
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
            "scaler": t.scaler.state_dict() if t.scaler is not None else None,
            "ema": t.ema.state_dict() if t.ema is not None else None,
            "history": state.history,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "world_size": t.dist.world_size,
            "finished": False,  # set after thresholds are stored
        }
        info = replace(t.info, extra={"epoch": state.epoch})
        t.run.save_epoch(state.epoch, saved, t.eval_model, info, best=best,
                         history=state.history)  # fmt: skip
    distributed.barrier(t.dist)


def finish(
    t: Training,
    state: RunState,
    best: Validation | None,
    *,
    stopped_early: bool = False,
    skipped_images: int = 0,
) -> FitResult:
    """Tune the best model's thresholds on the validation split (``best``: its predictions,
    when the best epoch ran in this session) and store them in it; write its validation
    metrics; mark the run finished."""
    from faceattr.models.io import load_model_file

    cfg, run = t.cfg, t.run
    if state.best_epoch == 0:
        raise ModelError("Training produced no model (no epoch finished).")
    best_model, _ = load_model_file(run.best_file, device=str(t.device))
    if best is None:  # the best epoch ran before a resume
        best = validate(t, best_model, NullProgress())
    probs, targets = best
    attributes, train_rates = t.info.attributes, t.info.train_positive_rates
    info = replace(t.info, extra={"epoch": state.best_epoch})
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
    metrics.update(split="valid", model=str(run.best_file))
    if t.dist.is_main:
        run.save_model(run.best_file, best_model, info)
        run.write_metrics("valid", metrics)
        run.mark_finished()
    distributed.barrier(t.dist)
    return FitResult(
        run_dir=run.path,
        best_epoch=state.best_epoch,
        best_mean_accuracy=state.best_metric,
        epochs_done=int(state.history[-1]["epoch"]) if state.history else 0,
        history=state.history,
        metrics=metrics,
        notes=t.notes,
        skipped_images=skipped_images,
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
