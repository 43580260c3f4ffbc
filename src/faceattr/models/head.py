"""The attribute head and :class:`AttributeModel` (backbone + head)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

from faceattr.config import TTA_MODES  # AttributeModel.tta, the model file's "tta", --tta
from faceattr.models.info import check_tta

__all__ = ["TTA_MODES", "AttributeModel", "build_head", "check_tta"]


def build_head(
    feature_dim: int, num_attributes: int, num_features: int = 512, dropout: float = 0.2
) -> nn.Sequential:
    """Pooled features [B, F] -> logits [B, A].

    ``Linear(F, num_features) -> ReLU -> Dropout -> Linear(num_features, A)``, or
    ``Dropout -> Linear(F, A)`` when ``num_features`` is 0. There is deliberately no BatchNorm:
    it would fail on a batch of one in train mode and make a frozen-backbone probe depend on
    batch composition; the backbones already end in a normalised, pooled feature.
    """
    if num_features < 0:
        raise ValueError(f"num_features must be >= 0, got {num_features}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if num_features == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_attributes))
    return nn.Sequential(
        nn.Linear(feature_dim, num_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(num_features, num_attributes),
    )


M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def tta_off(model: M) -> Iterator[M]:
    """Within the block, ``model.tta`` is "none" (any model with a ``tta`` attribute)."""
    saved = model.tta
    setattr(model, "tta", "none")  # noqa: B010 (nn.Module's attribute typing has no "tta")
    try:
        yield model
    finally:
        setattr(model, "tta", saved)  # noqa: B010


class AttributeModel(nn.Module):
    """``backbone`` ([B, 3, H, W] -> [B, F]) followed by ``head`` ([B, F] -> logits [B, A]).

    Attributes describe how to rebuild it: ``arch`` (a name :func:`create_model` accepts),
    ``library`` ("celebnet", "torchvision" or "timm"), ``num_attributes``, ``feature_dim``
    (F), ``num_features`` (head hidden width, 0 = linear head), ``dropout``, ``img_size``.

    ``tta`` is the test-time augmentation applied in eval mode: ``"none"``, or ``"flip"`` (the
    logits of each image and of its mirror image are averaged; faces are nearly symmetric and
    CelebA's attributes are all mirror-invariant). Training mode never applies it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_attributes: int,
        *,
        arch: str,
        library: str,
        num_features: int = 512,
        dropout: float = 0.2,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = build_head(feature_dim, num_attributes, num_features, dropout)
        self.arch = arch
        self.library = library
        self.num_attributes = num_attributes
        self.feature_dim = feature_dim
        self.num_features = num_features
        self.dropout = dropout
        self.img_size = img_size
        self.tta = "none"
        # Names (relative to the model) of norm layers that stay in eval mode in train(); set by
        # faceattr.models.freeze so a frozen backbone's running statistics never change.
        self.frozen_norm_layers: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (normalised) -> logits [B, A]."""
        if self.tta == "flip" and not self.training:
            # One batch of 2B images: faster than two forward passes of B.
            both = self.head(self.backbone(torch.cat([x, x.flip(-1)])))
            return (both[: len(x)] + both[len(x) :]) / 2
        return self.head(self.backbone(x))

    def no_tta(self) -> contextlib.AbstractContextManager[AttributeModel]:
        """Within the block, forward passes see exactly the given images (e.g. Grad-CAM)."""
        return tta_off(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> pooled backbone features [B, F]."""
        return self.backbone(x)

    def train(self, mode: bool = True) -> AttributeModel:
        super().train(mode)
        if mode:
            for name in self.frozen_norm_layers:
                self.get_submodule(name).eval()
        return self

    @property
    def classifier(self) -> nn.Linear:
        """The last Linear layer of the head ([.., F'] -> [.., A])."""
        layer = self.head[-1]
        if not isinstance(layer, nn.Linear):  # build_head always ends in one
            raise TypeError(f"the head ends in {type(layer).__name__}, not a Linear layer")
        return layer

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, library={self.library!r}, feature_dim={self.feature_dim}, "
            f"num_attributes={self.num_attributes}"
        ) + (f", tta={self.tta!r}" if self.tta != "none" else "")
