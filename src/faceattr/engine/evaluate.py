"""Evaluate a trained model on a dataset split: metrics, and per-image probabilities saved.

Runs on either backend (ONNX Runtime or PyTorch) through the same
:class:`~faceattr.inference.predictor.Predictor` that `predict` uses; imports no torch itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import EVAL_BATCH_SIZE, NUMBER_LIMITS, DataConfig, check_number
from faceattr.data.batches import iter_pixel_batches
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError
from faceattr.fileio import atomic_open
from faceattr.inference.predictor import Predictor
from faceattr.metrics import MetricsReport, metrics_report
from faceattr.models.info import ModelInfo
from faceattr.progress import NullProgress, Progress
from faceattr.runs import RunDir
from faceattr.subgroups import SubgroupAccuracy, parse_subgroups, subgroup_accuracy


@dataclass
class Evaluation:
    """What :func:`evaluate_model` measured. ``to_json()`` is ``faceattr eval --json`` and,
    without ``saved_to``/``saved_as``, the ``metrics-<split>.json`` file (docs/formats.md)."""

    metrics: MetricsReport  # the metrics report (summary, per_attribute, thresholds)
    split: str
    model: str  # the model file evaluated
    backend: str  # "onnx" or "torch"
    dataset: str
    root: str
    tta: str  # the test-time augmentation used
    skipped_images: int = 0  # images that could not be read
    notes: list[str] = field(default_factory=list)  # the dataset reader's remarks
    saved_to: str | None = None  # the run directory the results were written to
    saved_as: str | None = None  # the metrics file's name there
    # The target's accuracy within groups of other attributes (``subgroups=``); None: not asked
    subgroups: list[SubgroupAccuracy] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.metrics,
            "split": self.split,
            "model": self.model,
            "backend": self.backend,
            "dataset": self.dataset,
            "root": self.root,
            "tta": self.tta,
            "skipped_images": self.skipped_images,
            "notes": self.notes,
        }
        if self.subgroups is not None:
            out["subgroups"] = [s.to_json() for s in self.subgroups]
        if self.saved_to is not None:
            out["saved_to"], out["saved_as"] = self.saved_to, self.saved_as
        return out

    def metric(self, name: str) -> float | None:
        """A summary metric of the report by name (``mean_accuracy``, ``macro_f1``, ...)."""
        report: Mapping[str, Any] = self.metrics
        return report.get(name)


def split_table(path: Path, info: ModelInfo, data: DataConfig, split: str) -> AttributeTable:
    """Split ``split`` of the dataset ``data`` describes, with the model's attributes.

    When the model file sits in a run directory, the run's validation carve settings are
    used, so ``valid`` means the same held-out identities as in training.
    """
    from faceattr.data import load_split

    run = RunDir.containing(path)
    if run is not None:
        run_cfg = run.config()
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
    return table.select_attributes(list(info.attributes))


def predict_table(
    predictor: Predictor,
    table: AttributeTable,
    data: DataConfig | None,
    *,
    progress: Progress,
    description: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(probs [N, A], targets [N, A], index [N], skipped)`` of every readable image of
    ``table`` (``data``: where a prepared cache may be found)."""
    batches = iter_pixel_batches(
        table,
        predictor.preprocessing,
        batch_size=predictor.batch_size,
        workers=None if data is None else data.workers,
        data=data,
        progress=progress,
    )
    progress.start(description, total=len(table))
    probs, targets, index, skipped = [], [], [], []
    for batch in batches:
        skipped.extend(batch.skipped)
        if len(batch):
            probs.append(predictor.probabilities_of_pixels(batch.images))
            targets.append(batch.targets)
            index.append(batch.index)
        progress.advance(len(batch) + len(batch.skipped))
    progress.finish()
    if not probs:
        raise DataError(f"None of the {len(table)} images of {description} could be read.")
    return np.concatenate(probs), np.concatenate(targets), np.concatenate(index), skipped


def evaluate_model(
    model: str | Path | None,
    data: DataConfig,
    split: str = "test",
    *,
    backend: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
    threshold: float | None = None,
    tta: str | None = None,
    progress: Progress | None = None,
    save: bool = True,
    subgroups: str | Sequence[str] | None = None,
) -> Evaluation:
    """Metrics of ``model`` on ``split`` of the dataset ``data`` describes.

    ``model`` is anything :class:`~faceattr.inference.predictor.Predictor` loads (an
    ``.onnx`` file runs through ONNX Runtime, a run directory or ``.safetensors`` file
    through PyTorch unless ``backend`` says otherwise). Preprocessing and attributes come
    from the model file. When the model sits in a run directory, the run's validation carve
    settings are used (so ``valid`` means the same held-out identities as in training) and,
    with ``save``, ``metrics-<split>.json`` and ``predictions-<split>.npz`` (per-face
    probabilities, see :func:`save_predictions`) are written there. ``tta`` ("none" or
    "flip") overrides the model's own test-time augmentation. ``subgroups``
    (``"Male|Heavy_Makeup,Wearing_Lipstick; Young|Male"``, :mod:`faceattr.subgroups`) adds each
    target's accuracy within the groups of other attributes, at the thresholds of the metrics.
    Returns an :class:`Evaluation`.
    """
    progress = progress or NullProgress()
    if threshold is not None:
        check_number("threshold", threshold, NUMBER_LIMITS["threshold"])
    predictor = Predictor(model, backend=backend, device=device, batch_size=batch_size, tta=tta)
    path, info = predictor.path, predictor.info
    specs = parse_subgroups(subgroups, list(info.attributes))  # before the work: fail fast
    table = split_table(path, info, data, split)
    for note in table.notes:
        progress.log(note)
    probs, targets, index, skipped = predict_table(
        predictor, table, data, progress=progress, description=f"evaluating {split}"
    )
    thresholds = threshold if threshold is not None else info.thresholds
    metrics = metrics_report(
        probs, targets, list(info.attributes), thresholds, info.train_positive_rates
    )
    result = Evaluation(
        metrics=metrics,
        split=split,
        model=str(path),
        backend=predictor.backend.name,
        dataset=data.dataset,
        root=str(data.root),
        tta=predictor.tta,
        skipped_images=len(skipped),
        notes=list(table.notes),
    )
    if subgroups is not None:
        result.subgroups = subgroup_accuracy(
            probs, targets, list(info.attributes), specs, metrics["thresholds"]
        )
    run = RunDir.containing(path)
    if save and run is not None:
        # The run's own model writes metrics-<split>.json (what `report` reads); another file
        # in the run (an export such as model-int8.onnx) gets its name appended.
        tag = RunDir.eval_tag(path)
        metrics_file = run.write_metrics(split, result.to_json(), tag)
        save_predictions(
            run.predictions_file(split, tag), table, index, probs, targets, list(info.attributes)
        )
        result.saved_to, result.saved_as = str(run.path), metrics_file.name
    return result


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
