"""Read what a run directory holds (config, history, metrics, predictions, model file size).

Nothing here needs torch: a report is built from files only; the model is loaded later and
only for Grad-CAM.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.errors import DataError, UsageError

# Splits looked for when the user does not name one: the held-out test split first.
AUTO_SPLITS = ("test", "valid", "train", "all")
# Tensors in a state dict that are statistics, not learned parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class Predictions:
    """Per-image results of ``faceattr eval`` (``predictions-<split>.npz``).

    ``probs`` ``[N, A]`` float32, ``targets`` ``[N, A]`` float32 0/1 with NaN unknown,
    ``images`` ``[N]`` names relative to ``image_dir``.
    """

    images: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    attributes: list[str]
    image_dir: Path | None

    def __len__(self) -> int:
        return len(self.images)

    def column(self, attribute: str) -> np.ndarray:
        return self.targets[:, self.attributes.index(attribute)]


@dataclass
class RunData:
    """Everything a report uses from one run directory, for one evaluated ``split``."""

    name: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, float]]
    split: str
    metrics: dict[str, Any]
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
    def per_attribute(self) -> dict[str, dict[str, Any]]:
        return self.metrics.get("per_attribute", {})

    @property
    def train_seconds(self) -> float | None:
        values = [r.get("seconds") for r in self.history]
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(sum(values)) if values else None

    @property
    def images_per_second(self) -> float | None:
        """Median training throughput over epochs (the first epoch pays for warm-up)."""
        values = [r.get("images_per_second") for r in self.history]
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.median(values)) if values else None

    @property
    def best_epoch(self) -> int | None:
        scored = [r for r in self.history if _finite(r.get("val_mean_accuracy"))]
        if not scored:
            return None
        return int(max(scored, key=lambda r: r["val_mean_accuracy"])["epoch"])

    @property
    def dataset_root(self) -> str | None:
        return self.config.get("data", {}).get("root") or self.metrics.get("root") or None

    def eval_command(self, split: str | None = None) -> str:
        """The command that writes this run's metrics and predictions for ``split``."""
        root = self.dataset_root or "DATASET_DIR"
        return (
            f"faceattr eval {shlex.quote(str(self.path))} --root {shlex.quote(str(root))} "
            f"--split {split or self.split}"
        )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def read_history(path: Path) -> list[dict[str, float]]:
    """``history.csv`` -> one dict per epoch (numbers as float, empty cells as None)."""
    if not path.exists():
        return []
    rows: list[dict[str, float]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value not in ("", None) else None
                except ValueError:
                    parsed[key] = None
            rows.append(parsed)
    return rows


def count_parameters(model_file: Path) -> tuple[int, int]:
    """(all parameters, parameters of the attribute head) from a ``.safetensors`` header.

    Only the JSON header is read (no tensors), so this is instant even for large models.
    Normalisation statistics (running means etc.) are buffers, not parameters, and are left
    out.
    """
    with model_file.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    total = head = 0
    for name, entry in header.items():
        if name == "__metadata__" or name.endswith(_BUFFER_SUFFIXES):
            continue
        n = math.prod(entry.get("shape", []))
        total += n
        if name.startswith("head."):
            head += n
    return total, head


def read_predictions(path: Path) -> Predictions:
    """Load ``predictions-<split>.npz`` written by ``faceattr eval``."""
    with np.load(path, allow_pickle=False) as z:
        targets = z["targets"].astype(np.float32)
        targets[targets < 0] = np.nan  # -1 marks an unknown label
        image_dir = str(z["image_dir"]) if "image_dir" in z else ""
        return Predictions(
            images=z["image"].astype(str),
            probs=z["probs"].astype(np.float32),
            targets=targets,
            attributes=[str(a) for a in z["attributes"]],
            image_dir=Path(image_dir) if image_dir else None,
        )


def available_splits(run_dir: Path) -> list[str]:
    """Splits with a ``metrics-<split>.json`` in ``run_dir``."""
    return sorted(p.stem[len("metrics-") :] for p in run_dir.glob("metrics-*.json"))


def _check_run_dir(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(
            f"Run directory {str(path)!r} does not exist.",
            "Pass the --out directory of a `faceattr train` run.",
        )
    if path.is_file():
        raise UsageError(
            f"{path} is a file; `faceattr report` reads run directories.",
            "Pass the directory `faceattr train --out` wrote (it holds config.json, "
            "history.csv, metrics-*.json and model.safetensors).",
        )
    if not (path / "config.json").exists():
        raise UsageError(
            f"{path} is not a run directory (no config.json).",
            "Pass the directory `faceattr train --out` wrote.",
        )
    return path


def choose_split(run_dirs: list[Path], split: str | None) -> str:
    """The split every run has metrics for: ``split`` itself, or the first of test/valid/...

    Raises :class:`DataError` with the exact ``faceattr eval`` commands that would make the
    missing files.
    """
    have = {p: set(available_splits(p)) for p in run_dirs}
    if split is None:
        for candidate in AUTO_SPLITS:
            if all(candidate in s for s in have.values()):
                return candidate
        split = "test"
    missing = [p for p, s in have.items() if split not in s]
    if missing:
        cmds = []
        for p in missing:
            cfg = _read_json(p / "config.json")
            root = cfg.get("data", {}).get("root") or "DATASET_DIR"
            cmds.append(
                f"faceattr eval {shlex.quote(str(p))} --root {shlex.quote(str(root))} "
                f"--split {split}"
            )
        names = ", ".join(str(p) for p in missing)
        found = sorted(set().union(*have.values()))
        also = f" (splits with metrics: {', '.join(found)})" if found else ""
        raise DataError(
            f"No metrics for the {split} split in {names}{also}.",
            "Evaluate first, which writes metrics-<split>.json and predictions-<split>.npz:\n  "
            + "\n  ".join(cmds),
        )
    return split


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read {path}: {exc}", "Re-run the command that wrote it.") from exc


def run_names(paths: list[Path]) -> list[str]:
    """Labels for runs: the directory name, with parents added until the labels are unique."""
    resolved = [p.resolve() for p in paths]
    for depth in range(1, 6):
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}:{p.name}" for i, p in enumerate(resolved)]


def load_run(path: str | Path, split: str, name: str | None = None) -> RunData:
    """Read the run directory ``path`` for the evaluated ``split`` (metrics must exist)."""
    path = _check_run_dir(Path(path))
    config = _read_json(path / "config.json")
    metrics_file = path / f"metrics-{split}.json"
    if not metrics_file.exists():
        choose_split([path], split)  # raises with the eval command
    metrics = _read_json(metrics_file)
    notes: list[str] = []
    predictions = None
    pred_file = path / f"predictions-{split}.npz"
    if pred_file.exists():
        try:
            predictions = read_predictions(pred_file)
        except (OSError, KeyError, ValueError) as exc:
            notes.append(f"Could not read {pred_file.name} ({exc}); per-image views skipped.")
        if predictions is not None and predictions.attributes != list(metrics["per_attribute"]):
            notes.append(
                f"{pred_file.name} and {metrics_file.name} list different attributes (written "
                "by different evaluations?); per-image views skipped. Re-run `faceattr eval`."
            )
            predictions = None
    model_path = next(
        (p for p in (path / "model.safetensors", path / "last.safetensors") if p.exists()), None
    )
    parameters = trainable = None
    if model_path is not None:
        try:
            parameters, head = count_parameters(model_path)
            frozen = config.get("model", {}).get("freeze_backbone") and not config.get("unfreeze")
            trainable = head if frozen else parameters
        except (OSError, ValueError, struct.error):
            notes.append(f"Could not read the header of {model_path.name}.")
    run = RunData(
        name=name or path.resolve().name,
        path=path,
        config=config,
        history=read_history(path / "history.csv"),
        split=split,
        metrics=metrics,
        predictions=predictions,
        model_path=model_path,
        parameters=parameters,
        trainable_parameters=trainable,
        notes=notes,
    )
    if not pred_file.exists():
        run.notes.append(
            f"No per-image predictions for the {split} split, so subgroup analysis, "
            "calibration, correlations, the gallery and Grad-CAM are left out. Make them with "
            f"`{run.eval_command()}`."
        )
    if split == "valid" and metrics.get("threshold_source") == "tuned":
        run.notes.append(
            "These are validation metrics and the decision thresholds were tuned on the same "
            "images, so they are slightly optimistic; evaluate a test split for unbiased numbers."
        )
    return run


def load_runs(paths: list[str | Path], split: str | None = None) -> list[RunData]:
    """Read several run directories for one common split (see :func:`choose_split`)."""
    if not paths:
        raise UsageError("No run directory given.", "Usage: faceattr report RUN_DIR...")
    dirs = [_check_run_dir(Path(p)) for p in paths]
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise UsageError("The same run directory was given twice.")
    chosen = choose_split(dirs, split)
    return [load_run(d, chosen, n) for d, n in zip(dirs, run_names(dirs), strict=True)]
