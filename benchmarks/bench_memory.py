"""Peak memory of `faceattr predict` on very large photos: the pixel budget against none.

    python benchmarks/bench_memory.py [--size 9400] [--images 6] [--workers 6] [--quick]

``--images`` JPEGs of ``--size`` x ``--size`` pixels (the bundled astronaut photo scaled up,
so the detector finds a face in each) are written to a temporary folder, then
``faceattr predict DIR --workers N --json`` runs twice in a child process each, and the
table shows each child's peak resident memory (``ru_maxrss`` of that process alone) and
its wall time, side by side:

- **no pixel budget (before)**: ``PIPELINE_PIXELS`` set to None in the child, so the images
  in flight are bounded only by their count (``--workers`` decoding at once), as before
  the budget existed;
- **PIPELINE_PIXELS**: the shipped default (``faceattr.config.PIPELINE_PIXELS``).

``--quick``: 4 images of 6000 x 6000, 4 workers (a smoke run: both rows finish in seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CHILD = """
import sys
import faceattr.inference.predictor as predictor
if sys.argv[1] == "none":
    predictor.PIPELINE_PIXELS = None
sys.argv = ["faceattr", "predict", *sys.argv[2:]]
from faceattr.cli.app import main
main()
"""


def make_photos(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image, ImageOps

    base = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    big = base.resize((size, size), Image.Resampling.BILINEAR)
    paths = []
    for i in range(n):
        path = folder / f"photo{i}.jpg"
        (ImageOps.mirror(big) if i % 2 else big).save(path, quality=85)
        paths.append(path)
    return paths


def measure(budget: str, folder: Path, workers: int) -> tuple[float, float, int]:
    """(peak RSS in GB, seconds, exit status) of one predict run in a child process."""
    cmd = [sys.executable, "-c", CHILD, budget, str(folder), "--workers", str(workers), "--json"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 and child.stderr is not None:
        print(child.stderr.read().decode(errors="replace")[-2000:], file=sys.stderr)
    peak_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # macOS: bytes
    return peak_bytes / 1e9, seconds, child.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=9400)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.images, args.workers = 6000, 4, 4
    from faceattr.config import PIPELINE_PIXELS

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}")
    with tempfile.TemporaryDirectory(prefix="faceattr-bench-memory-") as tmp:
        folder = Path(tmp)
        photos = make_photos(folder, args.images, args.size)
        mb = sum(p.stat().st_size for p in photos) / 1e6
        megapixels = args.size * args.size / 1e6
        command = f"`faceattr predict DIR --workers {args.workers} --json`"
        print(f"\n{args.images} JPEGs of {args.size} x {args.size} ({megapixels:.0f} MP each, "
              f"{mb:.0f} MB in all), {command}:\n")  # fmt: skip
        rows = []
        for label, budget in (("no pixel budget (before)", "none"),
                              (f"PIPELINE_PIXELS = {PIPELINE_PIXELS:,}", "default")):  # fmt: skip
            peak, seconds, status = measure(budget, folder, args.workers)
            rows.append((label, peak, seconds, status))
        print("| pipeline | peak RSS | wall time | exit |")
        print("|---|---:|---:|---:|")
        for label, peak, seconds, status in rows:
            print(f"| {label} | {peak:.2f} GB | {seconds:.1f} s | {status} |")
        return 1 if any(status != 0 for *_, status in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
