"""Fine-tuning: a preset of the same training loop, started from a finished run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from faceattr.config import TrainConfig, with_overrides
from faceattr.engine.fit import FitResult, fit
from faceattr.errors import UsageError
from faceattr.progress import Progress
from faceattr.runs import BEST_FILE, CONFIG_FILE

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


def start_from_parent(model: torch.nn.Module, parent_file: str | Path, attrs: list[str]) -> str:
    """Start ``model`` from the model file ``parent_file``: all same-shaped tensors, and for
    the head's output layer the rows of attributes both have (new attributes keep their fresh
    initialisation). Returns a line saying what was copied."""
    from faceattr.models import load_model_file

    parent, parent_info = load_model_file(parent_file)
    parent_attrs = parent_info.attributes
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
    return (
        f"Started from the parent model: {copied} tensors, head rows kept for {len(kept)} "
        f"attribute(s)" + (f", new: {', '.join(new)}" if new else "")
    )


def _classifier_keys(model: torch.nn.Module) -> tuple[str, str]:
    """State-dict keys of the head's output layer (``AttributeModel.classifier``)."""
    classifier = model.classifier
    name = next(n for n, m in model.named_modules() if m is classifier)
    return f"{name}.weight", f"{name}.bias"
