"""Model files: :class:`ModelFile`, the one owner of what a MODEL argument names.

A MODEL is ``default`` (the model shipped in the package), a run directory (its best model,
else its latest epoch's), or a model file in either format:

- ``.safetensors`` (written by training): weights + metadata, run by PyTorch;
- ``.onnx`` (written by `faceattr export`): a graph + metadata, run by ONNX Runtime.

Both carry the same :class:`~faceattr.models.info.ModelInfo` JSON and a digest of their
weights in their string metadata. A ModelFile resolves the reference (:meth:`ModelFile.resolve`,
or :meth:`ModelFile.for_backend` for the file a backend runs), tells the format, reads the
metadata and info (no torch, no ONNX Runtime), checks the digest, gives the identity an index
records, and opens the file as a backend or loads it as a PyTorch model. Every file it reads
is untrusted input: a damaged or foreign file is a :class:`~faceattr.errors.ModelError`.
"""

from __future__ import annotations

import os
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from faceattr.config import BACKENDS
from faceattr.errors import ModelError, UsageError, command, unknown_name_error
from faceattr.models.digest import DIGEST_KEY, onnx_metadata, verify_onnx, verify_safetensors
from faceattr.models.info import ModelInfo, info_from_metadata
from faceattr.runs import MODEL_FILES, RunDir

if TYPE_CHECKING:
    from faceattr.inference.backends import Backend
    from faceattr.models.ensemble import EnsembleModel
    from faceattr.models.head import AttributeModel

DEFAULT_MODEL_NAME = "default"
# The packaged default model, once per format (either may be absent from a source checkout).
DEFAULT_FILES = {"safetensors": "default.safetensors", "onnx": "default.onnx"}
ONNX_SUFFIX = ".onnx"
Format = Literal["safetensors", "onnx"]
# What each format's messages call it.
_KIND = {"safetensors": "a safetensors file", "onnx": "an ONNX file"}


def default_model_path(fmt: Format = "safetensors") -> Path:
    """Where the packaged default model lives in format ``fmt``."""
    return Path(str(resources.files("faceattr") / "assets" / DEFAULT_FILES[fmt]))


def is_default(ref: str | os.PathLike[str] | None) -> bool:
    return ref is None or str(ref) == DEFAULT_MODEL_NAME


