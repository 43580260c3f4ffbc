"""Re-decide the shipped default model's thresholds under the threshold policy, measure them,
and write them into the metadata of both asset files (the weights are not touched).

    python tools/set_default_thresholds.py --root CELEBA_SAMPLE            # measure only
    python tools/set_default_thresholds.py --root CELEBA_SAMPLE --write    # and rewrite

The probabilities are the default model's own (default.onnx through ONNX Runtime, as
`faceattr predict` runs it) on the validation carve of `--root` (1,428 images of 570
held-out identities for the development sample, seed 0: what `faceattr eval default --split
valid` scores). Thresholds are chosen by `faceattr.thresholds.choose_thresholds` (tuned for
`--metric` only where that beats 0.5 under 5-fold cross-validation by identity, else 0.5),
exactly as `train` and `ensemble` choose them. The table printed (markdown) compares, on
those images: the thresholds now in the file, 0.5, the policy's thresholds (in-sample) and
the policy estimated honestly out of fold (each image decided by thresholds chosen without
it; `faceattr.thresholds.policy_out_of_fold`), for the default metric and balanced accuracy.

Only the `faceattr` metadata entry changes: its `thresholds` and `extra.threshold_policy`
(and, in default.onnx, `extra.export.source_sha256`, the new digest of default.safetensors's
bytes). The weights digests stay valid because they cover only the tensors / the graph.
"""

from __future__ import annotations

import argparse
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np

from faceattr.config import DataConfig, TrainConfig
from faceattr.engine.evaluate import predict_table, split_table
from faceattr.fileio import atomic_write_bytes, sha256_of
from faceattr.inference.predictor import Predictor
from faceattr.metrics import compute_metrics
from faceattr.models.digest import with_onnx_metadata, with_safetensors_digest
from faceattr.models.file import ModelFile, default_model_path
from faceattr.models.info import METADATA_KEY, ModelInfo
from faceattr.progress import NullProgress
from faceattr.thresholds import choose_thresholds, policy_out_of_fold


def validation_predictions(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The default model's probabilities, labels and identity groups on the valid carve."""
    predictor = Predictor("default", backend="onnx", device="cpu")
    data = DataConfig(root=root)
    table = split_table(predictor.path, predictor.info, data, "valid")
    probs, targets, index, skipped = predict_table(
        predictor, table, data, progress=NullProgress(), description="valid"
    )
    if skipped:
        raise SystemExit(f"{len(skipped)} validation images could not be read")
    return probs, targets, table.identity_groups(index)


def scores(probs, targets, attributes, thresholds=None, decisions=None) -> dict[str, float]:
    if decisions is not None:  # bool decisions, scored at 0.5
        m = compute_metrics(decisions.astype(np.float32), targets, attributes)
    else:
        m = compute_metrics(probs, targets, attributes, thresholds=thresholds)
    return {k: round(100 * m[k], 2) for k in ("mean_accuracy", "mean_balanced_accuracy",
                                              "strict_accuracy")}  # fmt: skip


def set_safetensors_info(path: Path, info: ModelInfo) -> None:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"][METADATA_KEY] = info.to_json()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    new = with_safetensors_digest(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
    atomic_write_bytes(path, new, what="model file", overwrite=True)


def set_onnx_info(path: Path, info: ModelInfo) -> None:
    blob = with_onnx_metadata(path.read_bytes(), {METADATA_KEY: info.to_json()})
    atomic_write_bytes(path, blob, what="model file", overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the real CelebA sample the model used")
    parser.add_argument("--metric", default=TrainConfig().threshold_metric)
    parser.add_argument("--write", action="store_true", help="rewrite both asset files")
    args = parser.parse_args()

    st_path, onnx_path = default_model_path(), default_model_path("onnx")
    old = ModelFile.resolve(onnx_path).info
    attributes = list(old.attributes)
    probs, targets, groups = validation_predictions(args.root)
    drop = TrainConfig().threshold_accuracy_drop
    thresholds, policy = choose_thresholds(
        probs, targets, attributes, metric=args.metric, max_accuracy_drop=drop, groups=groups
    )
    policy["split"] = "valid"

    rows = [("thresholds in the file now (in-sample)", scores(probs, targets, attributes,
                                                            old.thresholds or 0.5)),
            ("0.5 everywhere", scores(probs, targets, attributes, 0.5))]  # fmt: skip
    for metric in dict.fromkeys((args.metric, "balanced_accuracy")):
        thr, pol = choose_thresholds(probs, targets, attributes, metric=metric,
                                     max_accuracy_drop=drop, groups=groups)  # fmt: skip
        oof = policy_out_of_fold(probs, targets, attributes, metric=metric,
                                 max_accuracy_drop=drop, groups=groups)  # fmt: skip
        name = f"policy, {metric} ({len(pol['tuned'])} tuned)"
        rows.append((f"{name}, in-sample", scores(probs, targets, attributes, thr)))
        rows.append((f"{name}, out of fold", scores(probs, targets, attributes, decisions=oof)))
    print(f"{len(probs)} validation images; tuned for {args.metric}: "
          f"{', '.join(policy['tuned']) or 'none'}\n")  # fmt: skip
    print("| thresholds | mean accuracy | mean balanced accuracy | strict accuracy |")
    print("|---|---:|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s['mean_accuracy']:.2f} | {s['mean_balanced_accuracy']:.2f} | "
              f"{s['strict_accuracy']:.2f} |")  # fmt: skip
    print("\n| attribute | threshold | out of fold: tuned | at 0.5 |")
    print("|---|---:|---:|---:|")
    for a, name in enumerate(attributes):
        oof = policy["out_of_fold"][name]
        print(f"| {name} | {thresholds[a]:.3f} | {oof['tuned']} | {oof['at_0.5']} |")
    if not args.write:
        return

    def updated(info: ModelInfo) -> ModelInfo:
        extra = dict(info.extra, threshold_policy=policy)
        return replace(info, thresholds=[float(t) for t in thresholds], extra=extra)

    set_safetensors_info(st_path, updated(ModelFile.resolve(st_path).info))
    onnx_info = updated(ModelFile.resolve(onnx_path).info)
    if "export" in onnx_info.extra:
        export = dict(onnx_info.extra["export"], source_sha256=sha256_of(st_path))
        onnx_info = replace(onnx_info, extra=dict(onnx_info.extra, export=export))
    set_onnx_info(onnx_path, onnx_info)
    for path in (st_path, onnx_path):  # both load, verified, with the new thresholds
        file = ModelFile.resolve(path)
        file.read_verified()
        assert file.info.thresholds == [float(t) for t in thresholds], path
    print(f"\nwrote the thresholds into {st_path.name} and {onnx_path.name}")


if __name__ == "__main__":
    main()
