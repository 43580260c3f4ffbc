"""Build the "unaligned" real test set from CelebA's aligned crops.

Each aligned 178x218 image is scaled (log-uniform in [--min-scale, --max-scale]), rotated (uniform
in +-``--max-angle`` degrees) and shifted at random (seeded) into a larger canvas filled with the
image's mean border colour. The forward transform (aligned pixel -> canvas pixel, continuous
coordinates) is written to ``transforms.csv`` so that landmarks can be mapped either way.

    python tools/make_unaligned.py --src ../shared/data/celeba-sample/img_align_celeba \
        --out /tmp/celeba-unaligned --count 1000 --seed 0

Output: ``OUT/NNNNNN.jpg`` (JPEG quality 95) and ``OUT/transforms.csv`` with columns
image, width, height, angle_deg, scale, a00, a01, a02, a10, a11, a12 (canvas = A @ [x, y, 1]).
Only images at the native 178x218 size are used unless ``--any-size`` (smaller ones are scaled
to 178x218 first, so the CSV always refers to the 178x218 frame).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

ALIGNED_SIZE = (178, 218)
# The face occupies roughly this box of the aligned frame; it must stay inside the canvas.
FACE_BOX = (39.0, 70.0, 139.0, 190.0)


def random_transform(
    rng: np.random.Generator,
    canvas: tuple[int, int],
    *,
    max_angle: float,
    min_scale: float,
    max_scale: float,
) -> tuple[float, float, np.ndarray]:
    """(angle_deg, scale, A [2, 3]) mapping aligned-frame points into the canvas."""
    angle = float(rng.uniform(-max_angle, max_angle))
    scale = float(math.exp(rng.uniform(math.log(min_scale), math.log(max_scale))))
    t = math.radians(angle)
    # Positive angle = counter-clockwise on screen (y points down, hence the signs).
    rot = scale * np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    x0, y0, x1, y1 = FACE_BOX
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - (89.0, 109.0)
    rc = corners @ rot.T
    lo, hi = rc.min(0), rc.max(0)
    # Place the aligned centre anywhere that keeps the face box inside the canvas.
    cx = rng.uniform(-lo[0], canvas[0] - hi[0])
    cy = rng.uniform(-lo[1], canvas[1] - hi[1])
    shift = np.array([cx, cy]) - rot @ np.array([89.0, 109.0])
    return angle, scale, np.hstack([rot, shift[:, None]])


def warp_into_canvas(image: Image.Image, a: np.ndarray, canvas: tuple[int, int]) -> Image.Image:
    """Warp ``image`` (aligned frame) into a ``canvas`` by the forward affine ``a`` [2, 3]."""
    arr = np.asarray(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in border.mean(0))
    inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]  # PIL wants output -> input
    return image.transform(
        canvas,
        Image.Transform.AFFINE,
        inv.ravel().tolist(),
        Image.Resampling.BILINEAR,
        fillcolor=fill,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="folder of aligned CelebA jpgs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=1000, help="images to write (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canvas", type=float, default=2.5, help="canvas size / aligned size")
    p.add_argument("--max-angle", type=float, default=20.0)
    p.add_argument("--min-scale", type=float, default=0.7)
    p.add_argument("--max-scale", type=float, default=1.5)
    p.add_argument("--any-size", action="store_true", help="also use the 89x109 images")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    files = sorted(args.src.glob("*.jpg"))
    if not args.any_size:
        files = [f for f in files if Image.open(f).size == ALIGNED_SIZE]
    if args.count and args.count < len(files):
        files = [files[i] for i in sorted(rng.choice(len(files), args.count, replace=False))]
    canvas = (round(ALIGNED_SIZE[0] * args.canvas), round(ALIGNED_SIZE[1] * args.canvas))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "transforms.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["image", "width", "height", "angle_deg", "scale"]
            + [f"a{i}" for i in ("00", "01", "02", "10", "11", "12")]
        )
        for f in files:
            img = Image.open(f).convert("RGB")
            if img.size != ALIGNED_SIZE:
                img = img.resize(ALIGNED_SIZE, Image.Resampling.BICUBIC)
            angle, scale, a = random_transform(
                rng,
                canvas,
                max_angle=args.max_angle,
                min_scale=args.min_scale,
                max_scale=args.max_scale,
            )
            warp_into_canvas(img, a, canvas).save(args.out / f.name, quality=95)
            w.writerow(
                [f.name, *canvas, f"{angle:.3f}", f"{scale:.4f}"] + [f"{v:.5f}" for v in a.ravel()]
            )
    print(f"wrote {len(files)} images of {canvas[0]}x{canvas[1]} to {args.out}")


if __name__ == "__main__":
    main()
