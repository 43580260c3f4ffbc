"""Small shared helpers: device choice, seeding, a threaded map (atomic writes: ``fileio``)."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar


def strict_json_value(value: Any) -> Any:
    """``value`` with numpy types made plain and NaN/infinity made ``None`` (JSON's null),
    so that every JSON faceattr writes is valid JSON (bare ``NaN`` is not)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json_value(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # paths and the like


def to_json(value: Any, **kwargs: Any) -> str:
    """The one JSON encoder of results (files and ``--json``): strict, NaN as null."""
    import json

    return json.dumps(strict_json_value(value), allow_nan=False, **kwargs)


# Field metadata of a JsonResult: the field under another key, left out, or left out when None.
def json_key(name: str) -> dict[str, Any]:
    return {"json": name}


JSON_OMIT: dict[str, Any] = {"json": None}
JSON_OPTIONAL: dict[str, Any] = {"json_optional": True}


class JsonResult:
    """A result dataclass whose JSON (``--json``, the Python API) is its fields in order.

    A field's metadata may rename it (:func:`json_key`), leave it out (:data:`JSON_OMIT`) or
    leave it out when it is None (:data:`JSON_OPTIONAL`); a value with its own ``to_json()``
    (or a list of such) gives that, a path its text.
    """

    def to_json(self) -> dict[str, Any]:
        import dataclasses
        from pathlib import PurePath

        def plain(value: Any) -> Any:
            if hasattr(value, "to_json"):
                return value.to_json()
            if isinstance(value, list):
                return [plain(v) for v in value]
            return str(value) if isinstance(value, PurePath) else value

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f.metadata.get("json", f.name)
            value = getattr(self, f.name)
            if key is None or (value is None and f.metadata.get("json_optional")):
                continue
            out[key] = plain(value)
        return out


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when present, else MPS, else CPU; checks that a requested device exists."""
    import torch

    from faceattr.errors import DeviceUnavailableError, UsageError

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = (
            f"this PyTorch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else f"this PyTorch (CUDA {torch.version.cuda}) finds no usable NVIDIA GPU or driver"
        )
        raise DeviceUnavailableError(
            f"`device={name!r}` was requested but CUDA is not available: {why}.",
            'Use `device="cpu"` (or `device="auto"`), or install a CUDA build of PyTorch on a '
            "GPU machine (https://pytorch.org/get-started/locally/; check `nvidia-smi`).",
        )
    if (
        name.startswith("cuda:")
        and name[5:].isdigit()
        and int(name[5:]) >= (count := torch.cuda.device_count())
    ):
        raise DeviceUnavailableError(
            f"`device={name!r}` was requested but this machine has {count} CUDA device(s).",
            f'Use `device="cuda:0"` ... `device="cuda:{count - 1}"`.',
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceUnavailableError(
            '`device="mps"` was requested but MPS is not available.', 'Use `device="cpu"`.'
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(
            f"Unknown device {name!r}.", "Use auto, cpu, cuda, cuda:N or mps."
        ) from exc


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int
) -> Generator[R, None, None]:
    """``map(fn, items)`` run by ``workers`` threads, at most ``ahead`` items in flight,
    results in input order. ``workers=0`` maps in the calling thread."""
    if workers <= 0:
        yield from map(fn, items)
        return
    source = iter(items)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="faceattr-prepare") as pool:
        try:
            for item in source:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    break
            while pending:
                result = pending.popleft().result()
                for item in source:  # keep the pool fed: one in, one out
                    pending.append(pool.submit(fn, item))
                    break
                yield result
        finally:
            for future in pending:  # stopped early (an error, or the consumer left)
                future.cancel()


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` produced by a background thread up to ``depth`` ahead, in order.

    For the training loop on a GPU: the next batch is read out of the prepared cache (and
    pinned) while the device works on this one. An exception in the producer is raised here,
    at the item it failed on; leaving the loop early stops the producer.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer
            q.put((_DONE, exc))

    thread = threading.Thread(target=produce, name="faceattr-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
