"""Freezing, unfreezing and optimizer parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from faceattr.errors import UsageError
from faceattr.models import (
    backbone_groups,
    count_parameters,
    create_model,
    freeze_backbone,
    group_names,
    param_groups,
    unfreeze,
)


def _bn_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_freeze_backbone_is_a_linear_probe() -> None:
    torch.manual_seed(0)
    model = create_model("celebnet", 3, num_features=8)
    n = freeze_backbone(model)
    assert n == sum(p.numel() for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert count_parameters(model)[1] == sum(p.numel() for p in model.head.parameters())

    model.train()  # BatchNorm in the frozen backbone stays in eval mode
    bns = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert model.head.training

    before = _bn_stats(model.backbone)
    weights = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD(param_groups(model, 0.1), lr=0.1)
    for _ in range(2):
        loss = model(torch.randn(8, 3, 32, 32) * 3 + 1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in _bn_stats(model.backbone).items():
        assert torch.equal(v, before[k]), k
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert all(p.grad is None for p in model.backbone.parameters())


def test_groups_of_known_layouts() -> None:
    assert backbone_groups(create_model("celebnet", 2)) == [
        ["stages.0"], ["stages.1"], ["stages.2"], ["stages.3"], ["stages.4"]
    ]  # fmt: skip
    assert backbone_groups(create_model("resnet18", 2)) == [
        ["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]
    ]  # fmt: skip
    mv2 = backbone_groups(create_model("mobilenet_v2", 2))
    assert mv2 == [[f"features.{i}"] for i in range(19)]
    dense = group_names(create_model("densenet121", 2))
    assert dense[0] == "features.conv0+features.norm0"
    assert dense[1] == "features.denseblock1+features.transition1"
    assert dense[-1] == "features.denseblock4+features.norm5"
    eff = group_names(create_model("test_efficientnet", 2))  # timm's own group_matcher
    assert eff[0] == "conv_stem+bn1" and eff[-1].endswith("conv_head+bn2")
    assert group_names(create_model("test_vit", 2, img_size=64))[-1] == "blocks.5+norm"


@pytest.mark.parametrize("arch", ["celebnet", "test_resnet", "test_vit", "mobilenet_v2",
                                  "densenet121", "squeezenet1_1"])  # fmt: skip
def test_groups_cover_each_parameter_once(arch: str) -> None:
    model = create_model(arch, 2, img_size=64)
    params = [n for n, _ in model.backbone.named_parameters()]
    covered = [n for n in params for g in backbone_groups(model)
               if any(n == p or n.startswith(p + ".") for p in g)]  # fmt: skip
    assert sorted(covered) == sorted(params)


def test_unfreeze_last_stages() -> None:
    model = create_model("test_resnet", 3)
    unfrozen = unfreeze(model, 2)
    assert list(unfrozen) == ["layer3", "layer4"] and unfrozen.total == 5
    assert not unfrozen.all_groups and "last 2 of 5" in unfrozen.note
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    model.train()
    bn_mode = {n: m.training for n, m in model.backbone.named_modules()
               if isinstance(m, _BatchNorm)}  # fmt: skip
    assert all(mode for n, mode in bn_mode.items() if n.startswith(("layer3", "layer4")))
    assert not any(mode for n, mode in bn_mode.items() if n.startswith(("layer1", "conv1")))
    # A train-mode forward updates only the unfrozen BatchNorm statistics.
    before = _bn_stats(model.backbone)
    model(torch.randn(4, 3, 64, 64))
    after = _bn_stats(model.backbone)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer3", "layer4"}


def test_unfreeze_more_than_available_means_all() -> None:
    model = create_model("test_resnet", 3)
    freeze_backbone(model)
    unfrozen = unfreeze(model, 10)
    assert len(unfrozen) == 5 and unfrozen.all_groups
    assert "only 5" in unfrozen.note
    assert all(p.requires_grad for p in model.parameters())
    assert model.frozen_norm_layers == []
    assert list(unfreeze(model, "all")) == list(unfrozen)


def test_unfreeze_zero_and_invalid() -> None:
    model = create_model("celebnet", 3)
    assert list(unfreeze(model, 0)) == []
    assert count_parameters(model)[1] == sum(p.numel() for p in model.head.parameters())
    with pytest.raises(UsageError):
        unfreeze(model, -1)
    with pytest.raises(UsageError):
        unfreeze(model, "some")


def test_param_groups_learning_rates() -> None:
    model = create_model("celebnet", 3, num_features=8)
    unfreeze(model, 1)
    groups = param_groups(model, 1e-3, backbone_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "backbone"}
    assert by_name["head"]["lr"] == 1e-3
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4)
    n_backbone = sum(p.numel() for p in by_name["backbone"]["params"])
    assert n_backbone == sum(p.numel() for p in model.backbone.stages[4].parameters())

    decayed = param_groups(model, 1e-3, 0.1, weight_decay=0.05)
    assert {g["name"]: g["weight_decay"] for g in decayed} == {
        "head": 0.05, "head_no_decay": 0.0, "backbone": 0.05, "backbone_no_decay": 0.0
    }  # fmt: skip
    assert all(p.ndim <= 1 for g in decayed if g["name"].endswith("no_decay")
               for p in g["params"])  # fmt: skip
    torch.optim.AdamW(decayed).step()  # a valid optimizer spec

    freeze_backbone(model)
    assert [g["name"] for g in param_groups(model, 1e-3)] == ["head"]
