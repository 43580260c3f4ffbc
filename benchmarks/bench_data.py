"""Data path vs model: is decoding the bottleneck, and does the prepared cache remove it?

    python benchmarks/bench_data.py [--root DIR] [--quick] [--sizes 64,128,224]
                                    [--archs celebnet,mobilenet_v2] [--images N] [--workers N]

For each input size it measures, in images per second:

- JPEG+PIL: the training data path without a cache (``make_batches`` -> a ``DataLoader``
  whose ``--workers`` processes decode, crop and resize each file), shuffled batches of 64,
  steady state (worker start-up excluded), files already in the OS page cache;
- prepare: the one-time cost of ``data prepare`` (decode + write the memmap), same workers;
- cache: the cached path (``CachedBatches``: shuffled batches copied out of the memmap in
  the main process);
- augment: the batched augmentation of the ``light`` preset on the CPU (flip, zoom, shift,
  colour jitter), which training runs on top of either path;
- a train step (forward + backward + AdamW, batch 64, random uint8 images) per architecture
  (batch 16 with ``--quick``).

The dataset is ``--root`` (CelebA layout), else ``$FACEATTR_REAL_DATA/celeba-sample`` when
set, else a synthetic CelebA-format set generated in a temporary folder. Caches go to a
temporary folder too: nothing is written into the dataset.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import pick_root, warm_files  # benchmarks/common.py

from faceattr.config import CELEBA_CROP, AugmentConfig, DataConfig
from faceattr.data import read_dataset
from faceattr.data.cache import CachedBatches, build_cache, open_cache
from faceattr.data.table import AttributeTable
from faceattr.data.transforms import BatchAugment, normalize
from faceattr.engine.data import make_batches
from faceattr.utils import default_workers

BATCH = 64
LIGHT = AugmentConfig(hflip=True, crop_scale=0.1, shift=0.05, brightness=0.2)


def jpeg_ips(table: AttributeTable, size: int, workers: int, passes: int) -> float:
    """Steady-state img/s of the JPEG DataLoader (the first batch, worker start-up, excluded)."""
    rates = []
    for seed in range(passes):
        batches = make_batches(
            table,
            img_size=size,
            crop=CELEBA_CROP,
            batch_size=BATCH,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            workers=workers,
        )
        it = iter(batches)
        next(it)
        n, start = 0, time.perf_counter()
        for batch in it:
            n += len(batch)
        rates.append(n / (time.perf_counter() - start))
        del it
    return max(rates)


def cache_ips(batches: CachedBatches, min_seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            n += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def augment_ips(size: int, repeat: int) -> float:
    aug = BatchAugment(LIGHT)
    x = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    aug(x.float().div_(255), gen)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        aug(x.float().div_(255), gen)
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def train_step_ips(arch: str, size: int, steps: int, batch: int = BATCH) -> float:
    """img/s of forward + backward + AdamW on random uint8 batches (one warm-up step)."""
    from faceattr.models import create_model, model_data_config

    torch.manual_seed(0)
    model = create_model(arch, 40, img_size=size)
    model.train()
    cfg = model_data_config(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    targets = torch.randint(0, 2, (batch, 40)).float()

    def step() -> None:
        x = normalize(images.float().div_(255), cfg["mean"], cfg["std"])
        loss = loss_fn(model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ratio(v: float) -> str:
    return f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="CelebA-layout dataset (default: real sample or synthetic)")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (a smoke run)")
    p.add_argument("--sizes", default="64,128,224")
    p.add_argument("--archs", default="celebnet,mobilenet_v2")
    p.add_argument("--images", type=int, help="images in the measured set (2048; quick 512)")
    p.add_argument("--workers", type=int, default=default_workers(), help="decoding processes")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    archs = [a for a in args.archs.split(",") if a]
    n_images = args.images or (512 if args.quick else 2048)
    steps = 1 if args.quick else 3
    step_batch = 16 if args.quick else BATCH  # a smoke run: a quarter of the compute

    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root, kind = pick_root(args.root, tmp, max(n_images, 200))
        table = read_dataset(DataConfig(root=str(root)))
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(len(table), size=min(n_images, len(table)), replace=False))
        table = table.subset(chosen)
        mb = warm_files(table.paths) / 2**20
        load = os.getloadavg()
        print(
            f"Dataset: {root} ({kind}), {len(table):,} images ({mb:.0f} MB of files); "
            f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, data workers "
            f"{args.workers}, batch {BATCH}; load average {load[0]:.1f} {load[1]:.1f} "
            f"{load[2]:.1f}" + ("; --quick" if args.quick else "")
        )
        rows = []
        for size in sizes:
            jpeg = jpeg_ips(table, size, args.workers, passes=1 if args.quick else 2)
            path = tmp / "cache" / f"bench-{size}px"
            start = time.perf_counter()
            build_cache(table, path, img_size=size, crop=CELEBA_CROP, workers=args.workers)
            prepare = len(table) / (time.perf_counter() - start)
            cache = open_cache(path)
            batches = CachedBatches(
                cache,
                np.arange(len(table)),
                table,
                batch_size=BATCH,
                shuffle=True,
                generator=torch.Generator().manual_seed(0),
                drop_last=True,
            )
            cached = cache_ips(batches, 0.5 if args.quick else 2.0)
            aug = augment_ips(size, 3 if args.quick else 10)
            train = {a: train_step_ips(a, size, steps, step_batch) for a in archs}
            rows.append((size, jpeg, prepare, cached, aug, train))
            del cache, batches

    head = ["px", f"JPEG+PIL ({args.workers} workers)", "prepare (once)", "cache", "cache/JPEG"]
    batch_note = "" if step_batch == BATCH else f" (batch {step_batch})"
    head += ["augment (CPU)"] + [f"{a} train step{batch_note}" for a in archs]
    print("\nimages per second\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for size, jpeg, prepare, cached, aug, train in rows:
        cells = [str(size), fmt(jpeg), fmt(prepare), fmt(cached), ratio(cached / jpeg)]
        cells += [fmt(aug)] + [fmt(train[a]) for a in archs]
        print("| " + " | ".join(cells) + " |")

    print("\nIs the data path the bottleneck? (data img/s / train-step img/s; < 1 = data-bound)\n")
    head = ["px"] + [f"{path} / {a}" for a in archs for path in ("JPEG", "cache")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for size, jpeg, _, cached, _, train in rows:
        cells = [str(size)]
        for a in archs:
            cells += [ratio(jpeg / train[a]), ratio(cached / train[a])]
        print("| " + " | ".join(cells) + " |")
    print(
        "\nNote: on a CPU the JPEG workers and the train step share the same cores, so the "
        "JPEG path costs more than its ratio shows; the cache is read in the main process."
    )


if __name__ == "__main__":
    main()
