"""Prediction on the GPU against the CPU: the model's throughput on aligned crops, and whether
the answers agree.

    python benchmarks/gpu_predict.py [--model default] [--root DIR] [--images 2048]
        [--batch-size 256] [--devices cuda,cpu]

For each backend (torch, onnx) and device: img/s of ``Predictor.probabilities_of_pixels`` on
``--images`` aligned crops already decoded and resized (decoding is the same on every path, so
it is left out), after one warm-up pass; and the largest difference of a probability from the
torch CPU path's (target: under 1e-3). The ONNX CUDA row needs onnxruntime-gpu
(``faceattr[gpu]``, docs/gpu.md); without it the row says why it is missing. ``--model`` is a
run directory or model file with both a ``.safetensors`` and an ``.onnx`` (the bundled
``default`` has both); ``--root`` a CelebA-layout dataset (default: a synthetic one).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--onnx-model", help="the .onnx of --model (default: found beside it)")
    p.add_argument("--root", help="CelebA-layout dataset (default: synthetic)")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--devices", default="cuda,cpu")
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the best is kept")
    args = p.parse_args(argv)

    from faceattr.data.images import load_image
    from faceattr.errors import FaceAttrError
    from faceattr.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="faceattr-gpu-predict-") as tmp:
        root = Path(args.root) if args.root else None
        if root is None:
            from faceattr.data.synthetic import write_synthetic_celeba

            root = write_synthetic_celeba(Path(tmp) / "d", n_train=args.images, n_valid=1, n_test=1)
        files = sorted((root / "img_align_celeba").glob("*.jpg"))[: args.images]
        crops = [load_image(f) for f in files]

        ref: np.ndarray | None = None
        rows = []
        model_onnx = args.onnx_model or args.model
        plan = [("torch", "cpu")] + [
            (b, d) for b in ("torch", "onnx") for d in args.devices.split(",")
        ]
        seen = set()
        for backend, device in plan:
            if (backend, device) in seen:
                continue
            seen.add((backend, device))
            model = model_onnx if backend == "onnx" else args.model
            try:
                pred = Predictor(model, backend=backend, device=device,
                                 batch_size=args.batch_size)  # fmt: skip
            except FaceAttrError as e:
                rows.append((backend, device, None, None, str(e).splitlines()[0][:160]))
                continue
            pixels = pred.preprocessing.batch(crops)
            probs = pred.probabilities_of_pixels(pixels)  # warm-up (and the answers)
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                pred.probabilities_of_pixels(pixels)
                best = min(best, time.perf_counter() - start)
            if ref is None:
                ref = probs
            diff = float(np.abs(probs - ref).max())
            rows.append((backend, device, len(pixels) / best, diff, ""))

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"\n### Prediction, {args.model}, {len(crops)} aligned crops, batch "
          f"{args.batch_size}; GPU: {gpu}\n")  # fmt: skip
    print("| backend | device | img/s | max abs prob. diff vs torch cpu | note |")
    print("|---|---|---:|---:|---|")
    for backend, device, ips, diff, note in rows:
        ips_s = f"{ips:.0f}" if ips is not None else "-"
        diff_s = f"{diff:.2e}" if diff is not None else "-"
        print(f"| {backend} | {device} | {ips_s} | {diff_s} | {note} |")


if __name__ == "__main__":
    main()
