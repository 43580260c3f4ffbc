"""The self-describing safetensors model file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from faceattr.errors import ModelError
from faceattr.models import (
    ModelInfo,
    create_model,
    load_model_file,
    read_model_info,
    save_model_file,
)

ATTRS = ["Male", "Smiling", "Young"]


def _trained_like(arch: str = "celebnet", **kwargs) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics differ from a fresh one."""
    torch.manual_seed(1)
    model = create_model(arch, len(ATTRS), num_features=16, **kwargs)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return model.eval()


def _info(**kwargs) -> ModelInfo:
    base = dict(arch="celebnet", attributes=ATTRS, num_features=16, img_size=64,
                crop=[0.1, 0.2, 0.9, 0.95], mean=[0.5] * 3, std=[0.5] * 3,
                thresholds=[0.4, 0.5, 0.6], train_positive_rates=[0.42, 0.48, 0.77],
                dataset="synthetic", license="test only")  # fmt: skip
    base.update(kwargs)
    return ModelInfo(**base)


def test_round_trip_fp32_is_exact(tmp_path: Path) -> None:
    model = _trained_like()
    info = _info(extra={"epochs": 3})
    path = save_model_file(tmp_path / "m.safetensors", model, info)
    loaded, info2 = load_model_file(path)
    assert info2 == info
    assert not loaded.training
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_round_trip_fp16_within_tolerance(tmp_path: Path) -> None:
    model = _trained_like()
    full = save_model_file(tmp_path / "full.safetensors", model, _info())
    half = save_model_file(tmp_path / "half.safetensors", model, _info(), dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    with safetensors.safe_open(str(half), framework="pt") as f:
        assert f.get_tensor("head.0.weight").dtype == torch.float16
        # integer buffers keep their type
        assert f.get_tensor("backbone.stages.0.1.num_batches_tracked").dtype == torch.int64
    loaded, _ = load_model_file(half)
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values()
               if t.is_floating_point())  # fmt: skip
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize(("arch", "img_size"), [("test_efficientnet", 64), ("test_vit", 64)])
def test_round_trip_timm(tmp_path: Path, arch: str, img_size: int) -> None:
    model = _trained_like(arch, img_size=img_size)
    path = save_model_file(tmp_path / "m.safetensors", model, _info(arch=arch, img_size=img_size))
    loaded, _ = load_model_file(path)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_metadata_is_read_from_the_header(tmp_path: Path) -> None:
    path = save_model_file(tmp_path / "m.safetensors", _trained_like(), _info())
    info = read_model_info(path)
    assert info.attributes == ATTRS and info.crop == [0.1, 0.2, 0.9, 0.95]
    assert info.thresholds == [0.4, 0.5, 0.6] and info.img_size == 64
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["faceattr"])["arch"] == "celebnet"
    # a run directory resolves to its model.safetensors
    run = tmp_path / "run"
    save_model_file(run / "model.safetensors", _trained_like(), _info())
    assert read_model_info(run).arch == "celebnet"


def test_model_info_from_dict_is_forward_compatible() -> None:
    info = ModelInfo.from_dict(
        {"arch": "celebnet", "attributes": ["Male"], "added_in_v9": {"x": 1}, "img_size": 48}
    )
    assert info.img_size == 48 and info.thresholds is None and info.crop == [0, 0, 1, 1]
    assert info.created  # default filled
    round_trip = ModelInfo.from_dict(json.loads(info.to_json()))
    assert round_trip == info
    with pytest.raises(ModelError, match="attributes"):
        ModelInfo.from_dict({"arch": "celebnet"})


def test_unknown_metadata_keys_load(tmp_path: Path) -> None:
    model = _trained_like()
    data = _info().to_dict() | {"from_the_future": True}
    path = tmp_path / "future.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path), metadata={"faceattr": json.dumps(data)})
    _, info = load_model_file(path)
    assert info.arch == "celebnet"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as info:
        load_model_file(tmp_path / "nope.safetensors")
    assert '`model="default"`' in info.value.hint


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_text("hello, I am text")
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_model_file(path)
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(ModelError, match="not a safetensors file"):
        read_model_info(pickled)


def test_truncated_file(tmp_path: Path) -> None:
    path = save_model_file(tmp_path / "m.safetensors", _trained_like(), _info())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_model_file(path)


