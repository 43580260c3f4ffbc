"""``fit()`` and ``resume()``: a whole training run, owning seeding, device, AMP, schedule and
the epoch loop; the run directory's files belong to :class:`faceattr.runs.RunDir`.

Every epoch ends with an atomic checkpoint, so Ctrl-C or ``kill -9`` loses at most the epoch
in progress and :func:`resume` continues bit-for-bit: all randomness of epoch ``e``
(shuffling, augmentation, dropout) is drawn from generators seeded by ``(seed, e)``.

A run goes through named steps: :func:`faceattr.engine.training.setup` (data, model,
optimizer: a :class:`~faceattr.engine.training.Training`), :func:`restore` (resume only: the
state dicts and the :class:`RunState`), :func:`run_epoch` once per epoch (train, validate,
checkpoint) and :func:`finish` (thresholds, final model and metrics). Distributed training
belongs in ``setup`` (the process group, the device of this rank, the wrapped
``train_model``), in :func:`validate` (the gathered predictions) and in the two functions that
write files, :func:`save_checkpoint` and :func:`finish` (rank 0 only).
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
from faceattr.engine import distributed
from faceattr.engine.data import make_batches
from faceattr.engine.distributed import Dist
from faceattr.engine.estimate import RunEstimate, RunShape
from faceattr.engine.loop import EpochStats, predict_batches, train_one_epoch
from faceattr.engine.training import Training, checkpoint_bytes, setup
from faceattr.errors import Interrupted, ModelError, UsageError
from faceattr.fileio import check_free_space
from faceattr.malloc import tune_allocator
from faceattr.metrics import SavedMetrics, compute_metrics, metrics_report
from faceattr.models.qat import qat_extra
from faceattr.progress import EpochEnd, NullProgress, Progress
from faceattr.runs import RunDir, structure_problem
from faceattr.thresholds import choose_thresholds, untuned_policy
from faceattr.utils import JSON_OMIT, JsonResult, json_key, prefetch


@dataclass(kw_only=True)
class FitResult(JsonResult):
    """What a run did: ``faceattr train --json`` (docs/formats.md)."""

    run_dir: Path
    best_epoch: int
    epochs_done: int
    already_finished: bool = False
    stopped_early: bool = False
    skipped_images: int = 0
    history: list[dict[str, float]]
    world_size: int = 1  # processes that trained (torchrun)
    global_batch_size: int = 0  # batch_size * world_size
    # Validation metrics of the best model at its thresholds.
    metrics: SavedMetrics = field(metadata=json_key("valid"))
    best_mean_accuracy: float = field(metadata=JSON_OMIT)
    notes: list[str] = field(default_factory=list, metadata=JSON_OMIT)


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


class Validation(NamedTuple):
    """Probabilities ``[N, A]`` of a model on the validation split, its labels, and each
    row's row of the validation table."""

    probs: np.ndarray
    targets: np.ndarray
    rows: np.ndarray | None = None


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
    training = setup(cfg, progress, init_from=init_from, ctx=ctx)
    if ctx.is_main:
        check_free_space(run.path, checkpoint_bytes(training), "this run's checkpoints")
    state = RunState()
    if saved is not None:
        state = restore(training, saved, progress)
    elif ctx.is_main:
        if resume:
            progress.log(f"Resuming {run.path}: no epoch was finished yet, starting at epoch 1.")
        run.save_config(cfg)
    first = state.epoch + 1
    best: Validation | None = None  # of the best epoch, when it ran in this session
    skipped, stopped_early = 0, False
    for epoch in range(first, cfg.epochs + 1):
        done = run_epoch(training, state, epoch, progress, first=epoch == first)
        skipped += done.skipped
        if done.event.best:
            best = done.validation
        if cfg.patience is not None and state.bad_epochs >= cfg.patience and epoch < cfg.epochs:
            stopped_early = True
            progress.log(f"Early stopping: no improvement for {cfg.patience} epoch(s).")
            break
    return finish(training, state, best, stopped_early=stopped_early, skipped_images=skipped)


def _finished_result(run: RunDir, saved: dict[str, Any]) -> FitResult:
    metrics_file = run.metrics_file("valid")
    return FitResult(
        run_dir=run.path,
        best_epoch=saved["best_epoch"],
        best_mean_accuracy=saved["best_metric"],
        epochs_done=saved["epoch"],
        history=saved["history"],
        metrics=run.read_metrics("valid") if metrics_file.exists() else cast(SavedMetrics, {}),
        already_finished=True,
    )


