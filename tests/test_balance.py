"""`--balance-groups`: group-balanced loss weights (`losses.balance_weights`, `GroupBalance`),
checked by hand on tiny label matrices, and a training run that uses, records and resumes it."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import InterruptAfterEpoch, small_train_config
from faceattr.cli.app import app
from faceattr.config import DataConfig, OptimConfig, TrainConfig
from faceattr.engine.fit import fit, resume
from faceattr.errors import UsageError
from faceattr.losses import GroupBalance, balance_weights, bce_loss, make_loss
from faceattr.progress import Progress
from faceattr.subgroups import parse_subgroups

NAN = np.nan
ATTRS = ["T", "B", "C"]
# T x B cells: (no, no) 4 rows, (no, yes) 2, (yes, no) 1, (yes, yes) 1; then a row whose target
# is unknown and one whose grouping label is unknown: neither is in a cell.
LABELS = np.array(
    [[0, 0, 1], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 1, 0],
     [NAN, 0, 0], [1, NAN, 1]],
    dtype=np.float32,
)  # fmt: skip


def spec(text: str, attributes=ATTRS):
    (s,) = parse_subgroups(text, attributes)
    return s


def cell_weights(balanced) -> list[tuple[bool, tuple[bool, ...], int, float]]:
    return [(c.target_value, c.combination, c.count, c.weight) for c in balanced.cells]


def test_every_group_weighs_the_same_within_each_class_by_hand():
    b = balance_weights(LABELS, ATTRS, spec("T|B"), max_weight=10)
    # T=no: 6 rows in 2 cells, each cell's images share 6 / 2 = 3; T=yes: 2 rows, 1 each.
    assert b.grouped == 8
    assert cell_weights(b) == [
        (False, (False,), 4, 0.75),
        (False, (True,), 2, 1.5),
        (True, (False,), 1, 1.0),
        (True, (True,), 1, 1.0),
    ]
    # Each class keeps its total (T's positive rate is unchanged), so the mean weight over the
    # grouped rows stays 1: the loss keeps its scale.
    assert sum(c.count * c.weight for c in b.cells if not c.target_value) == 6
    assert sum(c.count * c.weight for c in b.cells if c.target_value) == 2


def test_the_cap_gives_small_cells_the_maximum_and_the_rest_share_equally():
    b = balance_weights(LABELS, ATTRS, spec("T|B"), max_weight=1.2)
    # T=no, B=yes would get 3 / 2 = 1.5 > 1.2 per image: it gets 1.2 (2.4 in all), and the
    # class's other cell takes the rest of its 6: 3.6 / 4 = 0.9. T=yes is under the cap.
    assert [c.weight for c in b.cells] == pytest.approx([0.9, 1.2, 1.0, 1.0])
    assert sum(c.count * c.weight for c in b.cells) == pytest.approx(8)
    assert b.describe()[0].startswith("Balancing T over T x B (8 training images")
    assert "1 cell(s) capped at 1.2" in b.describe()[0]
    # A cap of 1 is no balancing at all.
    assert [c.weight for c in balance_weights(LABELS, ATTRS, spec("T|B"), 1).cells] == [1] * 4


def test_two_grouping_attributes_and_an_empty_cell():
    labels = np.array(
        [[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]],
        dtype=np.float32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero, not even a numpy warning
        b = balance_weights(labels, ATTRS, spec("T|B,C"), max_weight=100)
    counts = [c.count for c in b.cells]
    assert counts == [2, 1, 0, 1, 1, 0, 0, 3]
    # T=no: 4 images in 3 non-empty cells, 4/3 each; T=yes: 4 in 2, 2 each; empty cells get
    # nothing.
    assert [c.weight for c in b.cells] == pytest.approx([2 / 3, 4 / 3, 0, 4 / 3, 2, 0, 0, 2 / 3])
    assert "empty, left out" in "\n".join(b.describe())


def test_no_known_labels_gives_no_weights_and_no_error():
    labels = np.full((4, 3), NAN, dtype=np.float32)
    b = balance_weights(labels, ATTRS, spec("T|B"), max_weight=10)
    assert b.grouped == 0 and all(c.weight == 0 for c in b.cells)
    weight = GroupBalance([b], ATTRS)(torch.tensor(labels))
    assert torch.equal(weight, torch.ones(4, 3))  # nothing to balance: every entry weighs 1


def test_group_balance_weighs_the_target_column_only():
    groups = GroupBalance.from_labels(LABELS, ATTRS, [spec("T|B")], max_weight=10)
    weight = groups(torch.tensor(LABELS))
    expected = torch.ones(10, 3)
    expected[:, 0] = torch.tensor([0.75, 0.75, 0.75, 0.75, 1.5, 1.5, 1.0, 1.0, 0.75, 1.0])
    # Row 8 (target unknown) gets a cell's weight but is masked out of the loss anyway;
    # row 9 (grouping label unknown) weighs 1.
    assert torch.equal(weight, expected)


def test_the_loss_is_the_weighted_mean_over_known_entries():
    groups = GroupBalance.from_labels(LABELS, ATTRS, [spec("T|B")], max_weight=10)
    target = torch.tensor(LABELS)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    known = ~torch.isnan(target)
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(target), reduction="none"
    )
    expected = (per_entry * groups(target))[known].sum() / known.sum()
    got = make_loss("bce", groups=groups)(logits, target, known)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(bce_loss(logits, target, known).item(), rel=1e-3)
    focal = make_loss("focal", gamma=0.0, groups=groups)(logits, target, known)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_weighs_the_teachers_term_by_the_same_groups():
    from faceattr.losses import DistillLoss

    groups = GroupBalance.from_labels(LABELS, ATTRS, [spec("T|B")], max_weight=10)
    target = torch.tensor(LABELS)
    gen = torch.Generator().manual_seed(2)
    logits, teacher = (
        torch.randn(target.shape, generator=gen),
        torch.randn(target.shape, generator=gen),
    )
    plain = DistillLoss(make_loss("bce"), alpha=0.0, temperature=2.0)
    balanced = DistillLoss(make_loss("bce", groups=groups), alpha=0.0, temperature=2.0)
    p, q = torch.sigmoid(teacher / 2), torch.sigmoid(logits / 2)
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))  # per entry
    weight = torch.where(torch.isnan(target), 1.0, groups(target))  # unknown label: 1
    assert weight[8, 0] == 1.0 and weight[4, 0] == 1.5
    expected = 4 * (kl * weight).sum() / kl.numel()
    got = balanced(logits, target, ~torch.isnan(target), teacher)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain(logits, target, None, teacher).item() == pytest.approx(4 * kl.mean().item(),
                                                                         rel=1e-5)  # fmt: skip


def test_positive_weights_and_group_weights_multiply():
    groups = GroupBalance.from_labels(LABELS, ATTRS, [spec("T|B")], max_weight=10)
    target = torch.tensor(LABELS)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    known = ~torch.isnan(target)
    pw = torch.tensor([3.0, 2.0, 0.5])
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(target), reduction="none"
    )
    by_class = torch.where(torch.nan_to_num(target) == 1, pw.expand_as(target), 1.0)
    expected = (per_entry * by_class * groups(target))[known].sum() / known.sum()
    got = make_loss("weighted-bce", pos_weight=pw, groups=groups)(logits, target, known)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    focal = make_loss("focal", gamma=0.0, pos_weight=pw, groups=groups)(logits, target, known)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_spec_per_target_and_a_sane_cap():
    with pytest.raises(UsageError, match="balanced twice") as e:
        GroupBalance.from_labels(LABELS, ATTRS, parse_subgroups("T|B;T|C", ATTRS), 10)
    assert "T|B,C" in e.value.hint
    with pytest.raises(UsageError, match=">= 1"):
        balance_weights(LABELS, ATTRS, spec("T|B"), max_weight=0.5)


class Logs(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def balanced_config(root, out, **changes) -> TrainConfig:
    return small_train_config(
        root,
        out,
        data=DataConfig(root=str(root), img_size=32, workers=0, sample=200),
        optim=OptimConfig(lr=3e-3, balance_groups="male|heavy_makeup, wearing_lipstick"),
        **{"epochs": 2, **changes},
    )


def test_training_uses_records_and_resumes_the_balance(synthetic_root, tmp_path):
    logs = Logs()
    cfg = balanced_config(synthetic_root, tmp_path / "full")
    fit(cfg, progress=logs)
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["optim"]["balance_groups"] == "male|heavy_makeup, wearing_lipstick"
    assert saved["optim"]["balance_max_weight"] == 10.0
    # The weights come from the 200 sampled training images only (not validation's 150).
    head = next(line for line in logs.lines if line.startswith("Balancing Male"))
    assert "over Male x Heavy_Makeup x Wearing_Lipstick (200 training images" in head

    # It changes training: the same run without it ends with other weights.
    plain = replace(cfg, optim=replace(cfg.optim, balance_groups=None), out=str(tmp_path / "p"))
    fit(plain)
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "p" / "train_state.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)

    # Resumed, the run weighs as before: bit-for-bit the uninterrupted run.
    with pytest.raises(KeyboardInterrupt):
        fit(replace(cfg, out=str(tmp_path / "cut")), progress=InterruptAfterEpoch(1))
    resume(tmp_path / "cut")
    c = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], c[key]), key


runner = CliRunner()


@pytest.mark.parametrize(
    ("spec_text", "message"),
    [
        ("Male", "needs an attribute, '|'"),
        ("Male|Male", "groups Male by itself"),
        ("Male|Nose_Ring", "Nose_Ring"),
        ("Male|Young;Male|Smiling", "balanced twice"),
    ],
)
def test_a_bad_spec_exits_2_before_training(synthetic_root, tmp_path, spec_text, message):
    r = runner.invoke(
        app,
        ["train", "--root", str(synthetic_root), "--out", str(tmp_path / "run"),
         "--balance-groups", spec_text, "--epochs", "1", "--sample", "64", "--img-size", "32",
         "--arch", "celebnet", "--workers", "0"],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert not (tmp_path / "run" / "train_state.pt").exists()


def test_the_cap_is_checked_as_a_setting(synthetic_root, tmp_path):
    r = runner.invoke(
        app,
        ["train", "--root", str(synthetic_root), "--out", str(tmp_path / "run"),
         "--balance-groups", "Male|Young", "--balance-max-weight", "0.5"],
    )  # fmt: skip
    assert r.exit_code == 2 and "--balance-max-weight" in r.output


def test_a_distributed_run_balances_on_every_process(synthetic_root, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "faceattr", "train", "--nproc", "2", "--root",
                        str(synthetic_root), "--arch", "celebnet", "--img-size", "32",
                        "--epochs", "1", "--batch-size", "16", "--sample", "128", "--out",
                        str(out), "--balance-groups", "Male|Heavy_Makeup", "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["world_size"] == 2
    # Each process weighs from the whole training split (128 images), not from its half.
    said = " ".join(r.stderr.split())
    assert "Balancing Male over Male x Heavy_Makeup (128 training images" in said
    assert "(64 training images" not in said
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["balance_groups"] == "Male|Heavy_Makeup"


def test_an_empty_spec_is_off_and_finetune_can_turn_it_off():
    from types import SimpleNamespace

    from faceattr.config import build_config, with_overrides
    from faceattr.engine.training import group_balance

    table = SimpleNamespace(attributes=ATTRS, labels=LABELS)
    parent = build_config({"optim.balance_groups": "T|B", "optim.balance_max_weight": 1.2})
    groups = group_balance(parent, table, Logs())  # type: ignore[arg-type]
    assert groups is not None and groups.balanced[0].cells[1].weight == 1.2
    child = with_overrides(parent, {"optim.balance_groups": ""})  # finetune --balance-groups ""
    assert group_balance(child, table, Logs()) is None  # type: ignore[arg-type]
    assert group_balance(build_config({}), table, Logs()) is None  # type: ignore[arg-type]