def test_safetensors_without_faceattr_metadata(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="not a faceattr model file") as info:
        load_model_file(path)
    hint = info.value.hint
    assert "faceattr train" in hint and "(`default`)" in hint and "`model.weights=FILE`" in hint


def test_tensors_not_matching_the_architecture(tmp_path: Path) -> None:
    model = _trained_like()  # num_features=16
    path = tmp_path / "m.safetensors"
    save_model_file(path, model, _info())
    # Rewrite the header to claim another head width.
    tensors = safetensors.torch.load_file(str(path))
    wrong = _info(num_features=32).to_json()
    safetensors.torch.save_file(tensors, str(path), metadata={"faceattr": wrong})
    with pytest.raises(ModelError, match="do not match") as info:
        load_model_file(path)
    assert "head.0.weight" in info.value.message


def test_save_checks_attribute_count(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="3 outputs"):
        save_model_file(tmp_path / "m.safetensors", _trained_like(), _info(attributes=["Male"],
                        thresholds=None, train_positive_rates=None))  # fmt: skip


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    save_model_file(path, _trained_like(), _info())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    before = path.read_bytes()

    def crash(fd):  # the bytes are written, the process dies before they are on disk
        raise KeyboardInterrupt

    monkeypatch.setattr("faceattr.fileio.os.fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model_file(path, create_model("celebnet", 3, num_features=16), _info())
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_channels_last_model_saves_contiguous_tensors(tmp_path: Path) -> None:
    model = _trained_like().to(memory_format=torch.channels_last)
    path = save_model_file(tmp_path / "m.safetensors", model, _info())
    loaded, _ = load_model_file(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from faceattr.fileio import atomic_write_text
    from faceattr.models import ModelInfo, create_model, save_model_file

    old = os.umask(0o022)
    try:
        model = create_model("celebnet", 2, num_features=0)
        path = save_model_file(tmp_path / "m.safetensors", model, ModelInfo("celebnet", ["a", "b"]))
        atomic_write_text(tmp_path / "c.json", "{}")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "c.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p  # not the temp file's private 0600


def test_run_directory_with_only_last_model(tmp_path: Path) -> None:
    # Training writes last.safetensors every epoch and model.safetensors once it has a best
    # model: a run directory with only the former resolves to it, the same way everywhere.
    from faceattr.models.file import ModelFile

    run = tmp_path / "run"
    model = _trained_like()
    last = save_model_file(run / "last.safetensors", model, _info())
    assert ModelFile.resolve(run).path == last
    loaded, info = load_model_file(run)
    assert info == read_model_info(run) == read_model_info(last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    best = save_model_file(run / "model.safetensors", model, _info())
    assert ModelFile.resolve(run).path == best  # the best model wins once there is one


def test_run_directory_without_model_files(tmp_path: Path) -> None:
    from faceattr.models.file import ModelFile

    (tmp_path / "config.json").write_text("{}")
    for resolve in (ModelFile.resolve, load_model_file, read_model_info):
        with pytest.raises(ModelError, match="no model.safetensors or last.safetensors"):
            resolve(tmp_path)


def _flip_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_tensor_bytes_are_refused_on_load(tmp_path: Path) -> None:
    from faceattr.models.digest import DIGEST_KEY
    from faceattr.models.file import ModelFile

    path = save_model_file(tmp_path / "m.safetensors", _trained_like(), _info())
    assert len(ModelFile(path).metadata[DIGEST_KEY]) == 64
    load_model_file(path)  # intact: loads
    _flip_byte(path, 100)  # inside the tensor data; the header is untouched
    read_model_info(path)  # the header still reads
    with pytest.raises(ModelError, match="damaged"):
        load_model_file(path)


def test_files_without_a_digest_still_load(tmp_path: Path) -> None:
    """Model files written before the digest existed (plain safetensors save_file)."""
    model = _trained_like()
    path = save_model_file(tmp_path / "new.safetensors", model, _info())
    old = tmp_path / "old.safetensors"
    meta = {k: v for k, v in safetensors.safe_open(str(path), "pt").metadata().items()
            if k != "faceattr_sha256"}  # fmt: skip
    safetensors.torch.save_file(model.state_dict(), str(old), metadata=meta)
    loaded, _ = load_model_file(old)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