def _load_saved(run: RunDir, what: str, target: Any, saved: Any) -> None:
    """``target.load_state_dict(saved)``, or the run's :meth:`~RunDir.state_error` when the
    saved part does not fit what this run built (another architecture, a foreign file).
    Parts loaded by updating attributes (schedule, scaler) are first compared with the
    fresh state, key by key (:func:`faceattr.runs.structure_problem`)."""
    if what in ("scheduler", "scaler"):
        problem = structure_problem(saved, target.state_dict(), what)
        if problem:
            raise run.state_error(problem)
    try:
        target.load_state_dict(saved)
    except Exception as e:  # torch raises RuntimeError, ValueError, KeyError, ...
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise run.state_error(f"its {what} does not fit this run's settings ({detail})") from e
    if what == "optimizer":  # each parameter's saved moments must have its shape
        for group in target.param_groups:
            for param in group["params"]:
                for key, value in target.state.get(param, {}).items():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.dim()
                        and value.shape != param.shape
                    ):
                        raise run.state_error(
                            f"its optimizer's {key} has shape {tuple(value.shape)} for a "
                            f"parameter of shape {tuple(param.shape)}"
                        )


def restore(training: Training, saved: dict[str, Any], progress: Progress) -> RunState:
    """Continue from a checkpoint: weights, optimizer, schedule and EMA into ``training``; the
    run's counters returned. Model files and history a kill left behind the state are
    rewritten."""
    run = training.run
    _load_saved(run, "model", training.model, saved["model"])
    _load_saved(run, "optimizer", training.optimizer, saved["optimizer"])
    saved_world = int(saved.get("world_size", 1))
    if training.scheduler is not None and saved_world != training.dist.world_size:
        # Another number of processes: other steps per epoch. Rebuild the schedule's
        # position from the epochs done instead of the saved step count.
        progress.log(
            f"Resuming with {training.dist.world_size} process(es) a run that used {saved_world}: "
            f"the schedule continues from epoch {saved['epoch']} at {training.steps_per_epoch} "
            "steps per epoch."
        )
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps is the point
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(saved["epoch"] * training.steps_per_epoch):
                training.scheduler.step()
    elif training.scheduler is not None and saved.get("scheduler") is not None:
        _load_saved(run, "scheduler", training.scheduler, saved["scheduler"])
    if training.scaler is not None and saved.get("scaler") is not None:
        _load_saved(run, "scaler", training.scaler, saved["scaler"])
    if training.ema is not None and saved.get("ema") is not None:
        _load_saved(run, "EMA", training.ema, saved["ema"])
    state = RunState.from_saved(saved)
    repaired: list[str] = []
    if training.dist.is_main:
        info = replace(training.info, extra={"epoch": state.epoch})
        best = state.best_epoch == state.epoch
        repaired = training.run.repair(
            state.epoch, training.eval_model, info, best=best, history=state.history
        )
    distributed.barrier(training.dist)
    fixed = f"; rewrote {', '.join(repaired)} from it" if repaired else ""
    progress.log(
        f"Resuming {training.run.path} after epoch {state.epoch} of {training.cfg.epochs} (the "
        f"newest complete epoch in {training.run.state_file.name}{fixed})."
    )
    return state


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def train_epoch(training: Training, epoch: int, progress: Progress, *, first: bool) -> EpochStats:
    """One pass over the training split, with this epoch's seeded shuffle and augmentation
    (``first``: the session's first epoch, which says where its batches come from)."""
    cfg, ctx = training.cfg, training.dist
    # Dropout etc. of this epoch (and of this rank: ranks see different images).
    torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919 * ctx.rank)
    order, rows = None, len(training.train_table)
    if ctx.enabled:
        # The same permutation on every rank; each trains on its share, all shares equal.
        perm = torch.randperm(rows, generator=_epoch_generator(cfg.seed, epoch, 1)).numpy()
        rows = rows // ctx.world_size
        order = ctx.shard(perm)[:rows]
    batches = make_batches(
        training.train_table,
        img_size=cfg.data.img_size,
        crop=training.info.crop,
        batch_size=cfg.batch_size,
        shuffle=order is None,
        generator=_epoch_generator(cfg.seed, epoch, 1),
        workers=cfg.data.workers,
        pin_memory=training.device.type == "cuda",
        drop_last=rows >= cfg.batch_size,
        data=cfg.data,
        progress=progress if first else None,
        order=order,
    )
    estimate = _run_estimate(training, epoch, batches) if first and ctx.is_main else None
    if training.device.type == "cuda":  # read (and pin) the next batch while the GPU trains
        batches = prefetch(batches)
    progress.start(f"epoch {epoch}/{cfg.epochs}", total=training.steps_per_epoch * cfg.batch_size)

    def on_batch(n: int, s: EpochStats) -> None:
        progress.advance(n, loss=s.loss, acc=s.accuracy, ips=s.images_per_second)
        said = estimate.step(n) if estimate is not None else None
        if said:
            progress.log(said)

    stats = train_one_epoch(
        training.train_model,
        batches,
        loss_fn=training.loss_fn,
        optimizer=training.optimizer,
        scheduler=training.scheduler,
        device=training.device,
        preprocessing=training.preprocessing,
        augment=training.augment,
        generator=_epoch_generator(cfg.seed, epoch, 2 + 1000 * ctx.rank),
        amp_dtype=training.amp_dtype,
        scaler=training.scaler,
        channels_last=training.channels_last,
        ema=training.ema,
        on_batch=on_batch,
        soft_targets=training.teacher,  # distillation: the teacher's logits of each batch
    )
    progress.finish()
    said = estimate.finish(stats.images, stats.seconds) if estimate is not None else None
    if said:
        progress.log(said)
    if stats.images == 0:
        raise UsageError(
            "No training image could be read.",
            f"Check the images under {training.train_table.image_dir}.",
        )
    if stats.skipped:
        progress.log(
            f"Skipped {len(stats.skipped)} unreadable image(s) this epoch, e.g. "
            + ", ".join(Path(p).name for p in stats.skipped[:3])
        )
    return stats


