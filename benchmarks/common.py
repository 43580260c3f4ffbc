"""What several benchmarks share (imported as ``common``: the scripts run from this folder)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# Settings that change glibc's allocator (faceattr.malloc): a child process gets exactly
# the allocator its row says.
MALLOC_ENV = ("FACEATTR_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def warm_files(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Read every file once (so measurements start from the page cache); the bytes read."""
    return sum(len(Path(p).read_bytes()) for p in paths)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the allocator settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env.update(extra)
    return env


def pick_root(arg: str | None, tmp: Path, n_synthetic: int) -> tuple[Path, str]:
    """The dataset to measure on, and where it came from: ``--root``, else
    ``$FACEATTR_REAL_DATA/celeba-sample``, else ``n_synthetic`` synthetic images in ``tmp``."""
    if arg:
        return Path(arg), "given"
    real = os.environ.get("FACEATTR_REAL_DATA")
    if real and (Path(real) / "celeba-sample").is_dir():
        return Path(real) / "celeba-sample", "real CelebA sample"
    from faceattr.data.synthetic import write_synthetic_celeba

    n_valid = n_test = max(1, n_synthetic // 10)
    root = write_synthetic_celeba(
        tmp / "synthetic", n_train=n_synthetic - 2 * n_valid, n_valid=n_valid, n_test=n_test
    )
    return root, "synthetic (generated)"
