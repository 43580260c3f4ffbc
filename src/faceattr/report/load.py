"""What a report needs from run directories (config, history, metrics, predictions, model
file size), read through :class:`faceattr.runs.RunDir`.

Nothing here needs torch: a report is built from files only; the model is loaded later and
only for Grad-CAM.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import numpy as np
from safetensors import SafetensorError

from faceattr.errors import DataError, UsageError, command
from faceattr.metrics import AttributeMetrics, SavedMetrics
from faceattr.runs import RunDir

# Splits looked for when the user does not name one: the held-out test split first.
AUTO_SPLITS = ("test", "valid", "train", "all")
# Tensors in a state dict that are statistics, not learned parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def row_identities(
    images: Sequence[str] | np.ndarray, boxes: np.ndarray | None = None
) -> np.ndarray:
    """``[N]`` str: an identity per evaluated face that two evaluations agree on.

    The image name, plus the face box (``boxes`` ``[N, 4]``, exact) when given; a name that
    still repeats gets ``#2``, ``#3``, ... in order, so every row has its own key (files
    written before boxes were saved then pair the faces of a photo in the split's order).
    """
    keys = [str(name) for name in images]
    if boxes is not None:  # repr of a float round-trips: equal boxes, and only they, match
        keys = [
            f"{k}@{','.join(repr(float(v)) for v in b)}" for k, b in zip(keys, boxes, strict=True)
        ]
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        n = seen[k] = seen.get(k, 0) + 1
        out.append(k if n == 1 else f"{k}#{n}")
    return np.asarray(out, dtype=str)


@dataclass
class Predictions:
    """Per-face results of ``faceattr eval`` (``predictions-<split>.npz``).

    ``probs`` ``[N, A]`` float32, ``targets`` ``[N, A]`` float32 0/1 with NaN unknown,
    ``images`` ``[N]`` names relative to ``image_dir``. ``rows`` ``[N]``: each face's
    position in the evaluated split; ``boxes`` ``[N, 4]``: its face box (left, top, right,
    bottom in image pixels) for datasets with several faces per photo (WFLW). Both are None
    in files written before they were saved (and ``boxes`` for one-face-per-image data).
    """

    images: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    attributes: list[str]
    image_dir: Path | None
    rows: np.ndarray | None = None
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def column(self, attribute: str) -> np.ndarray:
        return self.targets[:, self.attributes.index(attribute)]

    def box(self, i: int) -> tuple[float, float, float, float] | None:
        """The face box of row ``i`` in image pixels, or None (the whole image)."""
        if self.boxes is None:
            return None
        left, top, right, bottom = (float(v) for v in self.boxes[i])
        return left, top, right, bottom

    def identities(self, with_boxes: bool = True) -> np.ndarray:
        """``[N]`` identities of the rows (:func:`row_identities`); ``with_boxes=False`` keys on
        image names only (to pair with a file that has no boxes)."""
        return row_identities(self.images, self.boxes if with_boxes else None)

    def face_numbers(self) -> np.ndarray:
        """``[N]`` int: k for the k-th face (from 0, in split order, as faces are numbered
        everywhere) of a photo with several rows, -1 for a photo with one."""
        names = [str(name) for name in self.images]
        counts, seen = Counter(names), Counter[str]()
        out = np.full(len(names), -1, dtype=np.int64)
        for i, name in enumerate(names):
            if counts[name] > 1:
                out[i] = seen[name]
                seen[name] += 1
        return out

    def names(self) -> list[str]:
        """A label per row: the image name, with ``(face k)`` where a photo has several."""
        faces = self.face_numbers()
        return [f"{n} (face {k})" if k >= 0 else str(n)
                for n, k in zip(self.images, faces, strict=True)]  # fmt: skip


@dataclass
class RunData:
    """Everything a report uses from one run directory, for one evaluated ``split``."""

    name: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, float | None]]
    split: str
    metrics: SavedMetrics  # metrics-<split>.json
    predictions: Predictions | None
    model_path: Path | None
    parameters: int | None
    trainable_parameters: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def attributes(self) -> list[str]:
        return list(self.metrics.get("per_attribute", {}))

    @property
    def thresholds(self) -> np.ndarray:
        """``[A]`` decision thresholds the metrics were computed at."""
        thr = self.metrics.get("thresholds")
        if thr is None or len(thr) != len(self.attributes):
            return np.array([a.get("threshold", 0.5) for a in self.per_attribute.values()])
        return np.asarray(thr, dtype=np.float64)

    @property
    def per_attribute(self) -> dict[str, AttributeMetrics]:
        return self.metrics.get("per_attribute", {})

    def _history_values(self, key: str) -> list[float]:
        """The finite values of column ``key`` of ``history.csv``, one per epoch that has one."""
        return [v for r in self.history if _finite(v := r.get(key))]

    @property
    def train_seconds(self) -> float | None:
        values = self._history_values("seconds")
        return float(sum(values)) if values else None

    @property
    def images_per_second(self) -> float | None:
        """Median training throughput over epochs (the first epoch pays for warm-up)."""
        values = self._history_values("images_per_second")
        return float(np.median(values)) if values else None

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the highest validation mean accuracy (the first of equals)."""
        best: tuple[float, float | None] | None = None
        for r in self.history:
            acc = r.get("val_mean_accuracy")
            if _finite(acc) and (best is None or acc > best[0]):
                best = (acc, r.get("epoch"))
        return None if best is None or best[1] is None else int(best[1])

    @property
    def dataset_root(self) -> str | None:
        return self.config.get("data", {}).get("root") or self.metrics.get("root") or None

    def eval_command(self, split: str | None = None) -> str:
        """The command (in backticks) that writes this run's metrics and predictions for
        ``split``."""
        return _eval_command(self.path, self.dataset_root or "DATASET_DIR", split or self.split)


