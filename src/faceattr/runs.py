"""Where models live: run directories, single model files, and the packaged default model."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from faceattr.config import TrainConfig
from faceattr.errors import ModelError

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_FILE = "default.safetensors"  # for PyTorch: fine-tuning, Grad-CAM, --backend torch
DEFAULT_ONNX_FILE = "default.onnx"  # the same model exported for ONNX Runtime (predict, eval)
# The files of a run directory (see docs/formats.md).
CONFIG_FILE = "config.json"  # the resolved TrainConfig
BEST_FILE = "model.safetensors"  # the best epoch's model, with tuned thresholds at the end
LAST_FILE = "last.safetensors"  # the latest epoch's model
STATE_FILE = "train_state.pt"  # what --resume needs (weights, optimizer, counters)
HISTORY_FILE = "history.csv"  # one row per epoch
LOCK_FILE = "faceattr.lock"  # while a process trains the run: its PID and host
# The model files of a run directory, in the order resolve_model prefers them: the best
# model, then the latest epoch's (training writes the best one after its first epoch).
RUN_MODEL_FILES = (BEST_FILE, LAST_FILE)


def default_model_path(*, onnx: bool = False) -> Path:
    """Where the bundled default model lives (``onnx``: its ONNX export); either may be absent
    from a source checkout."""
    name = DEFAULT_ONNX_FILE if onnx else DEFAULT_MODEL_FILE
    return Path(str(resources.files("faceattr") / "assets" / name))


def resolve_model(ref: str | os.PathLike[str] | None, *, onnx: bool = False) -> Path:
    """The path of the model file a MODEL reference names; the one resolver for every command.

    ``default`` (or None) is the bundled model (``onnx``: its ``.onnx`` export, which
    :func:`faceattr.inference.backends.resolve_backend` picks for prediction); a run
    directory gives its best model,
    ``model.safetensors``, or ``last.safetensors`` while training has not written a best one
    yet; anything else must be an existing model file. ModelError otherwise.
    """
    if ref is None or str(ref) == DEFAULT_MODEL_NAME:
        path = default_model_path(onnx=onnx)
        if not path.exists():
            raise ModelError(
                "This installation of faceattr has no bundled default model.",
                "Pass --model RUN_DIR or --model FILE.safetensors (train one with "
                "`faceattr train`).",
            )
        return path
    path = Path(ref).expanduser()
    if path.is_dir():
        for name in RUN_MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelError(
            f"{path} is a directory with no {' or '.join(RUN_MODEL_FILES)}.",
            "Pass a run directory written by `faceattr train` (training may not have "
            "finished an epoch yet), a .safetensors or .onnx model file, or `default`.",
        )
    if not path.exists():
        raise ModelError(
            f"Model file not found: {path}",
            "Check the path. MODEL is a run directory written by `faceattr train`, a "
            ".safetensors or .onnx model file, or `default` (e.g. `--model default`).",
        )
    return path


def run_dir_of(model_path: Path) -> Path | None:
    """The run directory a model file belongs to, if it sits in one."""
    parent = model_path.parent
    return parent if (parent / "config.json").exists() else None


def run_config(model_path: Path) -> TrainConfig | None:
    run = run_dir_of(model_path)
    return TrainConfig.load(run / "config.json") if run else None
