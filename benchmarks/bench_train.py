"""Training speed: faceattr's own loop against a bare PyTorch loop, and against the old settings.

    python benchmarks/bench_train.py [--archs efficientnet_lite0,resnet50] [--sizes 128,160]
        [--batch-size 64] [--images 640] [--device cpu|cuda] [--compile] [--no-before]
        [--epochs 3] [--quick]

Each row runs in its own process (so the allocator setting is exactly the row's) on a synthetic
CelebA-format set of ``--images`` training images written to a temporary folder (178x218
JPEGs, like CelebA's crops), measured side by side in one run:

- **bare loop**: the same network (``create_model``), batch and input size, AdamW, uint8
  batches already in memory, normalised and pushed through forward + backward + step, nothing
  else (channels-last and the tuned allocator, like faceattr's defaults);
- **faceattr, cache**: ``fit()`` with its defaults, reading the prepared cache (`data
  prepare`): batching, the light augmentation, the loss over known labels, metrics,
  progress;
- **faceattr, JPEGs**: the same, decoding the JPEG files with worker processes;
- **faceattr, before**: ``fit()`` as it ran before channels-last became the default on the
  CPU and the allocator was tuned (``--no-channels-last``, ``FACEATTR_MALLOC=default``;
  ``--no-before`` leaves it out, e.g. on a GPU);
- **data path**: the cache's batches, copied to the device, augmented (light) and normalised
  as ``fit()`` does, with no model: what the input side can deliver (target: at least 1.5x the
  bare loop's step, so it never waits for data).

On CUDA the bare loop runs under the same autocast as ``fit()`` (bf16 where supported, else
fp16), so both compare AMP + channels-last.

faceattr's rate is its training loop's img/s in the last of 3 epochs (the first two warm up:
the allocator's heap grows to its working size; validation is not counted); the bare loop
times the same number of steps after 3 warm-up steps. Ratios: faceattr / bare loop (target
>= 0.9 on the cache path) and faceattr / before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from common import child_env  # benchmarks/common.py

CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
if args["row"] == "bare":
    from faceattr.malloc import tune_allocator
    tune_allocator()
    import torch
    from faceattr.data.transforms import Preprocessing
    from faceattr.models import create_model
    device = torch.device(args["device"])
    torch.manual_seed(0)
    model = create_model(args["arch"], 40, img_size=args["img_size"]).to(device)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prep = Preprocessing(args["img_size"])
    b, s = args["batch_size"], args["img_size"]
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 2, (b, 40), device=device).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    def step():
        x = prep.normalize(images.contiguous(memory_format=torch.channels_last))
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = model(x)
        loss = loss_fn(out.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = args["steps"]
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"ips": n * b / (time.perf_counter() - start)}))
elif args["row"] == "data":
    import torch
    from faceattr.config import AUGMENT_PRESETS, DataConfig, TrainConfig
    from faceattr.data.transforms import BatchAugment, Preprocessing
    from faceattr.engine.data import make_batches
    from faceattr.engine.training import load_train_valid
    device = torch.device(args["device"])
    cfg = TrainConfig(data=DataConfig(root=args["root"], img_size=args["img_size"]),
                      augment=AUGMENT_PRESETS["light"], out=args["out"])
    train, _ = load_train_valid(cfg)
    aug, prep = BatchAugment(cfg.augment), Preprocessing(args["img_size"])
    gen = torch.Generator().manual_seed(0)

    def epoch():
        n = 0
        for batch in make_batches(train, img_size=args["img_size"], crop=cfg.data.crop,
                                  batch_size=args["batch_size"], shuffle=True, generator=gen,
                                  pin_memory=device.type == "cuda", drop_last=True,
                                  data=cfg.data):
            x = batch.images.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last).float().div_(255.0)
            x = prep.normalize(aug(x, gen))
            batch.targets.to(device, non_blocking=True)
            n += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n

    epoch()  # warm-up: page cache, allocator
    start = time.perf_counter()
    n = epoch()
    print(json.dumps({"ips": n / (time.perf_counter() - start)}))
else:
    from faceattr.config import AUGMENT_PRESETS, DataConfig, ModelConfig, TrainConfig
    from faceattr.engine.fit import fit
    cfg = TrainConfig(
        data=DataConfig(root=args["root"], img_size=args["img_size"], cache=args["cache"]),
        model=ModelConfig(arch=args["arch"]),
        augment=AUGMENT_PRESETS["light"],
        epochs=args.get("epochs", 3),
        batch_size=args["batch_size"],
        device=args["device"],
        channels_last=args["channels_last"],
        compile=args.get("compile", False),
        tune_thresholds=False,
        out=args["out"],
    )
    result = fit(cfg)
    print(json.dumps({"ips": result.history[-1]["images_per_second"]}))
"""


