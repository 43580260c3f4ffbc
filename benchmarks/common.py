"""What several benchmarks share (imported as ``common``: the scripts run from this folder)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def faceattr_cmd(*args: str) -> list[str]:
    """``faceattr ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "faceattr", *args]


def run_process(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one whole process (run from the repository, allocator
    settings cleared); SystemExit with its stderr's end when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=child_env(), cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"Failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds, proc.stdout.decode()