def _eval_command(run: Path, root: str, split: str) -> str:
    return command(
        "`faceattr eval {run} --root {root} --split {split}`", run=run, root=root, split=split
    )


def _finite(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and math.isfinite(v)


class FileParameters(NamedTuple):
    """Learned parameters stored in a model file: all of them, and the attribute head's."""

    total: int
    head: int


def count_file_parameters(model_file: Path) -> FileParameters:
    """The parameter counts of a ``.safetensors`` model file, from its header alone.

    Only tensor shapes are read (no weights), so this is instant even for large models.
    Normalisation statistics (running means etc.) are buffers, not parameters, and are left
    out. (:func:`faceattr.models.count_parameters` counts a loaded model instead.)
    """
    from safetensors import safe_open

    total = head = 0
    with safe_open(str(model_file), framework="numpy") as f:
        names = f.keys()
        for name in names:
            if name.endswith(_BUFFER_SUFFIXES):
                continue
            n = math.prod(f.get_slice(name).get_shape())
            total += n
            if name.startswith("head."):
                head += n
    return FileParameters(total, head)


# What reading a predictions file that is damaged or not faceattr's raises (numpy's and the
# zip reader's errors, and read_predictions' own ValueError for arrays of the wrong shape).
PREDICTION_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile)


def read_predictions(path: Path) -> Predictions:
    """Load ``predictions-<split>.npz`` written by ``faceattr eval``; one of
    :data:`PREDICTION_ERRORS` when it is damaged or its arrays disagree in shape."""
    with np.load(path, allow_pickle=False) as z:
        targets = z["targets"].astype(np.float32)
        targets[targets < 0] = np.nan  # -1 marks an unknown label
        image_dir = str(z["image_dir"]) if "image_dir" in z else ""
        images = z["image"].astype(str)
        # row and box came later: older files have neither (then images are the identity).
        rows = z["row"].astype(np.int64) if "row" in z else None
        boxes = z["box"].astype(np.float64) if "box" in z else None
        probs = z["probs"].astype(np.float32)
        attributes = [str(a) for a in np.atleast_1d(z["attributes"])]
        n, a = len(images), len(attributes)
        shapes = {"probs": probs.shape, "targets": targets.shape, "image": images.shape,
                  "row": None if rows is None else rows.shape}  # fmt: skip
        wanted = {"probs": (n, a), "targets": (n, a), "image": (n,), "row": (n,)}
        for key, shape in shapes.items():
            if shape is not None and shape != wanted[key]:
                raise ValueError(f"{key} has shape {shape}, expected {wanted[key]}")
        if boxes is not None and boxes.shape != (len(images), 4):
            raise ValueError(f"box has shape {boxes.shape}, expected ({len(images)}, 4)")
        return Predictions(
            images=images,
            probs=probs,
            targets=targets,
            attributes=attributes,
            image_dir=Path(image_dir) if image_dir else None,
            rows=rows,
            boxes=boxes,
        )


def _check_run_dir(path: Path) -> RunDir:
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(
            f"Run directory {str(path)!r} does not exist.",
            "Pass the directory a `faceattr train` run wrote (its `out=DIR`).",
        )
    if path.is_file():
        raise UsageError(
            f"{path} is a file; `faceattr report` reads run directories.",
            "Pass the directory `faceattr train --out` wrote (it holds its config, history, "
            "metrics and model files).",
        )
    run = RunDir(path)
    if not run.is_run():
        raise UsageError(
            f"{path} is not a run directory (no {run.config_file.name}).",
            "Pass the directory `faceattr train --out` wrote.",
        )
    return run