def run_row(row: str, common: dict, env_extra: dict[str, str] | None = None, **kw) -> float:
    env = child_env(**(env_extra or {}))
    args = json.dumps({**common, "row": row, **kw})
    r = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"row {row} failed:\n{r.stderr[-3000:]}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["ips"])


def measure(arch: str, size: int, args: argparse.Namespace, root: Path, tmp: Path) -> None:
    """One table: every row for ``arch`` at ``size`` px."""
    from faceattr.config import DataConfig
    from faceattr.data.cache import prepare_cache

    prepare_cache(DataConfig(root=str(root), img_size=size))
    steps = args.images // args.batch_size
    common = {"arch": arch, "img_size": size, "batch_size": args.batch_size,
              "device": args.device, "root": str(root), "steps": steps,
              "epochs": args.epochs}  # fmt: skip
    before_name = "faceattr, before (NCHW, default allocator), cache"
    plan: list[tuple[str, dict, dict | None]] = [
        ("bare loop", {"row": "bare"}, None),
        ("faceattr, cache", {"row": "fit", "cache": "auto", "channels_last": None}, None),
        ("faceattr, JPEGs", {"row": "fit", "cache": "off", "channels_last": None}, None),
        (before_name, {"row": "fit", "cache": "auto", "channels_last": False},
         {"FACEATTR_MALLOC": "default"}),
        ("data path (no model)", {"row": "data"}, None),
    ]  # fmt: skip
    if args.no_before:
        plan = [row for row in plan if row[0] != before_name]
    if args.compile:
        plan.append(("faceattr, cache, --compile",
                     {"row": "fit", "cache": "auto", "channels_last": None, "compile": True},
                     None))  # fmt: skip
    rows = {}
    for name, kw, env in plan:
        row = kw.pop("row")
        out = str(tmp / f"{arch}-{size}-{name}".replace(" ", "_").replace(",", ""))
        rows[name] = run_row(row, common, env, out=out, **kw)
        print(f"  {arch} {size} px, {name}: {rows[name]:.1f} img/s", file=sys.stderr, flush=True)
    bare, before = rows["bare loop"], rows.get(before_name, float("nan"))
    print(f"\n### {arch}, {size} px, batch {args.batch_size}, {steps} steps an epoch "
          f"({args.images} images), {args.device}\n")  # fmt: skip
    print("| path | img/s | / bare loop | / before |\n|---|---:|---:|---:|")
    for name, ips in rows.items():
        vs_before = f"{ips / before:.2f}" if before == before else "-"  # nan: no before row
        print(f"| {name} | {ips:.1f} | {ips / bare:.2f} | {vs_before} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="efficientnet_lite0", help="comma-separated")
    p.add_argument("--sizes", default="160", help="comma-separated input sizes, pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="add a row with torch.compile")
    p.add_argument("--no-before", action="store_true", help="leave out the 'before' row")
    p.add_argument("--epochs", type=int, default=3, help="fit() epochs (the last is timed)")
    p.add_argument("--quick", action="store_true", help="celebnet at 64 px, 256 images")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.sizes, args.images, args.batch_size = "celebnet", "64", 256, 32

    from faceattr.data.synthetic import write_synthetic_celeba

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {load}; device {args.device}")
    if args.device.startswith("cuda"):
        import torch

        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="faceattr-bench-train-") as name:
        tmp = Path(name)
        root = write_synthetic_celeba(tmp / "data", n_train=args.images, n_valid=64, n_test=0)
        for arch in args.archs.split(","):
            for size in (int(v) for v in args.sizes.split(",")):
                measure(arch.strip(), size, args, root, tmp)
    print(f"\nLoad average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
