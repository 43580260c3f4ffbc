"""Prediction speed: the old PyTorch path against the shipped one (ONNX Runtime), whole process.

    python benchmarks/bench_predict.py [--root DIR] [--images N] [--quick] [--repeat K]

Three tables, measured side by side in one run:

1. aligned crops, ``faceattr predict DIR --no-detect --json`` over ``--images`` CelebA crops
   (1,440; 192 with ``--quick``), images per second of the whole process (start-up, model
   loading and decoding included), the default model with its own test-time augmentation
   (none since the default is an ensemble). Row 1 reproduces the code path predict had before
   the ONNX engine (PyTorch, NCHW, batches of 32 decoded one after the other, glibc's default
   allocator) in a child process; the other rows run the CLI: ``--backend torch``, the
   shipped ONNX model, an int8 export made here (not what ships), and, for a default with
   TTA, ONNX fp32 with ``--tta none``;
2. one photo, whole process: median seconds of ``faceattr predict examples/astronaut.jpg``
   (face detection included) with the default model and with ``--backend torch``;
3. the model's forward pass alone, batch 16, no TTA, in this process: PyTorch NCHW and
   channels-last, ONNX fp32 and int8.

The dataset is ``--root`` (CelebA layout), else ``$FACEATTR_REAL_DATA/celeba-sample`` when
set, else a synthetic CelebA-format set generated in a temporary folder. The chosen crops
(a fixed random subset, seed 0) are symlinked into a temporary folder, read once first so
every row starts from the page cache; nothing is written into the dataset or the repository.
``--candidate FILE.onnx`` (repeatable) adds rows to tables 1 and 2, with the file's own TTA
and (table 1, if that is flip) with ``--tta none``: the speed side of choosing a new default
model (the weights do not matter for speed, so an untrained export of an architecture
measures it).
``--repeat`` runs each measurement K times and keeps the median (default: once for table 1,
5 times for table 2, 2 with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import child_env, cpu_model, faceattr_cmd, pick_root, warm_files  # benchmarks/common.py

from faceattr.config import DataConfig
from faceattr.data import read_dataset
from faceattr.models import read_model_info
from faceattr.models.file import ModelFile, default_model_path

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "examples" / "astronaut.jpg"
OLD_BATCH = 32  # what predict used before the ONNX engine
FORWARD_BATCH = 16  # the CLI's --batch-size default

# Row 1's child process: predict as it worked before the ONNX engine. It must not load a
# model through faceattr.inference.backends (which tunes the allocator); the parent also
# sets FACEATTR_MALLOC=default, so the allocator stays glibc's default in any case.
OLD_PATH_CHILD = """
import sys
from pathlib import Path

import numpy as np
import torch

from faceattr.data.images import load_image
from faceattr.data.transforms import Preprocessing
from faceattr.models import load_model_file

paths = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
batch = int(sys.argv[2])
model, info = load_model_file("default")  # sets model.tta = info.tta
prep = Preprocessing.from_info(info)
probs = []
for start in range(0, len(paths), batch):
    images = [load_image(p) for p in paths[start : start + batch]]
    x = prep.normalize(torch.from_numpy(prep.batch(images)))
    with torch.no_grad():
        probs.append(torch.sigmoid(model(x)).numpy())
out = np.concatenate(probs)
malloc = sys.modules.get("faceattr.malloc")
problems = []
if out.shape[0] != len(paths):
    problems.append(f"{out.shape[0]} results for {len(paths)} images")
if model.tta != info.tta:
    problems.append(f"model.tta is {model.tta!r}, the model file says {info.tta!r}")
if malloc is not None and malloc._state.get("applied"):
    problems.append("the allocator was tuned")
if problems:
    sys.exit("old-path child: " + "; ".join(problems))
"""


def link_crops(paths: Sequence[Path], folder: Path) -> list[Path]:
    """Symlink ``paths`` into ``folder`` (so `predict DIR` sees exactly them); the links."""
    folder.mkdir(parents=True)
    links = []
    for i, p in enumerate(paths):
        link = folder / p.name
        if link.exists() or link.is_symlink():  # same name from two sub-folders
            link = folder / f"{i:06d}-{p.name}"
        link.symlink_to(p.resolve())
        links.append(link)
    return links


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one whole process (stdout discarded); SystemExit when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or child_env(), cwd=REPO
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"Failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds


def median_seconds(cmd: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    return statistics.median(run_timed(cmd, env) for _ in range(repeat))


def start_export(out: Path, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    cmd = faceattr_cmd("export", "default", "--out", str(out), *extra, "--json")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), cwd=REPO
    )


def finish_export(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        args: Any = proc.args
        cmd = " ".join(str(a) for a in args)
        raise SystemExit(f"Export failed (exit {proc.returncode}): {cmd}\n{tail}")
    summary: dict[str, Any] = json.loads(stdout)
    return summary


def versions() -> str:
    out = []
    for name in ("torch", "onnxruntime"):
        try:
            module = __import__(name)
            out.append(f"{name} {module.__version__}")
        except ImportError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ratio(v: float) -> str:
    return f"{v:.2f}x"


def forward_ips(fns: Sequence[Callable[[], object]], calls: int, warmup: int = 3) -> list[float]:
    """Images per second of each ``fn`` (one forward pass of FORWARD_BATCH): the median of
    ``calls``, taken in turns so that a change of load hits every ``fn`` alike, after
    ``warmup`` calls each (the first calls grow the heap and pick the kernels)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(calls):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [FORWARD_BATCH / statistics.median(t) for t in times]