def choose_split(runs: list[RunDir], split: str | None) -> str:
    """The split every run has metrics for: ``split`` itself, or the first of test/valid/...

    Raises :class:`DataError` with the exact ``faceattr eval`` commands that would make the
    missing files.
    """
    have = {run: set(run.splits()) for run in runs}
    if split is None:
        for candidate in AUTO_SPLITS:
            if all(candidate in s for s in have.values()):
                return candidate
        split = "test"
    missing = [p for p, s in have.items() if split not in s]
    if missing:
        cmds = []
        for run in missing:
            root = read_config(run).get("data", {}).get("root") or "DATASET_DIR"
            cmds.append(_eval_command(run.path, root, split))
        names = ", ".join(str(run.path) for run in missing)
        found = sorted(set().union(*have.values()))
        also = f" (splits with metrics: {', '.join(found)})" if found else ""
        raise DataError(
            f"No metrics for the {split} split in {names}{also}.",
            "Evaluate first, which writes metrics-<split>.json and predictions-<split>.npz:\n  "
            + "\n  ".join(cmds),
        )
    return split


def run_names(paths: list[Path]) -> list[str]:
    """Labels for runs: the directory name, with parents added until the labels are unique."""
    resolved = [p.resolve() for p in paths]
    for depth in range(1, 6):
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}:{p.name}" for i, p in enumerate(resolved)]


def read_config(run: RunDir) -> dict[str, Any]:
    """The run's ``config.json`` as stored, after checking that each value a report reads has
    its TrainConfig type (runs of other versions may have other keys); DataError if not."""
    from faceattr.config import config_problems

    config = run.config_dict()
    problems = config_problems(config, strict=False)
    if problems:
        raise DataError(
            f"{run.config_file} is not a faceattr run's settings: {'; '.join(problems)}.",
            "It is the run's resolved settings, written by `faceattr train`; restore it from "
            "a backup.",
        )
    return config


def load_run(path: str | Path, split: str, name: str | None = None) -> RunData:
    """Read the run directory ``path`` for the evaluated ``split`` (metrics must exist)."""
    run = _check_run_dir(Path(path))
    path = run.path
    config = read_config(run)
    metrics_file = run.metrics_file(split)
    if not metrics_file.exists():
        choose_split([run], split)  # raises with the eval command
    root = config.get("data", {}).get("root") or "DATASET_DIR"
    try:
        metrics = run.read_metrics(split)
    except DataError as exc:
        raise DataError(
            exc.message, "Write it again with " + _eval_command(run.path, root, split) + "."
        ) from exc
    notes: list[str] = []
    predictions = None
    pred_file = run.predictions_file(split)
    if pred_file.exists():
        try:
            predictions = read_predictions(pred_file)
        except PREDICTION_ERRORS as exc:
            notes.append(f"Could not read {pred_file.name} ({exc}); per-image views skipped.")
        if predictions is not None and predictions.attributes != list(metrics["per_attribute"]):
            notes.append(
                f"{pred_file.name} and {metrics_file.name} list different attributes (written "
                "by different evaluations?); per-image views skipped. Re-run `faceattr eval`."
            )
            predictions = None
    model_path = run.model_file()
    parameters = trainable = None
    if model_path is not None:
        try:
            parameters, head = count_file_parameters(model_path)
            frozen = config.get("model", {}).get("freeze_backbone") and not config.get("unfreeze")
            trainable = head if frozen else parameters
        except (OSError, ValueError, SafetensorError) as exc:
            notes.append(f"Could not read the header of {model_path.name} ({exc}).")
    data = RunData(
        name=name or path.resolve().name,
        path=path,
        config=config,
        history=run.read_history(),
        split=split,
        metrics=metrics,
        predictions=predictions,
        model_path=model_path,
        parameters=parameters,
        trainable_parameters=trainable,
        notes=notes,
    )
    if not pred_file.exists():
        data.notes.append(
            f"No per-image predictions for the {split} split, so subgroup analysis, "
            "calibration, correlations, the gallery and Grad-CAM are left out. Make them with "
            f"{data.eval_command()}."
        )
    if split == "valid" and metrics.get("threshold_source") == "tuned":
        data.notes.append(
            "These are validation metrics and the decision thresholds were tuned on the same "
            "images, so they are slightly optimistic; evaluate a test split for unbiased numbers."
        )
    return data


def load_runs(paths: list[str | Path], split: str | None = None) -> list[RunData]:
    """Read several run directories for one common split (see :func:`choose_split`)."""
    if not paths:
        raise UsageError(
            "No run directory given.", "Pass one or more: `faceattr report RUN_DIR...`."
        )
    runs = [_check_run_dir(Path(p)) for p in paths]
    if len({run.path.resolve() for run in runs}) != len(runs):
        raise UsageError("The same run directory was given twice.")
    chosen = choose_split(runs, split)
    dirs = [run.path for run in runs]
    return [load_run(d, chosen, n) for d, n in zip(dirs, run_names(dirs), strict=True)]
