"""Compare the installed face detectors on real CelebA faces (evidence for the default).

    python tools/compare_detectors.py --aligned ../shared/data/celeba-sample/img_align_celeba \
        --unaligned /tmp/celeba-unaligned [--count 1000] [--negatives DIR]

For every installed detector it reports, as a markdown table:

* ``det aligned``: share of the aligned 178x218 crops (the sources of the unaligned set) where
  a face is found; ``extra``: images with more than one face (mostly background people).
* ``det unaligned``: share of the unaligned canvases (tools/make_unaligned.py) where a face is
  found *at the right place*: its landmarks within 0.25 inter-ocular distances (NME) of the
  published CelebA mean landmarks carried into the canvas by the known transform.
* ``NME equiv``: landmark consistency under the known scale/rotation/shift: landmarks found in
  the canvas, mapped back to the aligned frame, vs the ones found in the aligned crop; mean
  point distance / inter-ocular distance (median over images, and share over 0.1).
* ``align err``: how well alignment undoes the known transform: the detected face in the
  canvas is aligned (``alignment_matrix``), composed with the canvas transform, and the 5
  published mean points are carried through; the mean distance (178x218 pixels) from where
  they started (median over images / share over 5 px). 0 = the original crop exactly.
* ``NME flip``: the same for a mirror image (left/right labels swapped back).
* ``det 89x109``: share of ``--half-size`` half-size (89x109) aligned crops with a face.
* ``ms``: mean milliseconds per image on each set, with the detector's default settings.
* ``fp/neg``: faces found in the ``--negatives`` images (photos without people), if given.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.inference.align import alignment_matrix, template_for, transform_points
from faceattr.inference.detect import available_detectors, create_detector

# Published approximate means of CelebA's aligned landmarks (178x218 frame), only used to
# tell a right detection from a wrong one; the 0.25 NME gate is loose on purpose.
PUBLISHED = np.array([[69, 111], [108, 111], [88, 136], [72, 152], [105, 152]], np.float64)
FLIP_ORDER = [1, 0, 2, 4, 3]


def nme(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance between [5, 2] sets, over b's inter-ocular distance."""
    return float(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(b[1] - b[0]))


def load_transforms(folder: Path) -> dict[str, np.ndarray]:
    with open(folder / "transforms.csv") as fh:
        rows = list(csv.DictReader(fh))
    keys = ("a00", "a01", "a02", "a10", "a11", "a12")
    return {r["image"]: np.array([float(r[k]) for k in keys]).reshape(2, 3) for r in rows}


def apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a[:, :2].T + a[:, 2]


def invert(a: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]


def evaluate(name: str, args: argparse.Namespace, transforms: dict[str, np.ndarray]) -> dict:
    det = create_detector(name)
    names = sorted(transforms)[: args.count] if args.count else sorted(transforms)
    found_al = extra = found_un = 0
    eq, fl, al = [], [], []
    t_al = t_un = 0.0
    for n in names:
        aligned = np.asarray(Image.open(args.aligned / n).convert("RGB"))
        t0 = time.perf_counter()
        faces = det.detect(aligned)
        t_al += time.perf_counter() - t0
        ref = faces[0].landmarks.astype(np.float64) if faces else None
        found_al += bool(faces)
        extra += len(faces) > 1
        if ref is not None:
            flipped = det.detect(np.ascontiguousarray(aligned[:, ::-1]))
            if flipped:
                back = flipped[0].landmarks.astype(np.float64)[FLIP_ORDER]
                back[:, 0] = aligned.shape[1] - back[:, 0]
                fl.append(nme(back, ref))
        canvas = np.asarray(Image.open(args.unaligned / n).convert("RGB"))
        a = transforms[n]
        t0 = time.perf_counter()
        faces = det.detect(canvas)
        t_un += time.perf_counter() - t0
        truth = apply(a, PUBLISHED)
        right = [f for f in faces if nme(f.landmarks.astype(np.float64), truth) < 0.25]
        if right:
            found_un += 1
            m = alignment_matrix(right[0].landmarks, template=template_for(name))
            round_trip = transform_points(m, apply(a, PUBLISHED))
            al.append(float(np.linalg.norm(round_trip - PUBLISHED, axis=1).mean()))
            if ref is not None:
                eq.append(nme(apply(invert(a), right[0].landmarks.astype(np.float64)), ref))
    small = [f for f in sorted(args.aligned.glob("*.jpg")) if Image.open(f).size == (89, 109)]
    small = small[: args.half_size]
    found_small = sum(bool(det.detect(Image.open(f).convert("RGB"))) for f in small)
    fp = None
    if args.negatives:
        fp = 0
        for f in sorted(args.negatives.iterdir()):
            fp += len(det.detect(Image.open(f)))
    k = len(names)
    eq_a, fl_a = np.array(eq), np.array(fl)
    return {
        "detector": name,
        "det aligned": f"{found_al / k:.3f}",
        "extra": str(extra),
        "det unaligned": f"{found_un / k:.3f}",
        "det 89x109": f"{found_small / max(len(small), 1):.3f}",
        "NME equiv (median / >0.1)": f"{np.median(eq_a):.3f} / {(eq_a > 0.1).mean():.3f}",
        "align err px (median / >5)": f"{np.median(al):.2f} / {(np.array(al) > 5).mean():.3f}",
        "NME flip (median / >0.1)": f"{np.median(fl_a):.3f} / {(fl_a > 0.1).mean():.3f}",
        "ms aligned": f"{t_al / k * 1000:.1f}",
        "ms unaligned": f"{t_un / k * 1000:.1f}",
        "fp/neg": "-" if fp is None else str(fp),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--aligned", type=Path, required=True)
    p.add_argument("--unaligned", type=Path, required=True)
    p.add_argument("--count", type=int, default=0, help="images to use (0 = all in the CSV)")
    p.add_argument("--negatives", type=Path, help="folder of images without faces")
    p.add_argument("--half-size", type=int, default=0, help="89x109 images to try (0 = none)")
    p.add_argument("--detectors", default=",".join(available_detectors()))
    args = p.parse_args(argv)
    transforms = load_transforms(args.unaligned)
    rows = [evaluate(n, args, transforms) for n in args.detectors.split(",") if n]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
