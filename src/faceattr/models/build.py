"""The model a training run starts from: built as its config says, backbone weights imported,
parts frozen, or started from a parent run's model (fine-tuning); and the self-description
its model files carry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from faceattr import __version__
from faceattr.config import TrainConfig
from faceattr.models.head import AttributeModel
from faceattr.models.info import ModelInfo


def build_model(
    cfg: TrainConfig, num_attributes: int, log: Callable[[str], None]
) -> AttributeModel:
    """The untrained model ``cfg.model`` describes: backbone weights imported (``log`` says
    what matched), frozen parts frozen."""
    from faceattr.models.freeze import freeze_backbone, unfreeze
    from faceattr.models.registry import create_model
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
        log(f"Backbone weights from {m.weights}: {report.summary()}")
    if m.freeze_backbone or cfg.unfreeze is not None:
        freeze_backbone(model)
    if cfg.unfreeze is not None:
        n: int | Literal["all"] = "all" if cfg.unfreeze == "all" else int(cfg.unfreeze)
        groups = unfreeze(model, n)
        log(f"Unfrozen backbone groups: {groups}")
    return model


def model_info_for(cfg: TrainConfig, attributes: list[str], train_rates: np.ndarray) -> ModelInfo:
    """The self-description saved in a run's model files (thresholds come at the end)."""
    from faceattr.data.registry import DATASETS
    from faceattr.models.registry import model_data_config

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


def start_from_parent(model: torch.nn.Module, parent_file: str | Path, attrs: list[str]) -> str:
    """Start ``model`` from the model file ``parent_file``: all same-shaped tensors, and for
    the head's output layer the rows of attributes both have (new attributes keep their fresh
    initialisation). Returns a line saying what was copied."""
    from faceattr.models.io import load_model_file

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
