"""Derive the CelebA alignment template: where each detector puts the 5 landmarks on CelebA's
own aligned 178x218 crops.

    python tools/derive_template.py --aligned ../shared/data/celeba-sample/img_align_celeba \
        [--count 0] [--detectors retinaface,yunet,mtcnn] [--json template.json]

For each detector: detect on every native-size (178x218) aligned image, keep the best face,
drop outlier images (mean point distance to the per-point median over 0.15 inter-ocular
distances: a wrong or background face), and take the 20% trimmed mean of each coordinate (the
median and spread are printed too). The result goes into
``faceattr.inference.align.CELEBA_TEMPLATES`` and is compared with the published approximate
means of ``list_landmarks_align_celeba.txt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.inference.align import CELEBA_SIZE, PUBLISHED_CELEBA_MEANS
from faceattr.inference.detect import LANDMARK_NAMES, available_detectors, create_detector


def trimmed_mean(x: np.ndarray, cut: float = 0.2) -> np.ndarray:
    """Mean over axis 0 after dropping the ``cut`` lowest and highest values of each column."""
    s = np.sort(x, axis=0)
    k = int(len(s) * cut)
    return s[k : len(s) - k].mean(0)


def collect(detector_name: str, files: list[Path]) -> tuple[np.ndarray, int]:
    """Best-face landmarks [M, 5, 2] of the images with a face, and the count without."""
    det = create_detector(detector_name)
    pts, missed = [], 0
    for f in files:
        faces = det.detect(Image.open(f).convert("RGB"))
        if faces:
            pts.append(faces[0].landmarks)
        else:
            missed += 1
    return np.array(pts, dtype=np.float64), missed


def derive(pts: np.ndarray) -> dict:
    med = np.median(pts, 0)
    iod = np.linalg.norm(med[1] - med[0])
    dev = np.linalg.norm(pts - med, axis=2).mean(1) / iod
    keep = pts[dev < 0.15]
    return {
        "template": trimmed_mean(keep),
        "median": np.median(keep, 0),
        "std": keep.std(0),
        "used": len(keep),
        "outliers": int((dev >= 0.15).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--aligned", type=Path, required=True)
    p.add_argument("--count", type=int, default=0, help="images to use (0 = all native-size)")
    p.add_argument("--detectors", default=",".join(available_detectors()))
    p.add_argument("--json", type=Path, help="also write the templates here")
    args = p.parse_args(argv)
    files = [f for f in sorted(args.aligned.glob("*.jpg")) if Image.open(f).size == CELEBA_SIZE]
    if args.count:
        files = files[: args.count]
    out = {}
    pub = PUBLISHED_CELEBA_MEANS.astype(np.float64)
    for name in args.detectors.split(","):
        pts, missed = collect(name, files)
        r = derive(pts)
        tpl = r["template"]
        out[name] = np.round(tpl, 1).tolist()
        print(
            f"\n## {name}: {len(files)} images, {missed} without a face, {r['outliers']} outliers"
        )
        print("| point | template (trimmed mean) | median | std | published | difference |")
        print("|---|---|---|---|---|---|")
        for i, lm in enumerate(LANDMARK_NAMES):
            d = tpl[i] - pub[i]
            print(
                f"| {lm} | ({tpl[i, 0]:.1f}, {tpl[i, 1]:.1f}) | ({r['median'][i, 0]:.1f}, "
                f"{r['median'][i, 1]:.1f}) | ({r['std'][i, 0]:.1f}, {r['std'][i, 1]:.1f}) | "
                f"({pub[i, 0]:.0f}, {pub[i, 1]:.0f}) | ({d[0]:+.1f}, {d[1]:+.1f}) |"
            )
        err = np.linalg.norm(tpl - pub, axis=1)
        print(f"mean distance to the published means: {err.mean():.2f} px (max {err.max():.2f})")
    print("\nCELEBA_TEMPLATES = " + json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
