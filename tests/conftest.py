"""Shared fixtures: a synthetic CelebA copy written once per session, and the real sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faceattr.progress import EpochEnd, Progress


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CelebA copy in the official layout (600/150/150 images, seed 0).

    Shared by the whole session: treat it as read-only.
    """
    from faceattr.data.synthetic import write_synthetic_celeba

    return write_synthetic_celeba(
        tmp_path_factory.mktemp("synthetic-celeba"), n_train=600, n_valid=150, n_test=150
    )


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``$FACEATTR_REAL_DATA/celeba-sample``: real CelebA, train partition only.

    Skips the test when the variable is unset or the folder is missing.
    """
    base = os.environ.get("FACEATTR_REAL_DATA")
    if not base:
        pytest.skip("FACEATTR_REAL_DATA is not set (real CelebA sample not available)")
    root = Path(base).expanduser() / "celeba-sample"
    if not root.is_dir():
        pytest.skip(f"{root} does not exist")
    return root


def small_train_config(root: Path, out: Path, **changes):
    """A seconds-long celebnet training on synthetic data (no augmentation: fewer steps to learn).

    ``changes`` replace TrainConfig fields. Tests import it: ``from conftest import ...``.
    """
    from dataclasses import replace

    from faceattr.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig

    cfg = TrainConfig(
        data=DataConfig(root=str(root), img_size=40, workers=0),
        model=ModelConfig(arch="celebnet", num_features=64, dropout=0.1),
        optim=OptimConfig(lr=3e-3),
        augment=AugmentConfig(hflip=False),
        epochs=3,
        batch_size=32,
        out=str(out),
    )
    return replace(cfg, **changes)


def perturb_head(model_file: Path, seed: int = 0) -> None:
    """Make a second, different model cheaply: jitter the attribute head's output layer."""
    import torch

    from faceattr.models import load_model_file, save_model_file

    model, info = load_model_file(model_file)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.classifier.weight
        w.add_(0.5 * w.std() * torch.randn(w.shape, generator=gen))
    save_model_file(model_file, model, info)


class InterruptAfterEpoch(Progress):
    """A training progress sink that raises KeyboardInterrupt (like Ctrl-C) when epoch
    ``epoch`` has ended, i.e. right after its checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, event: EpochEnd) -> None:
        if event.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small celebnet run trained on the synthetic set (shared: treat it as read-only)."""
    from faceattr.engine.fit import fit

    out = tmp_path_factory.mktemp("runs") / "celebnet"
    fit(small_train_config(synthetic_root, out))
    return out
