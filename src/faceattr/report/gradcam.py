"""Grad-CAM (Selvaraju et al., 2017): which image regions made the model say "yes" to an
attribute.

The target is the backbone's last spatial feature map: the output of the last module (in
execution order) that produces a 4-D ``[B, C, h, w]`` tensor with ``h * w > 1``, pooling layers
excluded. For each attribute, the gradient of its logit with respect to that map, averaged
over space, weights the channels; the weighted sum, rectified and upsampled, is the heat map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceattr.errors import ModelError

_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def _without_tta(model: nn.Module):
    no_tta = getattr(model, "no_tta", None)
    return no_tta() if no_tta is not None else contextlib.nullcontext()


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not any(True for _ in m.children())]


@torch.no_grad()
def find_target_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the last non-pooling module whose output is a spatial 4-D map.

    ``example``: a normalised ``[B, 3, S, S]`` batch used for one tracing forward pass.
    Raises :class:`ModelError` when the backbone has none (e.g. a vision transformer).
    """
    root = getattr(model, "backbone", model)
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def hook(name: str, mod: nn.Module):
        def fn(_m: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                seen.append((name, mod, tuple(out.shape)))

        return fn

    handles = [m.register_forward_hook(hook(n, m)) for n, m in _leaves(root)]
    try:
        model.eval()
        with _without_tta(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    for name, mod, shape in reversed(seen):
        if len(shape) == 4 and shape[2] * shape[3] > 1 and not isinstance(mod, _POOLING):
            return name, mod
    raise ModelError(
        "The model has no convolutional feature map for Grad-CAM (no 4-D layer output).",
        "Grad-CAM works with CNN backbones (celebnet, resnet, densenet, efficientnet, ...).",
    )


def grad_cam(
    model: nn.Module, images: torch.Tensor, attribute_indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Heat maps for ``images`` (normalised ``[B, 3, S, S]``) and each attribute index.

    Returns (maps ``[B, K, S, S]`` float32 in [0, 1], probabilities ``[B, K]``, layer name).
    Works for frozen models too (gradients flow from the input, which requires grad).
    """
    model.eval()
    name, layer = find_target_layer(model, images[:1])
    store: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        store["features"] = out

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            with _without_tta(model):  # flip TTA would mix the mirror image's feature map in
                logits = model(x)  # [B, A]
            feats = store["features"]  # [B, C, h, w]
            maps, probs = [], []
            for k, a in enumerate(attribute_indices):
                (grad,) = torch.autograd.grad(
                    logits[:, a].sum(), feats, retain_graph=k < len(attribute_indices) - 1
                )
                weights = grad.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
                cam = F.relu((weights * feats).sum(dim=1, keepdim=True))  # [B, 1, h, w]
                cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear",
                                    align_corners=False)  # fmt: skip
                peak = cam.amax(dim=(2, 3), keepdim=True)
                cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
                maps.append(cam[:, 0].detach())
                probs.append(torch.sigmoid(logits[:, a].detach()))
    finally:
        handle.remove()
    out_maps = torch.stack(maps, dim=1).float().cpu().numpy()
    out_probs = torch.stack(probs, dim=1).float().cpu().numpy()
    return out_maps, out_probs, name
