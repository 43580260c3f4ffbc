"""Fine-tuning: a preset of the same training loop, started from a finished run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from faceattr.config import TrainConfig, with_overrides
from faceattr.engine.fit import FitResult, fit
from faceattr.errors import UsageError
from faceattr.progress import Progress
from faceattr.runs import RunDir

# Fine-tuning moves pretrained weights gently: 1/10 of the parent's learning rate by default.
FINETUNE_LR_FACTOR = 0.1


def finetune_config(
    parent_dir: Path, unfreeze: str = "all", changes: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The parent's configuration with fine-tuning settings applied.

    ``changes`` are TrainConfig settings as :func:`faceattr.config.with_overrides` takes them
    (``"optim.lr"``, ``"epochs"``, ...); None values mean "as the parent".
    """
    run = RunDir(parent_dir)
    if not run.is_run() or not run.best_file.exists():
        raise UsageError(
            f"{run.path} is not a finished run directory (needs {run.config_file.name} and "
            f"{run.best_file.name}).",
            "Pass the run directory of a `faceattr train` run (its `out=DIR`).",
        )
    parent = run.config()
    if unfreeze != "all":
        try:
            if int(unfreeze) < 0:
                raise ValueError
        except ValueError:
            raise UsageError(
                f"`unfreeze=N` must be a number of backbone groups or 'all', not {unfreeze!r}."
            ) from None
    assert parent.optim.lr is not None  # filled in when the config was built
    cfg = replace(
        parent,
        # Fine-tuning starts from the parent's weights, never from ImageNet again.
        model=replace(parent.model, pretrained=False, weights=None, freeze_backbone=False),
        optim=replace(parent.optim, lr=parent.optim.lr * FINETUNE_LR_FACTOR),
        parent=str(run.path),
        unfreeze=str(unfreeze),
        out=str(_default_out(run.path)),
    )
    return with_overrides(cfg, changes or {})


def _default_out(parent_dir: Path) -> Path:
    base = parent_dir.with_name(parent_dir.name + "-finetune")
    candidate, i = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}{i}")
        i += 1
    return candidate


def finetune(cfg: TrainConfig, *, progress: Progress | None = None) -> FitResult:
    """Train ``cfg`` (from :func:`finetune_config`) starting from its parent's best model."""
    assert cfg.parent is not None, "finetune() needs a config made by finetune_config()"
    return fit(cfg, progress=progress, init_from=RunDir(cfg.parent).best_file)
