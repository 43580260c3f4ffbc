"""Freezing and gradual unfreezing of the backbone, and optimizer parameter groups.

A backbone is split into ordered *groups* (stem, stages/blocks, ..., last stage), input side
first. Groups come from timm's own ``group_matcher`` for timm models, from known layouts for
torchvision families (ResNet ``layer1..4``, DenseNet dense blocks, ``features`` blocks of
MobileNet/EfficientNet/ConvNeXt/Swin/VGG...), and otherwise from the backbone's top-level
children. ``unfreeze(model, n)`` makes the last ``n`` groups trainable.
"""

from __future__ import annotations

from typing import Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from faceattr.errors import UsageError
from faceattr.models.head import AttributeModel

# A child holding at least this share of its parent's parameters is split into its own
# children (e.g. torchvision ViT's encoder.layers, RegNet's trunk_output).
_DOMINANT_SHARE = 0.9


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _has_children(m: nn.Module) -> bool:
    return any(True for _ in m.children())


def _units(module: nn.Module, prefix: str) -> list[tuple[str, bool]]:
    """Ordered (name, is_container) units covering every parameter of ``module``."""
    direct = [n for n, _ in module.named_parameters(recurse=False)]
    children = [(n, c) for n, c in module.named_children() if _n_params(c) > 0]
    if not direct and len(children) == 1 and _has_children(children[0][1]):
        name, child = children[0]
        return _units(child, f"{prefix}{name}.")
    total = max(_n_params(module), 1)
    out: list[tuple[str, bool]] = [(prefix + n, False) for n in direct]
    for name, child in children:
        sub = [c for c in child.children() if _n_params(c) > 0]
        if (
            _n_params(child) >= _DOMINANT_SHARE * total
            and len(sub) >= 2
            and any(_has_children(c) for c in sub)
        ):
            out += _units(child, f"{prefix}{name}.")
        else:
            out.append((prefix + name, _has_children(child)))
    return out


def _generic_groups(backbone: nn.Module) -> list[list[str]]:
    """Containers become groups; leading leaves form a stem, later leaves (a final norm, a
    DenseNet transition) join the group before them."""
    return _merge_leaves(_units(backbone, ""))


def _merge_leaves(units: list[tuple[str, bool]]) -> list[list[str]]:
    groups: list[list[str]] = []
    stem: list[str] = []
    for name, is_container in units:
        joins_previous = not is_container or name.rsplit(".", 1)[-1].startswith("transition")
        if joins_previous and groups:
            groups[-1].append(name)
        elif joins_previous:
            stem.append(name)
        else:
            groups.append([name])
    if stem:
        groups.insert(0, stem)
    return groups


def _torchvision_groups(backbone: nn.Module) -> list[list[str]] | None:
    """Prefix groups for known torchvision layouts, None for the generic rule."""
    names = [n for n, c in backbone.named_children() if _n_params(c) > 0]
    names += [n for n, _ in backbone.named_parameters(recurse=False)]
    if all(f"layer{i}" in names for i in range(1, 5)):  # ResNet, ResNeXt, Wide ResNet
        stages = [f"layer{i}" for i in range(1, 5)]
        stem = [n for n in names if n not in stages]
        return [stem, *([s] for s in stages)] if stem else [[s] for s in stages]
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential) and hasattr(features, "denseblock1"):
        return None  # DenseNet: the generic rule pairs each dense block with its transition
    for attr in ("features", "layers"):  # MobileNet, EfficientNet, ConvNeXt, Swin, VGG, MNASNet
        seq = getattr(backbone, attr, None)
        if isinstance(seq, nn.Sequential):
            blocks = [(f"{attr}.{n}", _has_children(c)) for n, c in seq.named_children()
                      if _n_params(c) > 0]  # fmt: skip
            if len(blocks) < 3:
                continue
            if any(is_container for _, is_container in blocks):
                groups = _merge_leaves(blocks)  # MNASNet: stem conv+bn as one group
            else:
                groups = [[b] for b, _ in blocks]  # VGG/AlexNet: one group per conv
            groups[-1] += [n for n in names if n != attr]  # e.g. Swin's final norm
            return groups
    return None


def _timm_groups(backbone: nn.Module) -> list[list[str]] | None:
    """Parameter-name groups from timm's own coarse group matcher (stem, stages, ...)."""
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return None
    try:
        from timm.models import group_parameters

        grouped = group_parameters(backbone, matcher(coarse=True))
    except Exception:  # not implemented for this model: use the generic rule
        return None
    groups = [list(grouped[k]) for k in sorted(grouped)]
    return groups if len(groups) >= 2 else None


def _param_groups_of(model: AttributeModel) -> list[list[str]]:
    """Backbone parameter names per group, input side first."""
    backbone = model.backbone
    params = [n for n, _ in backbone.named_parameters()]
    groups: list[list[str]] | None = None
    if model.library == "timm":
        groups = _timm_groups(backbone)
    elif model.library == "torchvision":
        prefixes = _torchvision_groups(backbone)
        if prefixes is not None:
            groups = [[p for p in params if _under(p, g)] for g in prefixes]
    if groups is None:
        groups = [[p for p in params if _under(p, g)] for g in _generic_groups(backbone)]
    groups = [g for g in groups if g]
    covered = {p for g in groups for p in g}
    leftover = [p for p in params if p not in covered]
    if leftover:  # never leave a parameter out of every group
        groups[-1] += leftover
    return groups


