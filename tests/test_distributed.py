"""Distributed data parallel on the CPU: 2 processes with gloo on 127.0.0.1, under torchrun.

Each launch starts two Python processes that import torch, so these tests are few and small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faceattr.config import DataConfig

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
LIMIT = 300  # seconds a launch may take before the test fails (a hang would stop here)


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=LIMIT)


@pytest.fixture(scope="module")
def ddp_run(synthetic_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun(str(HERE / "ddp_worker.py"), str(synthetic_root), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_ranks_end_with_identical_weights(ddp_run: Path):
    digests = [(ddp_run.parent / f"run.rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1] and len(digests[0]) == 64
    cfg = json.loads((ddp_run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["batch_size"] == 16


def test_saved_model_gives_the_reported_metrics(ddp_run: Path, synthetic_root: Path):
    """Validation was split over the ranks and gathered: evaluating the saved model in one
    process on the whole split gives the metrics the run wrote."""
    from faceattr.engine.evaluate import evaluate_model

    reported = json.loads((ddp_run / "metrics-valid.json").read_text())
    again = evaluate_model(ddp_run, DataConfig(root=str(synthetic_root), workers=0), "valid",
                           save=False).metrics  # fmt: skip
    assert reported["n_images"] == again["n_images"] == 150
    for key in ("mean_accuracy", "mean_balanced_accuracy", "strict_accuracy"):
        assert abs(reported[key] - again[key]) < 1e-3, key
    assert reported["mean_accuracy"] > reported["majority_accuracy"]


def test_killed_job_resumes_and_finishes(synthetic_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    killed = torchrun(str(HERE / "ddp_worker.py"), str(synthetic_root), str(out),
                      "--kill-after-epoch", "1")  # fmt: skip
    assert killed.returncode != 0
    state_epochs = [int(r.split(",")[0]) for r in (out / "history.csv").read_text().split()[1:]]
    assert state_epochs == [1]  # epoch 1's checkpoint is there, the job did not finish
    resumed = torchrun(str(HERE / "ddp_worker.py"), str(synthetic_root), str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = (out / "history.csv").read_text().split()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]
    assert (out / "metrics-valid.json").is_file()


def test_resume_with_another_number_of_processes(synthetic_root: Path, tmp_path: Path):
    """Killed with 2 processes after epoch 1, finished by a single process."""
    from faceattr.engine.fit import resume

    out = tmp_path / "run"
    killed = torchrun(str(HERE / "ddp_worker.py"), str(synthetic_root), str(out),
                      "--kill-after-epoch", "1")  # fmt: skip
    assert killed.returncode != 0
    result = resume(out)
    assert result.epochs_done == 2 and result.world_size == 1


def test_nproc_launch_reports_a_user_error_without_a_traceback(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "faceattr", "train", "--nproc", "2", "--root",
                        str(tmp_path / "missing"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=LIMIT)  # fmt: skip
    said = " ".join(r.stderr.split())  # rich wraps long paths
    assert r.returncode == 1
    assert "does not exist" in said and "Traceback" not in said
    # Which ranks get to fail before the agent stops the others varies; rank 0 always does.
    assert "Training failed in process(es) 0" in said and "of 2; the error is above" in said


def test_nproc_launch_trains(synthetic_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "faceattr", "train", "--nproc", "2", "--root",
                        str(synthetic_root), "--arch", "celebnet", "--img-size", "40",
                        "--epochs", "1", "--batch-size", "16", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=LIMIT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["world_size"] == 2 and result["global_batch_size"] == 32
    assert (out / "model.safetensors").is_file()