def _run_estimate(training: Training, epoch: int, batches: object) -> RunEstimate:
    """The whole run's time, measured on this session's first steps (said when it is long)."""
    from faceattr.data.cache import CachedBatches

    cfg = training.cfg
    valid = len(training.valid_table) if training.valid_rows is None else len(training.valid_rows)
    shape = RunShape(train_images=training.steps_per_epoch * cfg.batch_size, valid_images=valid,
                     epochs=cfg.epochs - epoch + 1, resumed=epoch > 1)  # fmt: skip
    return RunEstimate(cfg, training.device, shape, cached=isinstance(batches, CachedBatches))


def validate(training: Training, model: torch.nn.Module, progress: Progress) -> Validation:
    """``model``'s probabilities on the validation split, and the labels."""
    mine = len(training.valid_table) if training.valid_rows is None else len(training.valid_rows)
    progress.start("validating", total=mine)
    probs, targets, index, _ = predict_batches(
        model,
        training.valid_batches,
        device=training.device,
        preprocessing=training.preprocessing,
        amp_dtype=training.amp_dtype,
        channels_last=training.channels_last,
        on_batch=lambda n: progress.advance(n),
    )
    progress.finish()
    if training.valid_rows is not None:  # distributed: every rank's share, back in split order
        parts = distributed.gather(training.dist, (training.valid_rows[index], probs, targets))
        rows = np.concatenate([p[0] for p in parts])
        order = np.argsort(rows, kind="stable")
        probs = np.concatenate([p[1] for p in parts])[order]
        targets = np.concatenate([p[2] for p in parts])[order]
        index = rows[order]
    return Validation(probs, targets, index)