def forward_table(crops: Sequence[Path], onnx_fp32: Path, onnx_int8: Path, calls: int) -> None:
    """Table 3: the forward pass alone, in this process."""
    import torch

    from faceattr.data.images import load_image
    from faceattr.data.transforms import Preprocessing
    from faceattr.inference.backends import OnnxBackend, TorchBackend

    # TorchBackend tunes the allocator of this process: every row below runs with it tuned.
    channels_last = TorchBackend(ModelFile(default_model_path()), device="cpu")
    nchw = TorchBackend(ModelFile(default_model_path()), device="cpu")
    nchw.channels_last = False
    nchw.model = nchw.model.to(memory_format=torch.contiguous_format)
    prep = Preprocessing.from_info(channels_last.info)
    images = [load_image(p) for p in crops[:FORWARD_BATCH]]
    x = prep.normalize(prep.batch(images)).astype(np.float32)
    onnx = {
        "ONNX fp32": OnnxBackend(ModelFile(onnx_fp32), device="cpu"),
        "ONNX int8 (not shipped)": OnnxBackend(ModelFile(onnx_int8), device="cpu"),
    }
    fns: dict[str, Callable[[], object]] = {
        "torch, NCHW": lambda: nchw.logits(x),
        "torch, channels-last": lambda: channels_last.logits(x),
    }
    fns.update({label: (lambda b=b: b.logits(x)) for label, b in onnx.items()})
    rows = list(zip(fns, forward_ips(list(fns.values()), calls), strict=True))

    print(f"\n### Model forward pass alone (batch {FORWARD_BATCH}, no TTA, in-process)\n")
    print("| backend | img/s | vs torch NCHW |")
    print("|---|---:|---:|")
    for label, ips in rows:
        print(f"| {label} | {fmt(ips)} | {ratio(ips / rows[0][1])} |")
    print(
        f"\nMedian of {calls} calls each (in turns, after 3 warm-up calls) on {len(images)} "
        f"real preprocessed crops; torch threads {torch.get_num_threads()}, allocator tuned "
        "(TorchBackend does it for this process)."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="CelebA-layout dataset (default: real sample or synthetic)")
    p.add_argument("--images", type=int, help="aligned crops predicted (1440; quick 192)")
    p.add_argument("--quick", action="store_true", help="fewer images and runs (a smoke run)")
    p.add_argument(
        "--repeat",
        type=int,
        help="runs per measurement, median kept (table 1: 1; table 2: 5, quick 2)",
    )
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="FILE.onnx",
        help="another model to time in tables 1 and 2 (its own TTA and --tta none); repeatable",
    )
    args = p.parse_args(argv)
    candidates = [Path(c).resolve() for c in args.candidate]
    for c in candidates:
        if not c.is_file():
            raise SystemExit(f"--candidate {c}: no such file")
    n_images = args.images or (192 if args.quick else 1440)
    n_calibration = 64 if args.quick else 300
    repeat_crops = args.repeat or 1
    repeat_photo = args.repeat or (2 if args.quick else 5)
    forward_calls = 5 if args.quick else 20
    if not PHOTO.is_file():
        raise SystemExit(f"{PHOTO} is missing (run from a source checkout).")

    load = os.getloadavg()
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {versions()}; Python {platform.python_version()}"
        + ("; --quick" if args.quick else "")
    )

    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root, kind = pick_root(args.root, tmp, max(n_images, n_calibration))
        table = read_dataset(DataConfig(root=str(root)))
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(len(table), size=min(n_images, len(table)), replace=False))
        paths = [table.paths[int(i)] for i in chosen]
        crops_dir = tmp / "crops"
        links = link_crops(paths, crops_dir)
        list_file = tmp / "paths.txt"
        list_file.write_text("\n".join(str(p) for p in links) + "\n", encoding="utf-8")

        # The int8 export (and the fp32 one, when this checkout has no default.onnx) run in
        # parallel before anything is measured: each is mostly single-threaded.
        shipped = default_model_path("onnx")
        int8 = tmp / "int8.onnx"
        int8_proc = start_export(
            int8,
            [
                "--int8",
                "--calibration-root",
                str(root),
                "--calibration-images",
                str(n_calibration),
                "--max-accuracy-drop",
                "100",
            ],
        )
        fp32_proc = None
        if shipped.exists():
            fp32, fp32_note = shipped, f"the shipped {shipped.name}"
        else:
            fp32 = tmp / "fp32.onnx"
            fp32_note = f"no {shipped.name} in this checkout: exported here (`--model {fp32}`)"
            fp32_proc = start_export(fp32)
        start = time.perf_counter()
        int8_summary = finish_export(int8_proc)
        if fp32_proc is not None:
            finish_export(fp32_proc)
        export_s = time.perf_counter() - start
        fp32_args = [] if fp32 == shipped else ["--model", str(fp32)]

        mb = warm_files(links) / 2**20
        load = os.getloadavg()
        print(
            f"Dataset: {root} ({kind}), {len(links):,} aligned crops ({mb:.0f} MB of files); "
            f"ONNX fp32: {fp32_note}; exports took {export_s:.0f} s; load average now "
            f"{load[0]:.2f}"
        )

        predict = faceattr_cmd("predict", str(crops_dir), "--no-detect", "--json")
        old_cmd = [sys.executable, "-c", OLD_PATH_CHILD, str(list_file), str(OLD_BATCH)]
        tta = read_model_info("default").tta  # every row but the last runs the model's own
        rows = [
            (
                "torch, before (NCHW, batch 32, default allocator, sequential)",
                tta,
                old_cmd,
                child_env(FACEATTR_MALLOC="default"),
            ),
            (
                "torch, after (channels-last, allocator tuned, threaded pipeline)",
                tta,
                [*predict, "--backend", "torch"],
                None,
            ),
            ("ONNX fp32 (the shipped default)", tta, [*predict, *fp32_args], None),
            (
                "ONNX int8 (not shipped: lost > 0.1 point of accuracy)",
                tta,
                [*predict, "--model", str(int8)],
                None,
            ),
        ]
        if tta != "none":
            rows.append(
                ("ONNX fp32, `--tta none`", "none", [*predict, *fp32_args, "--tta", "none"], None)
            )
        for c in candidates:
            own_tta = read_model_info(c).tta
            rows.append((f"candidate `{c.name}`", own_tta, [*predict, "--model", str(c)], None))
            if own_tta != "none":
                rows.append(
                    (
                        f"candidate `{c.name}`",
                        "none",
                        [*predict, "--model", str(c), "--tta", "none"],
                        None,
                    )
                )
        results = []
        for label, tta, cmd, env in rows:
            seconds = median_seconds(cmd, repeat_crops, env)
            results.append((label, tta, seconds, len(links) / seconds))

        print(
            f"\n### Aligned crops, `predict --no-detect` ({len(links):,} images, whole process)\n"
        )
        print("| path | TTA | seconds | img/s | vs before |")
        print("|---|---|---:|---:|---:|")
        for label, tta, seconds, ips in results:
            print(
                f"| {label} | {tta} | {seconds:.1f} | {fmt(ips)} | {ratio(ips / results[0][3])} |"
            )
        check = int8_summary.get("check") or {}
        print(
            f"\nWall time of the whole process (Python start-up, imports, model loading, "
            f"decoding), median of {repeat_crops} run(s). Row 1 runs the old code in a child "
            f"with FACEATTR_MALLOC=default; the others run the CLI (batch {FORWARD_BATCH}). "
            f"The default ships fp32: int8 lost more than 0.1 point of mean accuracy. Its "
            f"export here calibrated on {n_calibration} train images; decisions differing from "
            f"PyTorch on them: {check.get('decisions_differ', '?')} of "
            f"{check.get('decisions', '?')}."
        )

        # Table 2: one photo, whole process (face detection included).
        photo = faceattr_cmd("predict", str(PHOTO))
        run_timed([*photo, *fp32_args])  # warm-up: disk cache
        default_s = median_seconds([*photo, *fp32_args], repeat_photo)
        torch_s = median_seconds([*photo, "--backend", "torch"], repeat_photo)
        print("\n### One photo, whole process (`faceattr predict examples/astronaut.jpg`)\n")
        print("| backend | seconds | default / torch | speed-up over torch |")
        print("|---|---:|---:|---:|")
        print(
            f"| default (ONNX fp32) | {default_s:.2f} | {default_s / torch_s:.2f} | "
            f"{ratio(torch_s / default_s)} |"
        )
        print(f"| `--backend torch` | {torch_s:.2f} | 1.00 | 1.00x |")
        for c in candidates:
            run_timed([*photo, "--model", str(c)])  # warm-up: disk cache
            cand_s = median_seconds([*photo, "--model", str(c)], repeat_photo)
            print(
                f"| candidate `{c.name}` | {cand_s:.2f} | {cand_s / torch_s:.2f} | "
                f"{ratio(torch_s / cand_s)} |"
            )
        print(
            f"\nMedian of {repeat_photo} run(s) after one warm-up run; text output, face "
            "detection and alignment included."
        )

        # Table 3: the forward pass alone.
        forward_table(links, fp32, int8, forward_calls)
    load = os.getloadavg()
    print(f"\nLoad average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