def _under(name: str, prefixes: list[str] | str) -> bool:
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _compact(groups: list[list[str]]) -> list[list[str]]:
    """Shortest module/parameter prefixes that cover exactly each group's parameters."""
    owner = {p: i for i, g in enumerate(groups) for p in g}
    owners_under: dict[str, set[int]] = {}
    for p, i in owner.items():
        parts = p.split(".")
        for k in range(1, len(parts) + 1):
            owners_under.setdefault(".".join(parts[:k]), set()).add(i)
    out = []
    for i, g in enumerate(groups):
        names: list[str] = []
        for p in g:
            parts = p.split(".")
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if owners_under[prefix] == {i}:
                    if prefix not in names:
                        names.append(prefix)
                    break
        out.append(names)
    return out


def backbone_groups(model: AttributeModel) -> list[list[str]]:
    """The backbone's unfreezing groups, input side first, each a list of module/parameter
    names relative to ``model.backbone`` (e.g. ``[["conv1", "bn1"], ["layer1"], ...]``)."""
    return _compact(_param_groups_of(model))


def group_names(model: AttributeModel) -> list[str]:
    """One display name per group, e.g. ``"conv1+bn1"``, ``"layer4"``."""
    return ["+".join(g) for g in backbone_groups(model)]


def _set_frozen_norms(model: AttributeModel) -> None:
    """Keep a BatchNorm in eval mode when none of its parameters train (or, for one without
    affine parameters, when it sits in a frozen part of the backbone)."""
    frozen = []
    for name, m in model.backbone.named_modules():
        if not isinstance(m, _BatchNorm):
            continue
        own = list(m.parameters(recurse=False))
        if own:
            is_frozen = not any(p.requires_grad for p in own)
        else:
            is_frozen = not any(p.requires_grad for p in model.backbone.parameters())
        if is_frozen:
            frozen.append(f"backbone.{name}")
    model.frozen_norm_layers = frozen
    model.train(model.training)  # re-apply: frozen norms switch to eval right away


def freeze_backbone(model: AttributeModel) -> int:
    """Freeze every backbone parameter and keep its BatchNorm statistics fixed (a linear
    probe); the head stays trainable. Returns the number of frozen parameters."""
    n = 0
    for p in model.backbone.parameters():
        p.requires_grad_(False)
        n += p.numel()
    for p in model.head.parameters():
        p.requires_grad_(True)
    _set_frozen_norms(model)
    return n


class UnfrozenGroups(list):
    """The names of the groups :func:`unfreeze` made trainable (a ``list[str]``), with
    ``total`` (groups in the backbone), ``requested`` (n as asked), ``all_groups`` (True when
    the whole backbone trains) and ``note`` (one line for the user)."""

    def __init__(self, names: list[str], total: int, requested: int | str) -> None:
        super().__init__(names)
        self.total = total
        self.requested = requested
        self.all_groups = len(names) == total
        if requested == "all":
            self.note = f"Unfroze all {total} backbone groups."
        elif isinstance(requested, int) and requested > total:
            self.note = (
                f"Asked to unfreeze {requested} groups but the backbone has only {total}; "
                f"unfroze all {total}."
            )
        elif not names:
            self.note = "Backbone frozen; only the head trains."
        else:
            self.note = (
                f"Unfroze the last {len(names)} of {total} backbone groups: {', '.join(names)}."
            )


def unfreeze(model: AttributeModel, n: int | Literal["all"]) -> UnfrozenGroups:
    """Make exactly the last ``n`` backbone groups (and the head) trainable, the rest frozen
    with fixed BatchNorm statistics. ``n="all"`` (or n >= the number of groups) trains the
    whole backbone. Returns the names of the unfrozen groups."""
    if isinstance(n, str):
        if n.strip().lower() != "all":
            raise UsageError(f"unfreeze takes a number of groups or 'all', got {n!r}.")
        n = "all"
    elif n < 0:
        raise UsageError(f"The number of groups to unfreeze must be >= 0, got {n}.")
    groups = _param_groups_of(model)
    names = ["+".join(g) for g in _compact(groups)]
    k = len(groups) if n == "all" else min(n, len(groups))
    freeze_backbone(model)
    params = dict(model.backbone.named_parameters())
    for g in groups[len(groups) - k :]:
        for p in g:
            params[p].requires_grad_(True)
    _set_frozen_norms(model)
    return UnfrozenGroups(names[len(names) - k :] if k else [], len(groups), n)


def param_groups(
    model: AttributeModel,
    lr: float,
    backbone_lr_mult: float = 1.0,
    weight_decay: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups: the head at ``lr``, trainable backbone parameters at
    ``lr * backbone_lr_mult``. Frozen parameters are left out. With ``weight_decay`` set,
    biases and norm weights (1-D tensors) get a group of their own with no decay."""
    out: list[dict] = []
    parts = (("head", model.head, lr), ("backbone", model.backbone, lr * backbone_lr_mult))
    for name, module, group_lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            continue
        if weight_decay is None:
            out.append({"params": params, "lr": group_lr, "name": name})
            continue
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            out.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay,
                        "name": name})  # fmt: skip
        if no_decay:
            out.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0,
                        "name": f"{name}_no_decay"})  # fmt: skip
    return out
