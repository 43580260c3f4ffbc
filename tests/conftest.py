"""Shared fixtures: a synthetic CelebA copy written once per session, and the real sample."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

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


def find_chromium() -> str | None:
    """The system's Chromium (or Chrome), None when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_tool(what: str) -> NoReturn:
    """Skip the test for want of ``what``; fail it when CI is set (CI installs its tools)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {what}")
    pytest.skip(what)


def chromium_or_skip() -> str:
    """The system's Chromium; the test is skipped without one (failed under CI)."""
    found = find_chromium()
    if found is None:
        missing_tool("no chromium binary is installed (apt-get install chromium)")
    return found


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server on a free 127.0.0.1 port (as user postgres when the
    tests run as root, since the server refuses root); skipped when none is installed."""
    import socket

    pytest.importorskip("psycopg")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    import tempfile

    # Not under pytest's tmp folder: that is private to this user, and the server may not be.
    base = Path(tempfile.mkdtemp(prefix="faceattr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    initdb = [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U",
              "faceattr", "--no-sync", "-E", "UTF8"]  # fmt: skip
    subprocess.run(initdb, check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
                    "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "-w", "start"], check=True, capture_output=True)  # fmt: skip
    yield f"postgresql://faceattr@127.0.0.1:{port}"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                    "stop"], capture_output=True)  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    """A new, empty database on the ``postgres_server`` fixture's server; its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
