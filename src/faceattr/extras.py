"""Optional dependencies: which pip extra brings a module, and the error that says so.

``pip install faceattr`` is the light install: predict and evaluate through ONNX Runtime.
PyTorch (train, finetune, export, Grad-CAM, ``--backend torch``) comes with the ``train``
extra, plots (``report``, ``data stats --plot``) with ``plots`` (``train`` includes it),
the HTTP service (``serve``) with ``serve``, videos, cameras and streams (PyAV) with
``video``.
"""

from __future__ import annotations

import importlib.util

from faceattr.errors import FaceAttrError

# Top-level module -> the extra that installs it.
EXTRA_OF = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "plots",
    "psycopg": "postgres",
    "optuna": "train",
    "starlette": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "av": "video",
    "lap": "video",
}


class MissingExtraError(FaceAttrError):
    """A command needs a package that this installation left out (exit code 1)."""


def pip_command(extra: str) -> str:
    return f'pip install "faceattr[{extra}]"'


def missing_extra_error(module: str, what: str | None = None) -> MissingExtraError:
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top, "train")
    needs = f"{what} needs {top}" if what else f"This needs {top}"
    return MissingExtraError(
        f"{needs}, which is not installed (the light install of faceattr leaves it out).",
        f"Install the extra: {pip_command(extra)}",
    )


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str, what: str | None = None) -> None:
    """MissingExtraError naming the pip command unless every module in ``modules`` imports."""
    for module in modules:
        if not has_module(module):
            raise missing_extra_error(module, what)