def run_epoch(
    training: Training, state: RunState, epoch: int, progress: Progress, *, first: bool = False
) -> Epoch:
    """Train epoch ``epoch``, validate, update ``state``, checkpoint, and tell ``progress``."""
    stats = train_epoch(training, epoch, progress, first=first)
    distributed.sync_buffers(
        training.dist, training.model
    )  # one model on every rank (running statistics)
    if training.ema is not None:
        distributed.sync_buffers(training.dist, training.ema.module)
    start = time.perf_counter()
    validation = validate(training, training.eval_model, progress)
    probs, targets = validation.probs, validation.targets
    val: Any = compute_metrics(  # its numbers go into the history row as they are (None too)
        probs,
        targets,
        training.info.attributes,
        train_positive_rates=training.info.train_positive_rates,
    )
    row = {
        "epoch": epoch,
        # What the schedule did this epoch (history.csv; docs/formats.md): the mean learning
        # rate of its steps, and the lowest and highest (a cyclic schedule peaks mid-epoch).
        "lr": stats.lr_mean,
        "lr_min": stats.lr_min,
        "lr_max": stats.lr_max,
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "val_loss": _val_loss(probs, targets),
        "val_mean_accuracy": val["mean_accuracy"],
        "val_strict_accuracy": val["strict_accuracy"],
        "val_mean_balanced_accuracy": val["mean_balanced_accuracy"],  # not in history.csv
        # All processes together (each trains an equal share of the epoch).
        "images_per_second": stats.images_per_second * training.dist.world_size,
        "seconds": stats.seconds + (time.perf_counter() - start),
    }
    state.history.append(row)
    state.epoch = epoch
    best = val["mean_accuracy"] > state.best_metric
    if best:
        state.best_metric, state.best_epoch, state.bad_epochs = val["mean_accuracy"], epoch, 0
    else:
        state.bad_epochs += 1
    save_checkpoint(training, state, best)
    event = EpochEnd(epoch=epoch, epochs=training.cfg.epochs, row=row, best=best)
    progress.epoch_end(event)
    return Epoch(event, validation, len(stats.skipped))


def save_checkpoint(training: Training, state: RunState, best: bool) -> None:
    """The files of the epoch ``state`` has just finished (rank 0 writes, the others wait)."""
    if training.dist.is_main:
        saved = {
            "epoch": state.epoch,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict()
            if training.scheduler is not None
            else None,
            "scaler": training.scaler.state_dict() if training.scaler is not None else None,
            "ema": training.ema.state_dict() if training.ema is not None else None,
            "history": state.history,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "world_size": training.dist.world_size,
            "finished": False,  # set after thresholds are stored
        }
        info = replace(training.info, extra={"epoch": state.epoch})
        training.run.save_epoch(state.epoch, saved, training.eval_model, info, best=best,
                         history=state.history)  # fmt: skip
    distributed.barrier(training.dist)


def finish(
    training: Training,
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

    cfg, run = training.cfg, training.run
    if state.best_epoch == 0:
        raise ModelError("Training produced no model (no epoch finished).")
    best_model, best_info = load_model_file(run.best_file, device=str(training.device))
    if best is None:  # the best epoch ran before a resume
        best = validate(training, best_model, NullProgress())
    probs, targets, rows = best
    attributes, train_rates = training.info.attributes, training.info.train_positive_rates
    thresholds = None
    policy = untuned_policy()
    if cfg.tune_thresholds:  # tuned where that beats 0.5 under cross-validation, else 0.5
        thresholds, policy = choose_thresholds(
            probs,
            targets,
            attributes,
            metric=cfg.threshold_metric,
            max_accuracy_drop=cfg.threshold_accuracy_drop,
            seed=cfg.seed,
            groups=training.valid_table.identity_groups(rows) if rows is not None else None,
        )
    info = replace(
        training.info,
        thresholds=None if thresholds is None else [float(x) for x in thresholds],
        extra={"epoch": state.best_epoch, "threshold_policy": policy, **qat_extra(best_info)},
    )
    report = metrics_report(probs, targets, attributes, thresholds, train_rates)
    metrics: SavedMetrics = {**report, "split": "valid", "model": str(run.best_file)}
    if training.dist.is_main:
        run.save_model(run.best_file, best_model, info)
        run.write_metrics("valid", metrics)
        run.mark_finished()
    distributed.barrier(training.dist)
    return FitResult(
        run_dir=run.path,
        best_epoch=state.best_epoch,
        best_mean_accuracy=state.best_metric,
        epochs_done=int(state.history[-1]["epoch"]) if state.history else 0,
        history=state.history,
        metrics=metrics,
        notes=training.notes,
        skipped_images=skipped_images,
        stopped_early=stopped_early,
        world_size=training.dist.world_size,
        global_batch_size=cfg.batch_size * training.dist.world_size,
    )


def _val_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    known = ~np.isnan(targets)
    y = np.nan_to_num(targets)
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(ll[known].mean()) if known.any() else float("nan")
