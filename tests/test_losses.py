"""Tests for faceattr.losses: masking, agreement with torch, focal/BCE relation, factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from faceattr.errors import UsageError
from faceattr.losses import (
    LOSSES,
    BCELoss,
    FocalLoss,
    WeightedBCELoss,
    bce_loss,
    focal_loss,
    make_loss,
    pos_weight_from_rates,
)

B, A = 8, 5


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, A, generator=gen) * 3
    target = (torch.rand(B, A, generator=gen) < 0.4).float()
    return logits, target


def _all_losses():
    pw = torch.linspace(0.5, 4.0, A)
    return [make_loss("bce"), make_loss("weighted-bce", pos_weight=pw), make_loss("focal")]


@pytest.mark.parametrize("index", range(len(LOSSES)))
def test_masked_entries_get_zero_gradient_and_change_nothing(index):
    loss_fn = _all_losses()[index]
    logits, target = _batch()
    mask = torch.rand(B, A, generator=torch.Generator().manual_seed(1)) < 0.6
    logits.requires_grad_(True)
    value = loss_fn(logits, target, mask)
    value.backward()
    assert torch.all(logits.grad[~mask] == 0)
    assert torch.all(logits.grad[mask] != 0)

    # Changing masked logits and targets (even to NaN targets) leaves the loss unchanged.
    other_logits = torch.where(mask, logits.detach(), torch.full_like(logits, 40.0))
    other_target = torch.where(mask, target, torch.full_like(target, float("nan")))
    assert loss_fn(other_logits, other_target, mask).item() == pytest.approx(value.item())

    # The mean is over known entries: equal to the unmasked loss on the known entries alone.
    if index == 1:  # pos_weight is per attribute, so compare with repeated weights
        pw = loss_fn.pos_weight.expand(B, A)[mask]
        flat = F.binary_cross_entropy_with_logits(
            logits.detach()[mask], target[mask], pos_weight=pw
        )
    else:
        flat = type(loss_fn)()(logits.detach()[mask].view(1, -1), target[mask].view(1, -1))
    assert flat.item() == pytest.approx(value.item(), rel=1e-6)


def test_bce_matches_torch_without_mask():
    logits, target = _batch()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert make_loss("bce")(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_weighted_bce_matches_torch_pos_weight():
    logits, target = _batch()
    pw = pos_weight_from_rates([0.05, 0.2, 0.5, 0.8, 0.3])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(logits, target)
    got = make_loss("weighted-bce", pos_weight=pw)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_gamma_zero_equals_bce_and_gamma_down_weights_easy_entries():
    logits, target = _batch()
    bce = bce_loss(logits, target)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-6)
    pw = torch.linspace(0.5, 4.0, A)
    assert FocalLoss(gamma=0.0, pos_weight=pw)(logits, target).item() == pytest.approx(
        bce_loss(logits, target, pos_weight=pw).item(), rel=1e-6
    )
    assert focal_loss(logits, target, gamma=2.0).item() < bce.item()
    # alpha = 0.5 halves every entry.
    half = focal_loss(logits, target, gamma=2.0, alpha=0.5).item()
    assert half == pytest.approx(focal_loss(logits, target, gamma=2.0).item() / 2, rel=1e-6)


@pytest.mark.parametrize("index", range(len(LOSSES)))
def test_nan_targets_with_mask_give_finite_loss_and_gradient(index):
    loss_fn = _all_losses()[index]
    logits, target = _batch()
    target[0, :] = float("nan")
    target[:, 2] = float("nan")
    mask = ~torch.isnan(target)
    logits.requires_grad_(True)
    value = loss_fn(logits, target, mask)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.isfinite(logits.grad).all()
    # Without a mask, NaN targets are still treated as unknown.
    assert loss_fn(logits, target).item() == pytest.approx(value.item())


def test_all_unknown_batch_is_zero_and_differentiable():
    logits = torch.randn(B, A, requires_grad=True)
    value = bce_loss(logits, torch.full((B, A), float("nan")))
    value.backward()
    assert value.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_losses_compute_in_float32_under_autocast():
    logits, target = _batch()
    expected = [fn(logits, target).item() for fn in _all_losses()]
    layer = torch.nn.Linear(A, A)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(A))
        layer.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_logits = layer(logits)
        assert half_logits.dtype == torch.bfloat16
        for fn, want in zip(_all_losses(), expected, strict=True):
            value = fn(half_logits, target)
            assert value.dtype == torch.float32
            assert value.item() == pytest.approx(want, rel=0.05)


def test_weighted_module_moves_its_weights_with_to():
    loss_fn = WeightedBCELoss([1.0, 2.0])
    assert "pos_weight" in dict(loss_fn.named_buffers())
    assert loss_fn.to(torch.float64).pos_weight.dtype == torch.float64


def test_pos_weight_from_rates():
    w = pos_weight_from_rates([0.5, 0.2, 0.8, 0.001, 0.999, 0.0, 1.0, float("nan")], max_weight=50)
    assert w.dtype == torch.float32
    expected = [1.0, 4.0, 0.25, 50.0, 1 / 50, 1.0, 1.0, 1.0]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UsageError):
        pos_weight_from_rates([0.5], max_weight=0.5)


def test_make_loss_names_and_errors():
    assert isinstance(make_loss("bce"), BCELoss)
    assert isinstance(make_loss("weighted_bce", pos_weight=[1.0]), WeightedBCELoss)
    focal = make_loss("Focal", gamma=1.5)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    with pytest.raises(UsageError) as err:
        make_loss("focall")
    text = str(err.value)
    assert "focall" in text and "Did you mean: focal" in text and "weighted-bce" in text
    with pytest.raises(ValueError, match="pos_weight"):
        make_loss("weighted-bce")
    with pytest.raises(ValueError, match="weighted-bce"):
        make_loss("bce", pos_weight=[1.0])
    with pytest.raises(UsageError):
        make_loss("focal", gamma=-1.0)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same"):
        bce_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pos_weight"):
        bce_loss(torch.zeros(2, 3), torch.zeros(2, 3), pos_weight=torch.ones(4))
