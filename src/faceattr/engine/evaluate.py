"""Evaluate a trained model on a dataset split: metrics, and per-image probabilities saved."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import DataConfig
from faceattr.data.table import AttributeTable
from faceattr.engine.data import make_batches
from faceattr.engine.loop import predict_batches
from faceattr.errors import DataError
from faceattr.metrics import metrics_report
from faceattr.progress import NullProgress, Progress
from faceattr.runs import resolve_model, run_config, run_dir_of
from faceattr.utils import atomic_open, atomic_write_text, resolve_device


def evaluate_model(
    model: str | Path | None,
    data: DataConfig,
    split: str = "test",
    *,
    batch_size: int = 128,
    device: str = "auto",
    threshold: float | None = None,
    tta: str | None = None,
    progress: Progress | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` of the dataset ``data`` describes.

    Preprocessing and attributes come from the model file. When the model sits in a run
    directory, the run's validation carve settings are used (so ``valid`` means the same
    held-out identities as in training) and, with ``save``, ``metrics-<split>.json`` and
    ``predictions-<split>.npz`` (per-face probabilities, see :func:`save_predictions`) are
    written there. ``tta``
    ("none" or "flip") overrides the model's own test-time augmentation.
    """
    from faceattr.data import load_split
    from faceattr.data.transforms import Preprocessing
    from faceattr.models import load_model_file
    from faceattr.models.head import check_tta

    if tta is not None:
        check_tta(tta)  # before the model is loaded
    progress = progress or NullProgress()
    path = resolve_model(model)
    dev = resolve_device(device)
    net, info = load_model_file(path, device=str(dev))
    if tta is not None:
        net.tta = tta
    run_cfg = run_config(path)
    if run_cfg is not None:
        data = replace(
            data, valid_fraction=run_cfg.data.valid_fraction, split_seed=run_cfg.data.split_seed
        )
    left, top, right, bottom = info.crop
    data = replace(data, img_size=info.img_size, crop=(left, top, right, bottom))
    table = load_split(data, split)
    missing = [a for a in info.attributes if a not in table.attributes]
    if missing:
        raise DataError(
            f"The dataset has no labels for {len(missing)} of the model's attributes: "
            + ", ".join(missing[:5]),
            "Evaluate on a dataset with the attributes the model was trained on.",
        )
    table = table.select_attributes(list(info.attributes))
    for note in table.notes:
        progress.log(note)

    batches = make_batches(
        table,
        img_size=info.img_size,
        crop=info.crop,
        batch_size=batch_size,
        workers=data.workers,
        pin_memory=dev.type == "cuda",
        data=data,  # a matching `data prepare` cache is used when there is one
        progress=progress,
    )
    progress.start(f"evaluating {split}", total=len(table))
    probs, targets, index, skipped = predict_batches(
        net, batches, device=dev, preprocessing=Preprocessing.from_info(info),
        on_batch=lambda n: progress.advance(n),
    )  # fmt: skip
    progress.finish()
    if len(index) == 0:
        raise DataError(f"None of the {len(table)} images of split {split!r} could be read.")
    thresholds = threshold if threshold is not None else info.thresholds
    metrics = metrics_report(
        probs, targets, list(info.attributes), thresholds, info.train_positive_rates
    )
    metrics.update(
        split=split,
        model=str(path),
        dataset=data.dataset,
        root=str(data.root),
        tta=net.tta,
        skipped_images=len(skipped),
        notes=list(table.notes),
    )
    run = run_dir_of(path)
    if save and run is not None:
        atomic_write_text(run / f"metrics-{split}.json", json.dumps(metrics, indent=2) + "\n")
        save_predictions(
            run / f"predictions-{split}.npz", table, index, probs, targets, list(info.attributes)
        )
        metrics["saved_to"] = str(run)
    return metrics


def save_predictions(
    path: Path,
    table: AttributeTable,
    index: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray,
    attributes: list[str],
) -> None:
    """Write ``predictions-<split>.npz``: one row per evaluated face (see docs/formats.md).

    ``index`` ``[N]``: each row's position in ``table`` (the evaluated split); ``probs`` and
    ``targets`` ``[N, A]`` (NaN = unknown label). Besides the image name, each row keeps
    its identity: ``row`` (the position in the split) and, for datasets with several faces
    per photo, ``box`` (the face box in image pixels), so reports can tell faces apart.
    """
    from faceattr.data import table_boxes

    # Any, not ndarray: numpy's stub types savez's **kwds as arrays *or* its allow_pickle flag.
    arrays: dict[str, Any] = {
        "image": np.asarray(table.frame["image"].to_numpy()[index], dtype=str),
        "row": np.asarray(index, dtype=np.int64),
        "probs": probs.astype(np.float16),
        "targets": np.nan_to_num(targets, nan=-1).astype(np.int8),  # -1 = unknown
        "attributes": np.asarray(attributes, dtype=str),
        "image_dir": np.asarray(str(table.image_dir)),
    }
    boxes = table_boxes(table)
    if boxes is not None:
        arrays["box"] = boxes[index]  # float64 [N, 4]: exactly the box decoding cut out
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
