"""glibc's allocator, tuned for PyTorch on the CPU.

By default glibc serves every allocation above 128 KiB-32 MiB with its own ``mmap`` and gives
it back to the kernel on ``free``, and trims the heap eagerly. PyTorch allocates and frees
large tensors every step, so the kernel spends its time zeroing and faulting the same pages
back in: measured on a 2-core CPU, up to half of a run's time was kernel time, and raising
the two thresholds made a training step 2.3x and torch prediction 2x faster
(benchmarks/bench_predict.py measures it). Memory is reused instead of returned, so the
resident size stays at its peak; that is the trade.

:func:`tune_allocator` runs once per process: at the start of the CLI, and for a library
user when training starts (``fit``, ``resume``) or the torch backend loads a model.
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment (glibc's own
settings) win, and ``FACEATTR_MALLOC=default`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT_ENV = "FACEATTR_MALLOC"
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: tensors below this come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap instead of returning it

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Raise glibc malloc's mmap and trim thresholds; True when they are raised (by this or
    an earlier call). False on other C libraries or when the user's settings say not to."""
    if "applied" in _state:
        return _state["applied"]
    _state["applied"] = applied = _apply()
    return applied


def _apply() -> bool:
    if os.environ.get(OPT_OUT_ENV, "").lower() in ("default", "off", "0"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # glibc read the user's own settings at startup
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


_libc: list[ctypes.CDLL | None] = []


def release_free_memory() -> None:
    """Give the free memory of every heap back to the kernel now (glibc's ``malloc_trim``).

    For memory freed in bulk that is not needed again soon: predict and index call it after
    a very large photo is dropped, since the thresholds above keep each worker thread's
    freed heap resident (six threads once kept 6 GB after their 88-megapixel photos were
    done, whatever the pixel budget). No-op elsewhere than glibc."""
    if not _libc:
        try:
            _libc.append(ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None)
        except OSError:
            _libc.append(None)
    libc = _libc[0]
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
