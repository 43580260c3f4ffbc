"""Models: the architecture registry, the attribute head, model files and weight import.

Importing this package is cheap and does not import torch: each name below loads its module
(and torch, torchvision or timm with it) on first use. :mod:`faceattr.models.info` (what a
model file says about itself) never needs torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module (under faceattr.models) that defines it.
_EXPORTS = {
    "UnfrozenGroups": "freeze",
    "backbone_groups": "freeze",
    "freeze_backbone": "freeze",
    "group_names": "freeze",
    "param_groups": "freeze",
    "unfreeze": "freeze",
    "AttributeModel": "head",
    "build_head": "head",
    "ModelFile": "file",
    "ModelInfo": "info",
    "read_model_info": "file",
    "load_model_file": "io",
    "save_model_file": "io",
    "count_parameters": "registry",
    "create_model": "registry",
    "list_archs": "registry",
    "model_data_config": "registry",
    "resolve_arch": "registry",
    "LoadReport": "weights",
    "load_backbone_weights": "weights",
    "read_weights_file": "weights",
}

if TYPE_CHECKING:
    from faceattr.models.file import ModelFile, read_model_info
    from faceattr.models.freeze import (
        UnfrozenGroups,
        backbone_groups,
        freeze_backbone,
        group_names,
        param_groups,
        unfreeze,
    )
    from faceattr.models.head import AttributeModel, build_head
    from faceattr.models.info import ModelInfo
    from faceattr.models.io import load_model_file, save_model_file
    from faceattr.models.registry import (
        count_parameters,
        create_model,
        list_archs,
        model_data_config,
        resolve_arch,
    )
    from faceattr.models.weights import LoadReport, load_backbone_weights, read_weights_file


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'faceattr.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"faceattr.models.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AttributeModel",
    "LoadReport",
    "ModelFile",
    "ModelInfo",
    "UnfrozenGroups",
    "backbone_groups",
    "build_head",
    "count_parameters",
    "create_model",
    "freeze_backbone",
    "group_names",
    "list_archs",
    "load_backbone_weights",
    "load_model_file",
    "model_data_config",
    "param_groups",
    "read_model_info",
    "read_weights_file",
    "resolve_arch",
    "save_model_file",
    "unfreeze",
]
