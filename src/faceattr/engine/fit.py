"""``fit()``: a whole training run, owning seeding, device, AMP, schedule, checkpoints and resume.

Every epoch ends with an atomic checkpoint, so Ctrl-C or ``kill -9`` loses at most the epoch
in progress and ``fit(..., resume=True)`` continues bit-for-bit: all randomness of epoch ``e``
(shuffling, augmentation, dropout) is drawn from generators seeded by ``(seed, e)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceattr import __version__
from faceattr.config import TrainConfig
from faceattr.data.registry import DATASETS
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import BatchAugment
from faceattr.engine.data import make_batches
from faceattr.engine.ema import ModelEma
from faceattr.engine.loop import EpochStats, predict_batches, train_one_epoch
from faceattr.errors import ModelError, UsageError
from faceattr.losses import make_loss, pos_weight_from_rates
from faceattr.metrics import compute_metrics, metrics_report, tune_thresholds
from faceattr.progress import NullProgress, Progress
from faceattr.utils import atomic_open, atomic_write_text, resolve_device

CONFIG_FILE = "config.json"
BEST_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_mean_accuracy",
    "val_strict_accuracy", "images_per_second", "seconds",
)  # fmt: skip
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "cyclic", "onecycle", "none")


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


def load_train_valid(cfg: TrainConfig) -> tuple[AttributeTable, AttributeTable]:
    """The training split (sampled, attributes selected) and its validation split."""
    from faceattr.data import load_split, read_dataset

    d = cfg.data
    table = read_dataset(d)  # once: the annotation files of full CelebA take ~1 s to parse
    train = load_split(d, "train", sample=d.sample, seed=cfg.seed, table=table)
    valid = load_split(d, "valid", attributes=train.attributes, table=table)
    return train, valid


def build_model(cfg: TrainConfig, num_attributes: int, progress: Progress):
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
        report = load_backbone_weights(model, m.weights)
        progress.log(f"Backbone weights from {m.weights}: {report.summary()}")
    if m.freeze_backbone or cfg.unfreeze is not None:
        freeze_backbone(model)
    if cfg.unfreeze is not None:
        n = cfg.unfreeze if cfg.unfreeze == "all" else int(cfg.unfreeze)
        groups = unfreeze(model, n)
        progress.log(f"Unfrozen backbone groups: {groups}")
    return model


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    from faceattr.models.freeze import param_groups

    o = cfg.optim
    groups = param_groups(model, o.lr, o.backbone_lr_mult)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise UsageError("No trainable parameters: the whole model is frozen.")
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True
        )
    from faceattr.errors import unknown_name_error

    raise unknown_name_error("optimizer", o.optimizer, OPTIMIZERS)


class _WarmupCosine:
    """lr factor per step: linear warm-up, then cosine decay to 1% (picklable, unlike a lambda)."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = max(total, 1), warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    o = cfg.optim
    total = steps_per_epoch * cfg.epochs
    if o.scheduler == "none":
        return None
    if o.scheduler == "cosine":
        warmup = int(o.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(total, warmup))
    if o.scheduler == "cyclic":
        # Triangular cycles between lr/10 and lr, two cycles per epoch-pair, halving (seed 001).
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=[lr / 10 for lr in max_lr],
            max_lr=max_lr,
            step_size_up=max(1, steps_per_epoch // 2),
            mode="triangular2",
            cycle_momentum=o.optimizer == "sgd",
        )
    if o.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total, 1),
            pct_start=0.3 if not o.warmup_epochs else min(0.9, o.warmup_epochs / cfg.epochs),
        )
    from faceattr.errors import unknown_name_error

    raise unknown_name_error("scheduler", o.scheduler, SCHEDULERS)


