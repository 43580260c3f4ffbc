"""What a run optimises with (optimizers, every schedule) and what fine-tuning starts from."""

from __future__ import annotations

import pytest
import torch

from faceattr.config import TrainConfig, build_config
from faceattr.engine.optim import make_optimizer, make_scheduler
from faceattr.errors import UsageError
from faceattr.models import create_model, freeze_backbone


def _model(attributes: int = 4):
    torch.manual_seed(0)
    return create_model("celebnet", attributes, num_features=16, img_size=32)


def _config(**changes) -> TrainConfig:
    return build_config({"epochs": 4, **changes})


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of the run (the head's group)."""
    optimizer = make_optimizer(cfg, _model())
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    assert scheduler is not None
    lrs = []
    for _ in range(steps_per_epoch * cfg.epochs):
        lrs.append(optimizer.param_groups[-1]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)],
)
def test_optimizers_take_the_config(name, kind):
    cfg = _config(**{"optim.optimizer": name, "optim.backbone_lr_mult": 0.1,
                     "optim.weight_decay": 0.01})  # fmt: skip
    optimizer = make_optimizer(cfg, _model())
    assert type(optimizer) is kind
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([cfg.optim.lr * 0.1, cfg.optim.lr])  # backbone, head
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9 and cfg.optim.lr == 0.05


def test_a_frozen_model_has_nothing_to_optimise():
    model = _model()
    freeze_backbone(model)
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(UsageError, match="whole model is frozen"):
        make_optimizer(_config(), model)


def test_cosine_warms_up_then_decays_to_one_percent():
    cfg = _config(**{"optim.scheduler": "cosine", "optim.warmup_epochs": 1.0})
    lrs = _lrs(cfg, steps_per_epoch=10)
    peak = cfg.optim.lr
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # decays
    assert 0.01 * peak < lrs[-1] < 0.02 * peak  # the last step's, just above the floor


def test_cyclic_runs_triangles_between_a_tenth_and_the_peak_halving_each_cycle():
    cfg = _config(**{"optim.scheduler": "cyclic", "optim.optimizer": "sgd"})
    lrs = _lrs(cfg, steps_per_epoch=10)  # a half cycle every 5 steps
    low, high = cfg.optim.lr / 10, cfg.optim.lr
    assert lrs[0] == pytest.approx(low) and lrs[5] == pytest.approx(high)
    assert lrs[10] == pytest.approx(low)
    assert lrs[15] == pytest.approx(low + (high - low) / 2)  # triangular2: half the height
    assert min(lrs) >= low * (1 - 1e-9) and max(lrs) <= high * (1 + 1e-9)


def test_onecycle_peaks_at_its_warmup_share_and_ends_near_zero():
    cfg = _config(**{"optim.scheduler": "onecycle", "optim.warmup_epochs": 1.0})
    lrs = _lrs(cfg, steps_per_epoch=10)  # warm-up: 1 of 4 epochs
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert abs(peak - 10) <= 1 and lrs[peak] == pytest.approx(cfg.optim.lr, rel=0.02)
    assert lrs[-1] < cfg.optim.lr / 1000


def test_no_schedule_is_none():
    cfg = _config(**{"optim.scheduler": "none"})
    assert make_scheduler(cfg, make_optimizer(cfg, _model()), 10) is None


def test_fine_tuning_copies_the_backbone_and_the_head_rows_by_attribute(tmp_path):
    from faceattr.models import ModelInfo, save_model_file
    from faceattr.models.build import start_from_parent

    parent_attrs = ["Male", "Smiling", "Young"]
    parent = _model(3)
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(torch.randn_like(p))  # unlike any fresh initialisation
    info = ModelInfo(arch="celebnet", attributes=parent_attrs, num_features=16, img_size=32)
    path = save_model_file(tmp_path / "parent.safetensors", parent, info)

    attrs = ["Smiling", "Eyeglasses", "Male"]  # other order, one new attribute
    torch.manual_seed(1)
    child = create_model("celebnet", 3, num_features=16, img_size=32)
    fresh = child.classifier.weight.detach().clone()
    said = start_from_parent(child, path, attrs)
    assert "head rows kept for 2 attribute(s), new: Eyeglasses" in said
    own, src = child.state_dict(), parent.state_dict()
    [head] = [n for n, m in child.named_modules() if m is child.classifier]
    for key, value in src.items():
        if not key.startswith(f"{head}."):  # every tensor but the output layer's: copied
            assert torch.equal(own[key], value), key
    w, b = child.classifier.weight, child.classifier.bias
    for i, name in enumerate(attrs):
        if name in parent_attrs:
            j = parent_attrs.index(name)
            assert torch.equal(w[i], parent.classifier.weight[j]), name
            assert torch.equal(b[i], parent.classifier.bias[j]), name
        else:
            assert torch.equal(w[i], fresh[i])  # the new attribute keeps its initialisation


def test_history_logs_the_rates_the_cyclic_schedule_used(synthetic_root, tmp_path):
    """history.csv's lr columns are what the optimizer's steps used: with cyclic, the rate
    climbs from lr/10 to the peak and back within an epoch (it once logged lr/10, the rate at
    each epoch's start, as if the schedule never moved)."""
    from dataclasses import replace

    from conftest import small_train_config
    from faceattr.config import OptimConfig
    from faceattr.engine.fit import fit
    from faceattr.runs import RunDir

    optim = OptimConfig(optimizer="sgd", lr=0.05, scheduler="cyclic")
    cfg = small_train_config(synthetic_root, tmp_path / "run", epochs=2, optim=optim)
    cfg = replace(cfg, data=replace(cfg.data, sample=128))  # 4 steps of 32: the peak at step 2
    fit(cfg)
    first, second = RunDir(tmp_path / "run").read_history()
    assert first["lr_min"] == pytest.approx(0.005) and first["lr_max"] == pytest.approx(0.05)
    assert first["lr"] == pytest.approx((0.005 + 0.0275 + 0.05 + 0.0275) / 4)  # the steps' mean
    # triangular2: the second cycle climbs half as high
    assert second["lr_min"] == pytest.approx(0.005) and second["lr_max"] == pytest.approx(0.0275)
    # the report's history table: the mean, and the range the schedule swept
    from faceattr.report.load import load_run
    from faceattr.report.run_sections import _history_table

    table = _history_table(load_run(tmp_path / "run", "valid"))
    assert [row[1].text for row in table.rows] == ["0.028 (0.005-0.05)", "0.016 (0.005-0.028)"]
