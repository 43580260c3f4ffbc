"""Models: the architecture registry, the attribute head, model files and weight import.

Importing this package is cheap; torchvision/timm load on first use.
"""

from faceattr.models.freeze import (
    UnfrozenGroups,
    backbone_groups,
    freeze_backbone,
    group_names,
    param_groups,
    unfreeze,
)
from faceattr.models.head import AttributeModel, build_head
from faceattr.models.io import (
    ModelInfo,
    load_model_file,
    read_model_info,
    save_model_file,
)
from faceattr.models.registry import (
    count_parameters,
    create_model,
    list_archs,
    model_data_config,
    resolve_arch,
)
from faceattr.models.weights import LoadReport, load_backbone_weights, read_weights_file

__all__ = [
    "AttributeModel",
    "LoadReport",
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
