"""Where models live: run directories, single model files, and the packaged default model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from faceattr.config import TrainConfig
from faceattr.errors import ModelError

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_FILE = "default.safetensors"


def default_model_path() -> Path:
    return Path(str(resources.files("faceattr") / "assets" / DEFAULT_MODEL_FILE))


def resolve_model(ref: str | Path | None) -> Path:
    """A run directory, a ``.safetensors`` file or ``default`` -> the model file's path."""
    if ref is None or str(ref) == DEFAULT_MODEL_NAME:
        path = default_model_path()
        if not path.exists():
            raise ModelError(
                "This installation of faceattr has no bundled default model.",
                "Pass --model RUN_DIR or --model FILE.safetensors (train one with "
                "`faceattr train`).",
            )
        return path
    path = Path(ref).expanduser()
    if path.is_dir():
        best = path / "model.safetensors"
        if best.exists():
            return best
        last = path / "last.safetensors"
        if last.exists():
            return last
        raise ModelError(
            f"{path} holds no model.safetensors.",
            "Pass a run directory written by `faceattr train` (training may not have "
            "finished an epoch yet), a .safetensors model file, or `default`.",
        )
    if not path.exists():
        raise ModelError(
            f"Model {str(ref)!r} not found.",
            "MODEL is a run directory, a .safetensors file, or `default`.",
        )
    return path


def run_dir_of(model_path: Path) -> Path | None:
    """The run directory a model file belongs to, if it sits in one."""
    parent = model_path.parent
    return parent if (parent / "config.json").exists() else None


def run_config(model_path: Path) -> TrainConfig | None:
    run = run_dir_of(model_path)
    return TrainConfig.load(run / "config.json") if run else None
