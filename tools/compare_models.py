"""Compare model files on the same held-out images, alone and averaged (an ensemble).

    python tools/compare_models.py MODEL[:TTA] MODEL[:TTA] ... --root CELEBA_SAMPLE
        [--split valid] [--max-accuracy-drop 0.02] [--ensemble] [--json]

MODEL is a run directory, a .safetensors or .onnx file, or ``default``; ``:none`` or
``:flip`` sets its test-time augmentation (default: the model's own). Every model must have
the same attributes and is evaluated on the same split (``valid``: the identity-disjoint carve
of the run, or the default carve for a bare file). Printed per model, and with
``--ensemble`` for the average of all their probabilities: mean accuracy and mean balanced
accuracy at 0.5, and both with thresholds tuned two-fold (tuned on one random half of the
images, measured on the other, both ways round: the honest estimate of tuned thresholds).
This is how the search table of docs/default-model.md was made.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from faceattr.config import DataConfig
from faceattr.engine.evaluate import predict_table, split_table
from faceattr.errors import FaceAttrError
from faceattr.inference.predictor import Predictor
from faceattr.progress import NullProgress
from faceattr.thresholds import held_out_scores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL[:TTA]")
    p.add_argument("--root", required=True, help="CelebA-layout dataset")
    p.add_argument("--split", default="valid")
    p.add_argument("--max-accuracy-drop", type=float, default=0.02, help="as train's (0.02)")
    p.add_argument("--ensemble", action="store_true", help="also the average of all models")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    data = DataConfig(root=args.root)
    rows: list[dict] = []
    all_probs, reference = [], None
    for spec in args.models:
        name, _, tta = spec.rpartition(":") if spec.endswith((":none", ":flip")) else (spec, "", "")
        predictor = Predictor(name, tta=tta or None)
        table = split_table(predictor.path, predictor.info, data, args.split)
        probs, targets, index, skipped = predict_table(
            predictor, table, data, progress=NullProgress(), description=args.split
        )
        attributes = list(predictor.info.attributes)
        if reference is None:
            reference = (attributes, index, targets)
        elif attributes != reference[0] or not np.array_equal(index, reference[1]):
            sys.exit(f"{spec}: other attributes or images than {args.models[0]}")
        all_probs.append(probs)
        row = {"model": name, "tta": predictor.tta, "images": len(probs)}
        row.update(
            held_out_scores(probs, targets, attributes, max_accuracy_drop=args.max_accuracy_drop)
        )
        rows.append(row)
    assert reference is not None
    if args.ensemble and len(all_probs) > 1:
        mean = np.mean(all_probs, axis=0)
        row = {"model": "average of " + " + ".join(args.models), "tta": "-", "images": len(mean)}
        row.update(
            held_out_scores(
                mean, reference[2], reference[0], max_accuracy_drop=args.max_accuracy_drop
            )
        )
        rows.append(row)

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | TTA | @0.5 accuracy | @0.5 balanced | tuned accuracy | tuned balanced |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['tta']} | {100 * r['mean_accuracy_at_0.5']:.2f} | "
            f"{100 * r['mean_balanced_accuracy_at_0.5']:.2f} | "
            f"{100 * r['mean_accuracy_tuned_two_fold']:.2f} | "
            f"{100 * r['mean_balanced_accuracy_tuned_two_fold']:.2f} |"
        )
    print(
        f"\n{rows[0]['images']:,} images of split {args.split!r}; tuned = two-fold, "
        f"thresholds allowed to cost at most {args.max_accuracy_drop} accuracy each."
    )


if __name__ == "__main__":
    try:
        main()
    except FaceAttrError as e:  # a bad model path or dataset: the message says how to fix it
        sys.exit(f"error: {e}")
