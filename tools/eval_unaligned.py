"""How much accuracy alignment recovers on unaligned photos (issue: predict on real photos).

Takes the validation identities of the real CelebA sample (never seen in training), pastes each
native-size aligned image into a larger canvas with a random scale, shift and rotation (up to
+-20 degrees; tools/make_unaligned.py) and compares the model's mean accuracy (threshold 0.5) on:
the original aligned crops, the unaligned canvases with detection + alignment, and the unaligned
canvases taken whole (--no-detect).

    python tools/eval_unaligned.py --root ../shared/data/celeba-sample --model default --count 400
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_unaligned import ALIGNED_SIZE, random_transform, warp_into_canvas  # noqa: E402

from faceattr.config import DataConfig  # noqa: E402
from faceattr.data import load_split  # noqa: E402
from faceattr.inference.detect import create_detector  # noqa: E402
from faceattr.inference.predictor import Predictor, faces_detected  # noqa: E402


def mean_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(((probs >= 0.5) == (labels > 0.5)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    table = load_split(DataConfig(root=args.root), "valid")
    sizes = [Image.open(path).size for path in table.paths]
    native = [i for i, s in enumerate(sizes) if s == ALIGNED_SIZE]
    rng = np.random.default_rng(args.seed)
    rows = sorted(rng.choice(native, min(args.count, len(native)), replace=False))
    predictor = Predictor(args.model, threshold=0.5)
    labels = table.select_attributes(predictor.attributes).labels[rows]
    detector = create_detector()
    canvas = (round(ALIGNED_SIZE[0] * 2.5), round(ALIGNED_SIZE[1] * 2.5))

    aligned, whole, detected, found = [], [], [], []
    start = time.perf_counter()
    for r in rows:
        img = Image.open(table.paths[r]).convert("RGB")
        _, _, a = random_transform(rng, canvas, max_angle=20.0, min_scale=0.7, max_scale=1.5)
        photo = warp_into_canvas(img, a, canvas)
        aligned.append(img)
        whole.append(photo)
        faces = faces_detected(photo, detector)
        found.append(bool(faces))
        # The best-scoring face; a miss falls back to the whole canvas (what a user would get).
        detected.append(faces[0].crop if faces else photo)
    seconds = time.perf_counter() - start
    result = {
        "images": len(rows),
        "detection_rate": float(np.mean(found)),
        "accuracy_aligned_originals": mean_accuracy(predictor.probabilities(aligned), labels),
        "accuracy_unaligned_detect_align": mean_accuracy(predictor.probabilities(detected), labels),
        "accuracy_unaligned_no_detect": mean_accuracy(predictor.probabilities(whole), labels),
        "majority_accuracy": float(
            ((np.asarray(predictor.info.train_positive_rates) >= 0.5) == (labels > 0.5)).mean()
        ),
        "detect_align_ms_per_image": 1000 * seconds / len(rows),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