class ModelFile:
    """One model file: its path, format, metadata, :class:`ModelInfo` and weights digest;
    opened as a backend (:meth:`open`) or loaded into PyTorch (:meth:`load`).

    ``name`` is how the user named it: ``"default"`` for the packaged model, else the path.
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or str(self.path)

    def __repr__(self) -> str:
        return f"ModelFile({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- finding the file ----------------------------------------------------------------

    @classmethod
    def resolve(cls, ref: ModelRef, *, fmt: Format = "safetensors") -> ModelFile:
        """The model file ``ref`` names: ``default`` (or None) is the packaged model in format
        ``fmt``; a run directory gives its best model (``model.safetensors``), or its latest
        epoch's while training has not written a best one yet; anything else must be an
        existing model file. ModelError otherwise."""
        if isinstance(ref, ModelFile):
            return ref
        if is_default(ref):
            path = default_model_path(fmt)
            if not path.exists():
                raise ModelError(
                    "This installation of faceattr has no bundled default model.",
                    "Pass a run directory or a .safetensors model file as the model (train one "
                    "with `faceattr train`).",
                )
            return cls(path, name=DEFAULT_MODEL_NAME)
        assert ref is not None
        path = Path(ref).expanduser()
        if path.is_dir():
            found = RunDir(path).model_file()
            if found is None:
                raise ModelError(
                    f"{path} is a directory with no {' or '.join(MODEL_FILES)}.",
                    "Pass a run directory written by `faceattr train` (training may not have "
                    "finished an epoch yet), a .safetensors or .onnx model file, or `default`.",
                )
            return cls(found)
        if not path.exists():
            raise ModelError(
                f"Model file not found: {path}",
                "Check the path. A model is a run directory written by `faceattr train`, a "
                ".safetensors or .onnx model file, or `default`, the bundled one "
                '(`model="default"` to predict or index with it).',
            )
        return cls(path)

    @classmethod
    def for_backend(cls, ref: ModelRef, backend: str = "auto") -> ModelFile:
        """The model file a backend runs for ``ref`` (``backend``: ``auto``, ``onnx`` or
        ``torch``; see :data:`faceattr.config.BACKENDS`).

        auto: ONNX Runtime for ``.onnx`` files and the default model, PyTorch for run
        directories and ``.safetensors`` files (or, without PyTorch installed, the ``.onnx``
        export beside the ``.safetensors`` file).
        """
        from faceattr.extras import has_module

        if backend not in BACKENDS:
            raise unknown_name_error("backend", backend, BACKENDS)
        default_onnx = backend == "onnx" or default_model_path("onnx").exists()
        if is_default(ref) and backend != "torch" and default_onnx:
            return cls.resolve(ref, fmt="onnx")
        found = cls.resolve(ref)
        if found.format == "onnx":
            if backend == "torch":
                raise UsageError(
                    f'`backend="torch"` cannot run {found.path}: an .onnx file runs through '
                    "ONNX Runtime.",
                    'Use `backend="onnx"` (or `backend="auto"`), or pass the .safetensors model '
                    "it was exported from.",
                )
            return found
        exported = found.path.with_suffix(ONNX_SUFFIX)
        if backend == "onnx":
            hint = (
                f"Its ONNX export is beside it: pass {exported} as the model"
                if exported.exists()
                else "Export it first: "
                + command("`faceattr export {model} --format onnx`", model=ref)
            )
            raise UsageError(
                f'`backend="onnx"` needs an .onnx model file; {found.path} is a PyTorch model '
                "file.",
                f'{hint}; or use `backend="torch"`.',
            )
        if backend == "auto" and not has_module("torch") and exported.exists():
            return cls(exported)
        return found

    # --- what it says about itself -------------------------------------------------------

    @cached_property
    def format(self) -> Format:
        """``onnx`` for an ``.onnx`` file, else ``safetensors`` (whose header is checked when
        it is read)."""
        return "onnx" if self.path.suffix.lower() == ONNX_SUFFIX else "safetensors"

    @property
    def backend(self) -> str:
        """The engine that runs this file: ``onnx`` (ONNX Runtime) or ``torch``."""
        return "onnx" if self.format == "onnx" else "torch"

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_MODEL_NAME

    @cached_property
    def metadata(self) -> dict[str, str]:
        """The file's string metadata (safetensors header / ONNX ``metadata_props``), read
        without torch or ONNX Runtime."""
        if self.format == "onnx":
            return onnx_metadata(self._read(), self.path)
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as f:
                return f.metadata() or {}
        except Exception as e:  # safetensors raises its own error type for a malformed header
            raise ModelError(
                f"{self.path} is not a safetensors file (or it is truncated/corrupt): {e}",
                "Pass a model file written by `faceattr train` (model.safetensors) or "
                "`faceattr export` (.onnx), or use the bundled model (`default`).",
            ) from e

    @cached_property
    def info(self) -> ModelInfo:
        """The validated :class:`ModelInfo` in the file's metadata."""
        return info_from_metadata(self.metadata, self.path, _KIND[self.format])

    @property
    def digest(self) -> str:
        """The SHA-256 of the weights stored in the metadata (files from before the digest
        existed: of the whole file)."""
        from faceattr.fileio import sha256_of

        return self.metadata.get(DIGEST_KEY) or sha256_of(self.path)

    @property
    def run(self) -> RunDir | None:
        """The run directory the file sits in, if it sits in one."""
        return RunDir.containing(self.path)

    def identity(self) -> dict[str, Any]:
        """What an index records of the model that predicted its faces: the name, the weights
        digest, the attributes and the thresholds (two models with the same identity give
        the same faces)."""
        info = self.info
        return {
            "name": self.name,
            "sha256": self.digest,
            "arch": info.arch,
            "attributes": list(info.attributes),
            "thresholds": [float(t) for t in (info.thresholds or [0.5] * info.num_attributes)],
        }

    def read_verified(self) -> tuple[bytes, ModelInfo]:
        """The file's bytes, after checking its weights against the digest in its metadata
        (damaged weights: a ModelError, not NaN predictions), and the info those bytes hold."""
        blob = self._read()
        if self.format == "onnx":
            metadata = verify_onnx(blob, self.path)
            return blob, info_from_metadata(metadata, self.path, _KIND["onnx"])
        verify_safetensors(blob, self.path)
        return blob, self.info

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise ModelError(f"Cannot read the model file {self.path}: {e.strerror or e}.") from e

    # --- using it ------------------------------------------------------------------------

    def open(self, *, device: str = "auto", threads: int | None = None) -> Backend:
        """The file loaded by its backend: ONNX Runtime for ``.onnx``, PyTorch otherwise."""
        from faceattr.inference.backends import OnnxBackend, TorchBackend

        if self.format == "onnx":
            return OnnxBackend(self, device=device, threads=threads)
        return TorchBackend(self, device=device, threads=threads)

    def load(self, *, device: Any = "cpu") -> tuple[AttributeModel | EnsembleModel, ModelInfo]:
        """The PyTorch model the file describes, weights loaded (float32, eval mode; see
        :func:`faceattr.models.io.load_model_file`)."""
        from faceattr.models.io import load_model_file

        return load_model_file(self, device=device)


# Anything a MODEL argument may be: "default" (or None), a run directory, a file's path, or a
# ModelFile already resolved.
ModelRef = str | os.PathLike[str] | ModelFile | None


def read_model_info(ref: ModelRef) -> ModelInfo:
    """The :class:`ModelInfo` of the model ``ref`` names (see :meth:`ModelFile.resolve`),
    reading only its metadata."""
    return ModelFile.resolve(ref).info
