"""Markdown per-attribute table of a model, from two `faceattr eval --json` outputs.

    faceattr eval MODEL --root R --split valid --threshold 0.5 --json > at05.json
    faceattr eval MODEL --root R --split valid --json > tuned.json
    python tools/attribute_table.py at05.json tuned.json

Columns: positives, majority-class accuracy, accuracy / balanced accuracy / F1 at 0.5, average
precision, the model's threshold, accuracy / balanced accuracy at it (as docs/default-model.md).
"""

from __future__ import annotations

import argparse
import json


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("at_half", help="eval --json output with --threshold 0.5")
    parser.add_argument("tuned", help="eval --json output with the model's thresholds")
    args = parser.parse_args()
    with open(args.at_half) as f:
        half = json.load(f)["per_attribute"]
    with open(args.tuned) as f:
        tuned = json.load(f)["per_attribute"]
    print("| attribute | positives | majority | accuracy @0.5 | balanced @0.5 | F1 @0.5 | AP "
          "| threshold | accuracy @tuned | balanced @tuned |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, h in half.items():
        t = tuned[name]
        print(
            f"| {name} | {h['positives']} | {pct(h['majority_accuracy'])} | {pct(h['accuracy'])} "
            f"| {pct(h['balanced_accuracy'])} | {pct(h['f1'])} | {pct(h['average_precision'])} "
            f"| {t['threshold']:.2f} | {pct(t['accuracy'])} | {pct(t['balanced_accuracy'])} |"
        )


if __name__ == "__main__":
    main()
