"""Running an exported ``.onnx`` model with ONNX Runtime (no torch needed).

An ONNX file written by `faceattr export` maps normalised pixels ``[B, 3, S, S]`` (float32,
input ``pixels``) to logits ``[B, A]`` (output ``logits``), with a dynamic batch axis, and
carries the model's :class:`~faceattr.models.info.ModelInfo` as JSON in its metadata under
``"faceattr"``, so the one file is enough to predict and evaluate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.errors import DeviceUnavailableError, ModelError, UsageError

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


def _ort() -> Any:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: its warnings are not for our users
    return ort


def session_options(threads: int | None = None) -> Any:
    """Session options for a small CPU: all graph optimisations, threads that sleep when idle
    (spinning threads steal the cores that decode and detect the next images)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Always the ONNX protobuf format (the one faceattr's readers checked), never the ORT one.
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    return opts


# onnxruntime and onnxruntime-gpu both install the `onnxruntime` module: with both installed,
# the one installed last owns the files, and uninstalling either breaks the other. pip has no
# way to say "instead of", so `faceattr[gpu]` adds onnxruntime-gpu and the user removes the CPU
# package once (docs/gpu.md).
GPU_SWITCH = (
    "Run `pip install 'faceattr[gpu]' && pip uninstall -y onnxruntime && "
    "pip install --force-reinstall --no-deps onnxruntime-gpu` on a machine with an NVIDIA GPU"
)


def runtime_packages() -> list[str]:
    """The ONNX Runtime distributions installed (``onnxruntime``, ``onnxruntime-gpu``...)."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def runtime_packages_note() -> str:
    """What is installed, in words, with the clash named when both packages are there."""
    found = runtime_packages()
    names = [f.split()[0] for f in found]
    if "onnxruntime" in names and len(names) > 1:
        return (
            f"installed: {', '.join(found)}: these share the `onnxruntime` module and must not "
            "be installed together (the one installed last owns its files)"
        )
    return f"installed: {', '.join(found) or 'no onnxruntime distribution'}"


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime execution providers for ``--device`` (auto: CUDA when this onnxruntime
    build has it, else the CPU)."""
    ort = _ort()
    available = ort.get_available_providers()
    name = (device or "auto").lower()
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and name != "cpu":
        preload_cuda_libraries()
    if name == "auto":
        # auto takes CUDA only where its provider loads: else ONNX Runtime logs an error.
        if "CUDAExecutionProvider" in available and cuda_provider_load_error() is None:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    if name.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailableError(
                f"`device={device!r}` was requested, but this onnxruntime has no CUDA support "
                f"(providers: {', '.join(available)}; {runtime_packages_note()}).",
                f'{GPU_SWITCH} (docs/gpu.md); or use `device="cpu"` or `backend="torch"`.',
            )
        index = int(name.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise UsageError(
        f"`device={device!r}` is not available with the ONNX backend.",
        'Use `device="auto"`, `device="cpu"` or `device="cuda:N"`, or `backend="torch"`.',
    )


def open_session(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    threads: int | None = None,
    model_bytes: bytes | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` (its contents ``model_bytes`` when
    already read); ModelError for a damaged file."""
    ort = _ort()
    p = Path(path)
    providers = providers_for(device)
    try:
        session = ort.InferenceSession(
            model_bytes if model_bytes is not None else str(p),
            session_options(threads),
            providers=providers,
        )
    except UsageError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{p} is not a readable ONNX model (truncated or corrupt?): {first[:300]}",
            "Export it again with `faceattr export MODEL --format onnx`, or use the bundled "
            "model (`default`).",
        ) from e
    check_providers(session, device, providers)
    return session


_preloaded: list[bool] = []


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip packages bring (``onnxruntime-gpu[cuda,
    cudnn]``, or PyTorch's) before a CUDA session, as ONNX Runtime's ``preload_dlls`` does
    (1.21+; it prints, so its words are kept off stdout, where ``--json`` goes). Once."""
    if _preloaded:
        return
    _preloaded.append(True)
    import contextlib
    import io

    ort = _ort()
    if hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()


def cuda_provider_load_error() -> str | None:
    """Why onnxruntime-gpu's CUDA provider library cannot be loaded (the dynamic loader's
    words: the first missing library), or None when it loads (or cannot be found to try)."""
    import ctypes
    import sys

    capi = Path(_ort().__file__).parent / "capi"
    lib = (
        "onnxruntime_providers_cuda.dll"
        if sys.platform == "win32"
        else ("libonnxruntime_providers_cuda.so")
    )
    if not (capi / lib).is_file():
        return None
    try:
        ctypes.CDLL(str(capi / lib))
    except OSError as e:
        return str(e).strip()[:300]
    return None


def check_providers(session: Any, device: str, asked: list[Any]) -> None:
    """A UsageError when ``--device cuda`` was asked for and ONNX Runtime quietly fell back to
    the CPU: onnxruntime-gpu lists the CUDA provider as available even where its CUDA or cuDNN
    libraries cannot be loaded, and then runs everything on the CPU without a word."""
    name = (device or "auto").lower()
    wanted = [p[0] if isinstance(p, tuple) else p for p in asked]
    if not name.startswith("cuda") or "CUDAExecutionProvider" not in wanted:
        return
    got = list(session.get_providers())
    if "CUDAExecutionProvider" in got:
        return
    why = cuda_provider_load_error()
    raise DeviceUnavailableError(
        f"`device={device!r}` was requested and this onnxruntime has a CUDA provider, but it "
        f"could not be loaded, so ONNX Runtime fell back to {', '.join(got) or 'nothing'}: "
        + (
            why
            or "usually missing CUDA or cuDNN libraries of the versions this onnxruntime-gpu "
            "was built for, or no NVIDIA driver"
        )
        + ".",
        "Install the CUDA and cuDNN libraries onnxruntime-gpu needs (`pip install "
        "'onnxruntime-gpu[cuda,cudnn]'` brings them as pip packages), check `nvidia-smi`, or "
        'use `device="cpu"` / `backend="torch"` (docs/gpu.md).',
    )


def check_io(session: Any, path: Path, num_attributes: int, img_size: int) -> str:
    """The input name, after checking the graph has one image input and ``[B, A]`` logits."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problems = []
    shape, wanted = list(inputs[0].shape) if len(inputs) == 1 else [], [3, img_size, img_size]
    if len(shape) != 4:
        problems.append(f"expected one [B, 3, {img_size}, {img_size}] input")
    elif any(isinstance(n, int) and n != w for n, w in zip(shape[1:], wanted, strict=True)):
        problems.append(
            f"its input is {shape} but the metadata says [B, 3, {img_size}, {img_size}]"
        )
    if len(outputs) < 1 or len(outputs[0].shape) != 2:
        problems.append("expected a [B, attributes] output")
    elif isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != num_attributes:
        problems.append(
            f"its output has {outputs[0].shape[1]} values but the metadata names "
            f"{num_attributes} attributes"
        )
    if problems:
        raise ModelError(
            f"{path} does not look like a faceattr model: {'; '.join(problems)}.",
            "Export it with `faceattr export MODEL --format onnx`.",
        )
    return str(inputs[0].name)


def run_logits(session: Any, input_name: str, x: np.ndarray) -> np.ndarray:
    """Logits ``[B, A]`` (float32) for normalised pixels ``x``; a ModelError when ONNX Runtime
    cannot run the graph on them (a file whose graph and metadata disagree)."""
    try:
        out = session.run(None, {input_name: x})[0]
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"ONNX Runtime cannot run the model on a batch of shape {list(x.shape)}: {first[:300]}",
            "The file's graph and its metadata disagree: export it again with "
            "`faceattr export MODEL --format onnx`, or use the bundled model (`default`).",
        ) from e
    return np.asarray(out, dtype=np.float32)
