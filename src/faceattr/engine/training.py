"""What a training run is built from: :func:`setup` reads the data and builds the model, loss,
optimizer and schedule into a :class:`Training`, which :mod:`faceattr.engine.fit` then trains.

Distributed training enters here: the device of this process's rank, its share of the
validation split, and the model wrapped for data parallelism (``Training.train_model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from faceattr.config import TrainConfig
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import BatchAugment, Preprocessing
from faceattr.engine import distributed
from faceattr.engine.data import make_batches
from faceattr.engine.distributed import Dist
from faceattr.engine.ema import ModelEma
from faceattr.engine.estimate import device_line
from faceattr.engine.optim import Scheduler, amp_setup, make_optimizer, make_scheduler
from faceattr.errors import UsageError
from faceattr.losses import GroupBalance, make_loss, pos_weight_from_rates
from faceattr.models.build import build_model, model_info_for, start_from_parent
from faceattr.models.head import AttributeModel
from faceattr.models.info import ModelInfo, check_tta
from faceattr.progress import Progress
from faceattr.runs import RunDir


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
    teacher: Any = None  # distillation: engine.distill.Teacher (its logits per training row)

    @property
    def eval_model(self) -> AttributeModel:
        """The weights that are validated and saved: the EMA's when there is one."""
        return cast(AttributeModel, self.ema.module) if self.ema is not None else self.model


def load_train_valid(cfg: TrainConfig) -> tuple[AttributeTable, AttributeTable]:
    """The training split (sampled, attributes selected) and its validation split."""
    from faceattr.data import load_split, read_dataset

    d = cfg.data
    table = read_dataset(d)  # once: the annotation files of full CelebA take ~1 s to parse
    train = load_split(d, "train", sample=d.sample, seed=cfg.seed, table=table)
    valid = load_split(d, "valid", attributes=train.attributes, table=table)
    return train, valid


def group_balance(
    cfg: TrainConfig, train_table: AttributeTable, progress: Progress
) -> GroupBalance | None:
    """``optim.balance_groups`` as loss weights, from the training split's labels only (never
    validation's); each balanced spec's cells and weights go to the log. None when off."""
    from faceattr.subgroups import parse_subgroups

    specs = parse_subgroups(cfg.optim.balance_groups, train_table.attributes)
    if not specs:
        return None
    groups = GroupBalance.from_labels(
        train_table.labels, train_table.attributes, specs, cfg.optim.balance_max_weight
    )
    for balanced in groups.balanced:
        for line in balanced.describe():
            progress.log(line)
    return groups


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
    progress.log(device_line(device, ctx.world_size))
    torch.manual_seed(cfg.seed)  # the model's initial weights
    train_table, valid_table = load_train_valid(cfg)
    notes = list(dict.fromkeys(train_table.notes + valid_table.notes))
    for note in notes:
        progress.log(note)
    teacher = None
    if cfg.distill.teacher:  # `faceattr distill`: unlabeled rows added, the teacher's logits
        train_table, teacher = _teacher(cfg, train_table, valid_table, progress, ctx)
    attributes = train_table.attributes
    train_rates = train_table.positive_rates()
    groups = group_balance(cfg, train_table, progress)  # before the model: a bad spec fails fast

    model = build_model(cfg, len(attributes), progress.log)
    model.tta = check_tta(cfg.tta)
    if init_from is not None:
        progress.log(start_from_parent(model, init_from, attributes))
    if cfg.qat:  # before the device, the EMA copy and DDP: they all see the fake quantizers
        from faceattr.models.qat import prepare_qat

        done, other = prepare_qat(model)
        rest = f"; {other} of other classes stay fp32" if other else ""
        progress.log(f"Quantization-aware training: {done} layers round to int8{rest}.")
    info = model_info_for(cfg, attributes, train_rates)
    if cfg.sync_bn:
        if not (ctx.enabled and device.type == "cuda"):
            raise UsageError("`sync_bn=True` needs a distributed run on CUDA (torchrun, NCCL).")
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
    if groups is not None:
        groups.to(device)
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
    label_loss = make_loss(
        cfg.optim.loss, pos_weight=pos_weight, gamma=cfg.optim.focal_gamma, groups=groups
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
        loss_fn=_loss(cfg, label_loss, teacher),
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
        teacher=teacher,
    )


def _teacher(
    cfg: TrainConfig,
    train_table: AttributeTable,
    valid_table: AttributeTable,
    progress: Progress,
    ctx: Dist,
) -> tuple[AttributeTable, Any]:
    """Distillation: rank 0 runs the teacher (filling its cache) and writes its validation
    metrics beside the run's (``metrics-valid-teacher.json``); the other ranks then read the
    cache."""
    from faceattr.engine.distill import prepare_teacher

    run = RunDir(cfg.out)

    def write(metrics: dict[str, Any]) -> None:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_metrics("valid", metrics, tag="-teacher")

    out = None
    if ctx.is_main:
        out = prepare_teacher(cfg, train_table, valid_table, progress, write_metrics=write)
    distributed.barrier(ctx)
    if out is None:
        out = prepare_teacher(cfg, train_table, valid_table, progress)
    return out


def _loss(cfg: TrainConfig, label_loss: torch.nn.Module, teacher: Any) -> torch.nn.Module:
    """The run's loss: the label loss, mixed with the teacher's by distillation."""
    if teacher is None:
        return label_loss
    from faceattr.losses import DistillLoss

    return DistillLoss(label_loss, alpha=cfg.distill.alpha, temperature=cfg.distill.temperature)


def checkpoint_bytes(t: Training) -> int:
    """Disk space the run's checkpoints still need (see :meth:`RunDir.bytes_needed`)."""
    weights = sum(v.numel() * v.element_size() for v in t.model.state_dict().values())
    state = weights * (3 + (t.ema is not None))  # AdamW keeps two moments per weight
    return t.run.bytes_needed(weights, state)