def _amp_setup(cfg: TrainConfig, device: torch.device):
    if not (cfg.amp and device.type == "cuda"):
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def model_info_for(cfg: TrainConfig, attributes: list[str], train_rates: np.ndarray, **extra):
    from faceattr.models import ModelInfo, model_data_config

    data_cfg = model_data_config(cfg.model.arch)
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
        license=DATASETS[cfg.data.dataset].license if cfg.data.dataset in DATASETS else None,
        faceattr_version=__version__,
        extra=extra,
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


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


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
    """
    from faceattr.models import load_model_file, save_model_file
    from faceattr.models.head import check_tta

    progress = progress or NullProgress()
    run_dir = Path(cfg.out)
    state: dict[str, Any] | None = None
    if resume:
        if not (run_dir / CONFIG_FILE).exists():
            raise UsageError(
                f"Cannot resume: {run_dir} is not a run directory (no {CONFIG_FILE}).",
                "Pass the directory a previous `faceattr train` wrote (its --out).",
            )
        cfg = replace(TrainConfig.load(run_dir / CONFIG_FILE), out=str(run_dir))
        if (run_dir / STATE_FILE).exists():
            state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    elif (run_dir / CONFIG_FILE).exists():
        raise UsageError(
            f"{run_dir} already holds a training run.",
            f"Continue it with `faceattr train --resume {run_dir}`, or choose another --out.",
        )

    if state is not None and state.get("finished"):
        history = state["history"]
        metrics_path = run_dir / "metrics-valid.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return FitResult(
            run_dir=run_dir,
            best_epoch=state["best_epoch"],
            best_mean_accuracy=state["best_metric"],
            epochs_done=state["epoch"],
            history=history,
            metrics=metrics,
            already_finished=True,
        )

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_table, valid_table = load_train_valid(cfg)
    notes = list(dict.fromkeys(train_table.notes + valid_table.notes))
    for note in notes:
        progress.log(note)
    attributes = train_table.attributes
    train_rates = train_table.positive_rates()

    model = build_model(cfg, len(attributes), progress)
    model.tta = check_tta(cfg.tta)
    if init_from is not None and state is None:
        parent, parent_info = load_model_file(init_from)
        _copy_matching(model, parent, parent_info.attributes, attributes, progress)
    info = model_info_for(cfg, attributes, train_rates)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if cfg.compile else model
    # Validation and saved files use the EMA weights when there are any.
    ema = ModelEma(model, cfg.ema) if cfg.ema else None
    eval_model = ema.module if ema is not None else model

    pos_weight = None
    if cfg.optim.loss == "weighted-bce":
        pos_weight = pos_weight_from_rates(train_rates).to(device)
    loss_fn = make_loss(cfg.optim.loss, pos_weight=pos_weight, gamma=cfg.optim.focal_gamma)
    steps_per_epoch = max(1, len(train_table) // cfg.batch_size)  # drop_last below
    if len(train_table) < cfg.batch_size:
        steps_per_epoch = 1
    optimizer = _make_optimizer(cfg, model)
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)
    amp_dtype, scaler = _amp_setup(cfg, device)
    augment = BatchAugment(cfg.augment) if cfg.augment.enabled else None

    history: list[dict[str, float]] = []
    best_metric, best_epoch, bad_epochs, start_epoch = -1.0, 0, 0, 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        history = state["history"]
        best_metric, best_epoch = state["best_metric"], state["best_epoch"]
        bad_epochs, start_epoch = state["bad_epochs"], state["epoch"] + 1
        progress.log(f"Resuming {run_dir} after epoch {state['epoch']} of {cfg.epochs}.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)

    pin = device.type == "cuda"
    mean, std = info.mean, info.std
    skipped_total = 0
    best_probs: np.ndarray | None = None
    stopped_early = False
    valid_batches = make_batches(
        valid_table,
        img_size=cfg.data.img_size,
        crop=cfg.data.crop,
        batch_size=cfg.batch_size * 2,
        workers=cfg.data.workers,
        pin_memory=pin,
        data=cfg.data,  # a matching `data prepare` cache is used when there is one
        progress=progress,
    )
    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc. of this epoch
        shuffle_gen = _epoch_generator(cfg.seed, epoch, 1)
        aug_gen = _epoch_generator(cfg.seed, epoch, 2)
        batches = make_batches(
            train_table,
            img_size=cfg.data.img_size,
            crop=cfg.data.crop,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=shuffle_gen,
            workers=cfg.data.workers,
            pin_memory=pin,
            drop_last=len(train_table) >= cfg.batch_size,
            data=cfg.data,
            progress=progress if epoch == start_epoch else None,  # say it once per run
        )
        lr = optimizer.param_groups[0]["lr"]
        progress.start(f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch * cfg.batch_size)

        def on_batch(n: int, s: EpochStats) -> None:
            progress.advance(n, loss=s.loss, acc=s.accuracy, ips=s.images_per_second)

        stats = train_one_epoch(
            train_model,
            batches,
            loss_fn=loss_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            mean=mean,
            std=std,
            augment=augment,
            generator=aug_gen,
            amp_dtype=amp_dtype,
            scaler=scaler,
            channels_last=cfg.channels_last,
            ema=ema,
            on_batch=on_batch,
        )
        progress.finish()
        if stats.images == 0:
            raise UsageError(
                "No training image could be read.",
                f"Check the images under {train_table.image_dir}.",
            )
        if stats.skipped:
            skipped_total += len(stats.skipped)
            progress.log(
                f"Skipped {len(stats.skipped)} unreadable image(s) this epoch, e.g. "
                + ", ".join(Path(p).name for p in stats.skipped[:3])
            )

        start = time.perf_counter()
        progress.start("validating", total=len(valid_table))
        probs, targets, _, _ = predict_batches(
            eval_model,
            valid_batches,
            device=device,
            mean=mean,
            std=std,
            amp_dtype=amp_dtype,
            channels_last=cfg.channels_last,
            on_batch=lambda n: progress.advance(n),
        )
        progress.finish()
        val = compute_metrics(probs, targets, attributes, train_positive_rates=train_rates)
        row = {
            "epoch": epoch,
            "lr": float(lr),
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": _val_loss(probs, targets),
            "val_mean_accuracy": val["mean_accuracy"],
            "val_strict_accuracy": val["strict_accuracy"],
            "images_per_second": stats.images_per_second,
            "seconds": stats.seconds + (time.perf_counter() - start),
        }
        history.append(row)
        improved = val["mean_accuracy"] > best_metric
        if improved:
            best_metric, best_epoch, bad_epochs = val["mean_accuracy"], epoch, 0
            best_probs = probs
            save_model_file(run_dir / BEST_FILE, eval_model, replace(info, extra={"epoch": epoch}))
        else:
            bad_epochs += 1
        save_model_file(run_dir / LAST_FILE, eval_model, replace(info, extra={"epoch": epoch}))
        write_history(run_dir / HISTORY_FILE, history)
        stop = cfg.patience is not None and bad_epochs >= cfg.patience
        _save_state(
            run_dir / STATE_FILE,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "history": history,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "finished": False,  # set after thresholds are stored
            },
        )
        progress.log(
            f"epoch {epoch}/{cfg.epochs}  train loss {stats.loss:.4f}  "
            f"val loss {row['val_loss']:.4f}  val mean acc {val['mean_accuracy']:.4f}  "
            f"strict {val['strict_accuracy']:.4f}  {stats.images_per_second:.0f} img/s"
            + ("  (best)" if improved else "")
        )
        if stop and epoch < cfg.epochs:
            stopped_early = True
            progress.log(f"Early stopping: no improvement for {cfg.patience} epoch(s).")
            break

    if best_epoch == 0:
        raise ModelError("Training produced no model (no epoch finished).")
    # Thresholds and final validation metrics come from the best model.
    best_model, _ = load_model_file(run_dir / BEST_FILE, device=str(device))
    if best_probs is None:
        best_probs, targets, _, _ = predict_batches(
            best_model, valid_batches, device=device, mean=mean, std=std, amp_dtype=amp_dtype
        )
    thresholds = None
    if cfg.tune_thresholds:
        thresholds = tune_thresholds(
            best_probs,
            targets,
            metric=cfg.threshold_metric,
            max_accuracy_drop=cfg.threshold_accuracy_drop,
        )
        info = replace(info, thresholds=[float(t) for t in thresholds])
    save_model_file(run_dir / BEST_FILE, best_model, replace(info, extra={"epoch": best_epoch}))
    metrics = metrics_report(best_probs, targets, attributes, thresholds, train_rates)
    metrics.update(split="valid", model=str(run_dir / BEST_FILE))
    atomic_write_text(run_dir / "metrics-valid.json", json.dumps(metrics, indent=2) + "\n")
    final_state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    final_state["finished"] = True
    _save_state(run_dir / STATE_FILE, final_state)
    return FitResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        best_mean_accuracy=best_metric,
        epochs_done=history[-1]["epoch"] if history else 0,
        history=history,
        metrics=metrics,
        notes=notes,
        skipped_images=skipped_total,
        stopped_early=stopped_early,
    )


def _copy_matching(
    model: torch.nn.Module,
    parent: torch.nn.Module,
    parent_attrs: list[str],
    attrs: list[str],
    progress: Progress,
) -> None:
    """Start ``model`` from ``parent``: all same-shaped tensors, and for the head's last layer
    the rows of attributes both have (new attributes keep their fresh initialisation)."""
    own = model.state_dict()
    src = parent.state_dict()
    last_w, last_b = _classifier_keys(model)
    copied = 0
    for key, value in src.items():
        if key in (last_w, last_b) or key not in own:
            continue
        if own[key].shape == value.shape:
            own[key] = value.clone()
            copied += 1
    kept = [a for a in attrs if a in parent_attrs]
    for a in kept:
        i, j = attrs.index(a), parent_attrs.index(a)
        own[last_w][i] = src[last_w][j]
        own[last_b][i] = src[last_b][j]
    model.load_state_dict(own)
    new = [a for a in attrs if a not in parent_attrs]
    progress.log(
        f"Started from the parent model: {copied} tensors, head rows kept for {len(kept)} "
        f"attribute(s)" + (f", new: {', '.join(new)}" if new else "")
    )


def _classifier_keys(model: torch.nn.Module) -> tuple[str, str]:
    """State-dict keys of the head's output layer (``AttributeModel.classifier``)."""
    name = next(n for n, m in model.named_modules() if m is model.classifier)
    return f"{name}.weight", f"{name}.bias"
