"""Export a run's best model as the packaged default model (fp16, with provenance), and its
ONNX twin that `faceattr predict` runs.

    python tools/export_default_model.py runs/<run> [--tta flip] [--retune 0.02]
        [--out src/faceattr/assets/default.safetensors] [--root CELEBA_SAMPLE]
    python tools/export_default_model.py --onnx-only --root CELEBA_SAMPLE

An ensemble file from `faceattr ensemble --root` works too (its thresholds and held-out
scores come with it). The file keeps the run's thresholds and preprocessing, adds a
description and the CelebA licence note, and is checked to load and to predict like the fp32
original (`tools/set_default_thresholds.py` re-decides the shipped files' thresholds later).
`--retune` and the validation summary read the run's predictions-valid.npz: make it with
`faceattr eval RUN --split valid` (with the same `--tta` as the export) first.

With `--root` (real CelebA), the .safetensors model is then exported to ONNX beside it
(default.onnx), checked against PyTorch on the held-out validation identities; int8 is tried
too (calibrated on 300 training faces) and shipped instead only when it stays within
`--int8-budget` points (0.1) of fp32's mean accuracy, at 0.5 and at the tuned thresholds.
`--onnx-only` does just this step for the .safetensors already at `--out`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from faceattr.config import TrainConfig
from faceattr.metrics import compute_metrics
from faceattr.models import load_model_file, save_model_file
from faceattr.models.file import ModelFile
from faceattr.models.head import TTA_MODES
from faceattr.thresholds import choose_thresholds, two_fold_tuned

LICENSE = (
    "Weights derived from CelebA (Liu et al., ICCV 2015), which is licensed for non-commercial "
    "research purposes only; these weights carry the same restriction."
)


def _validation_predictions(run: Path):
    data = np.load(run / "predictions-valid.npz")
    targets = data["targets"].astype(np.float32)
    targets[targets < 0] = np.nan
    return data["probs"].astype(np.float32), targets


def retune(run: Path, info, max_drop: float):
    """Thresholds chosen again by the policy (`faceattr.thresholds.choose_thresholds`, the
    training default metric) on the run's validation predictions."""
    probs, targets = _validation_predictions(run)
    thresholds, policy = choose_thresholds(
        probs, targets, info.attributes, metric=TrainConfig().threshold_metric,
        max_accuracy_drop=max_drop,
    )  # fmt: skip
    extra = dict(info.extra, threshold_policy=policy)
    return replace(info, thresholds=[float(t) for t in thresholds], extra=extra)


def validation_summary(run: Path, info, max_drop: float) -> dict:
    """Mean/balanced accuracy on the run's validation predictions, at 0.5, at the model's
    thresholds (tuned on these same images: optimistic) and tuned two-fold (honest); empty
    when `faceattr eval RUN --split valid` has not been run."""
    if not (run / "predictions-valid.npz").exists():
        return {}
    probs, targets = _validation_predictions(run)
    out = {"valid_images": len(probs)}
    for name, thr in (("at_0.5", 0.5), ("tuned", info.thresholds or 0.5)):
        m = compute_metrics(probs, targets, info.attributes, thresholds=thr,
                            train_positive_rates=info.train_positive_rates)  # fmt: skip
        out[f"mean_accuracy_{name}"] = round(m["mean_accuracy"], 4)
        out[f"mean_balanced_accuracy_{name}"] = round(m["mean_balanced_accuracy"], 4)
    out.update(two_fold_tuned(probs, targets, info.attributes, max_accuracy_drop=max_drop))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory (or model file) to export")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parents[1] / "src/faceattr/assets/default.safetensors"),
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation of the exported model (default: the run's own)",
    )
    parser.add_argument(
        "--retune",
        type=float,
        metavar="MAX_ACCURACY_DROP",
        help="choose the thresholds again by the threshold policy (tuned where that beats 0.5 "
        "under cross-validation; for balanced accuracy or f1 at most this accuracy cost per "
        "attribute) on the run's predictions-valid.npz (from `faceattr eval RUN --split valid`)",
    )
    parser.add_argument("--root", help="real CelebA root: also export and check the ONNX model")
    parser.add_argument("--onnx-only", action="store_true", help="only the ONNX step")
    parser.add_argument("--int8-budget", type=float, default=0.1)
    args = parser.parse_args()
    if args.onnx_only or args.run is None:
        if not (args.onnx_only and args.root):
            parser.error("give a run to export, or --onnx-only with --root")
        export_onnx(Path(args.out), args.root, args.int8_budget)
        return

    src = ModelFile.resolve(args.run).path
    model, info = load_model_file(src)
    if args.tta is not None:
        model.tta = args.tta
        info = replace(info, tta=args.tta)
    description = "faceattr default model: 40 CelebA attributes from an aligned face crop."
    if info.members:  # `faceattr ensemble --root` tuned the thresholds and scored it
        if args.retune is not None or args.tta is not None:
            parser.error("an ensemble's thresholds and TTA are set by `faceattr ensemble`")
        summary = dict(info.extra.get("validation", {}))
        archs = ", ".join(f"{m['arch']} {m['img_size']} px" for m in info.members)
        description = description[:-1] + f" (an ensemble: {archs})."
    else:
        if args.retune is not None:
            info = retune(src.parent, info, args.retune)
        summary = validation_summary(
            src.parent,
            info,
            args.retune if args.retune is not None else TrainConfig().threshold_accuracy_drop,
        )
    print(json.dumps(summary, indent=2))
    extra = dict(info.extra)
    extra.update(description=description, source_run=str(Path(args.run).name), validation=summary)
    info = replace(info, license=LICENSE, extra=extra)
    out = save_model_file(args.out, model, info, dtype=torch.float16)

    # The fp16 copy must behave like the original.
    copy, _ = load_model_file(out)
    x = torch.rand(8, 3, info.img_size, info.img_size)
    with torch.no_grad():
        diff = (torch.sigmoid(model(x)) - torch.sigmoid(copy(x))).abs().max().item()
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB); max probability change from fp16: {diff:.2e}")
    if diff > 1e-2:
        raise SystemExit("fp16 export changed predictions too much")
    if args.root:
        export_onnx(out, args.root, args.int8_budget)


def export_onnx(model: Path, root: str, int8_budget: float) -> None:
    """default.onnx beside ``model``: int8 when it is within ``int8_budget`` points of fp32
    on the validation identities, else fp32. Prints both summaries."""
    import tempfile

    from faceattr.config import DataConfig
    from faceattr.engine.export import export_model

    data = DataConfig(root=root)
    final = model.with_suffix(".onnx")
    fp32 = export_model(model, final, data=data, eval_split="valid", eval_images=None,
                        fp16_weights=True)  # fmt: skip
    print(json.dumps(fp32.to_json(), indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        int8 = export_model(model, Path(tmp) / "int8.onnx", int8=True, data=data,
                            eval_split="valid", eval_images=None,
                            max_accuracy_drop=100.0)  # fmt: skip
        print(json.dumps(int8.to_json(), indent=2))
        cmp = int8.int8_vs_fp32
        assert cmp is not None  # measured on the valid split
        drop = max(cmp.at_half["drop"], cmp.tuned["drop"])
        if drop <= int8_budget:
            Path(int8.out).replace(final)
            print(f"shipping int8 (drop {drop:.2f} <= {int8_budget} points)")
        else:
            print(f"shipping fp32: int8 loses {drop:.2f} points (> {int8_budget})")


if __name__ == "__main__":
    main()
