"""Fine-tuning: a preset of the same training loop, started from a finished run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from faceattr.config import TrainConfig, with_overrides
from faceattr.engine.fit import BEST_FILE, CONFIG_FILE, FitResult, fit
from faceattr.errors import UsageError
from faceattr.progress import Progress

# Fine-tuning moves pretrained weights gently: 1/10 of the parent's learning rate by default.
FINETUNE_LR_FACTOR = 0.1


def finetune_config(
    parent_dir: Path, unfreeze: str = "all", changes: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The parent's configuration with fine-tuning settings applied.

    ``changes`` are TrainConfig settings as :func:`faceattr.config.with_overrides` takes them
    (``"optim.lr"``, ``"epochs"``, ...); None values mean "as the parent".
    """
    parent_dir = Path(parent_dir)
    if not (parent_dir / CONFIG_FILE).exists() or not (parent_dir / BEST_FILE).exists():
        raise UsageError(
            f"{parent_dir} is not a finished run directory (needs {CONFIG_FILE} and {BEST_FILE}).",
            "Pass the --out directory of a `faceattr train` run.",
        )
    parent = TrainConfig.load(parent_dir / CONFIG_FILE)
    if unfreeze != "all":
        try:
            if int(unfreeze) < 0:
                raise ValueError
        except ValueError:
            raise UsageError(
                f"--unfreeze must be a number of backbone groups or 'all', not {unfreeze!r}."
            ) from None
    assert parent.optim.lr is not None  # filled in when the config was built
    cfg = replace(
        parent,
        # Fine-tuning starts from the parent's weights, never from ImageNet again.
        model=replace(parent.model, pretrained=False, weights=None, freeze_backbone=False),
        optim=replace(parent.optim, lr=parent.optim.lr * FINETUNE_LR_FACTOR),
        parent=str(parent_dir),
        unfreeze=str(unfreeze),
        out=str(_default_out(parent_dir)),
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
    return fit(cfg, progress=progress, init_from=Path(cfg.parent) / BEST_FILE)
