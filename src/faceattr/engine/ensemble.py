"""`faceattr ensemble`: several trained models combined into one model file.

The file (``arch: "ensemble"``, see :mod:`faceattr.models.ensemble`) averages the members'
probabilities. With a dataset, the ensemble and each member are evaluated on its held-out
split (the members' identity-disjoint validation carve), the ensemble's decision thresholds
are tuned there as training tunes a single model's, and the summary says what the ensemble
gains over its best member.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceattr.config import ENSEMBLE_DTYPES, DataConfig, TrainConfig
from faceattr.errors import ModelError, UsageError
from faceattr.fileio import Inputs, check_output, sha256_of
from faceattr.models.file import ModelFile
from faceattr.progress import NullProgress, Progress
from faceattr.runs import RunDir
from faceattr.thresholds import HeldOutScores

SAVE_DTYPES = {name: getattr(torch, name) for name in ENSEMBLE_DTYPES}


class MemberScores(HeldOutScores):
    """One member's held-out scores, and which member (``model``, its file)."""

    model: str


@dataclass
class EnsembleResult:
    """What :func:`make_ensemble` wrote: ``faceattr ensemble --json`` (docs/formats.md)."""

    out: str  # the ensemble model file
    members: list[str]  # the members' model files, in order
    tta: str
    evaluated: bool = False  # members and ensemble scored on a held-out split, thresholds tuned
    thresholds: str | None = None  # not evaluated: what the thresholds are, in words
    # Evaluated only: the split, its images, the reader's notes and the scores.
    split: str | None = None
    images: int = 0
    notes: list[str] = field(default_factory=list)
    member_scores: list[MemberScores] = field(default_factory=list)
    ensemble: HeldOutScores | None = None
    gain_over_best_member: float = 0.0  # mean accuracy at 0.5 over the best member's
    threshold_metric: str | None = None
    threshold_accuracy_drop: float | None = None
    # The attributes whose tuned threshold beat 0.5 under cross-validation (the rest: 0.5).
    tuned_attributes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"out": self.out, "members": self.members, "tta": self.tta}
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds
        out["evaluated"] = self.evaluated
        if self.evaluated:
            out.update(
                split=self.split,
                images=self.images,
                notes=self.notes,
                member_scores=self.member_scores,
                ensemble=self.ensemble,
                gain_over_best_member=self.gain_over_best_member,
                threshold_metric=self.threshold_metric,
                threshold_accuracy_drop=self.threshold_accuracy_drop,
                tuned_attributes=self.tuned_attributes,
            )
        return out


def _source(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_of(path)}


def _common_carve(paths: Sequence[Path], data: DataConfig) -> tuple[DataConfig, list[str]]:
    """``data`` with the validation carve every member run used; notes on members whose
    carve cannot be checked. A ModelError when two runs held out different identities."""
    carves: dict[tuple[float, int], Path] = {}
    notes = []
    for p in paths:
        run = RunDir.containing(p)
        if run is None:
            notes.append(
                f"{p.name} is not in a run directory: its validation carve cannot be checked "
                f"(assumed the default, {data.valid_fraction:g} of the identities, seed "
                f"{data.split_seed})."
            )
            continue
        cfg = run.config()
        carves.setdefault((cfg.data.valid_fraction, cfg.data.split_seed), p)
    if len(carves) > 1:
        listed = "; ".join(f"{p} (fraction {f:g}, seed {s})" for (f, s), p in carves.items())
        raise ModelError(
            f"The members held out different validation identities: {listed}. Thresholds "
            "tuned on one carve would be tuned on another member's training images.",
            "Ensemble runs trained with the same validation carve (`data.valid_fraction=F` "
            "and split seed), or build the ensemble without a dataset (no `root=DIR`: "
            "thresholds stay at 0.5).",
        )
    if carves:
        (fraction, seed), _ = carves.popitem()
        data = replace(data, valid_fraction=fraction, split_seed=seed)
    return data, notes


def _evaluate(model: Path, data: DataConfig, split: str, tta: str, progress: Progress, what: str):
    from faceattr.engine.evaluate import predict_table, split_table
    from faceattr.inference.predictor import Predictor

    predictor = Predictor(model, backend="torch", device="cpu", tta=tta)
    table = split_table(predictor.path, predictor.info, data, split)
    probs, targets, index, _ = predict_table(
        predictor, table, data, progress=progress, description=what
    )
    return probs, targets, index, table.identity_groups(index)


def make_ensemble(
    models: Sequence[str | Path],
    out: str | Path,
    *,
    data: DataConfig | None = None,
    split: str = "valid",
    tta: str = "none",
    dtype: str = "float32",
    threshold_metric: str | None = None,
    max_accuracy_drop: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> EnsembleResult:
    """Combine ``models`` (run directories or model files) into the ensemble file ``out``.

    With ``data``, the members and the ensemble are evaluated on ``split``, and thresholds
    are chosen there (``threshold_metric``, ``max_accuracy_drop``: as in training, whose
    defaults they take; tuned only where that beats 0.5 under cross-validation,
    :func:`faceattr.thresholds.choose_thresholds`). Returns an :class:`EnsembleResult`: the
    file, its members, and with ``data`` their scores at 0.5 and with thresholds tuned
    two-fold (the honest estimate). An existing ``out`` is refused unless ``overwrite`` (a
    member, never).
    """
    from faceattr.models.ensemble import combine, ensemble_info
    from faceattr.models.info import check_tta
    from faceattr.models.io import load_model_file, save_model_file
    from faceattr.thresholds import choose_thresholds, held_out_scores

    progress = progress or NullProgress()
    out = Path(out)
    check_tta(tta)
    if dtype not in SAVE_DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(SAVE_DTYPES)}, not {dtype!r}.")
    if len(models) < 2:
        raise UsageError(
            f"An ensemble needs at least two models; got {len(models)}.",
            "List two or more run directories or model files.",
        )
    defaults = TrainConfig()
    metric = threshold_metric or defaults.threshold_metric
    drop = max_accuracy_drop if max_accuracy_drop is not None else defaults.threshold_accuracy_drop
    paths = [ModelFile.resolve(m).path for m in models]
    sources = Inputs(paths)

    def check() -> None:  # before the work, and again before the file is written
        check_output(out, what="ensemble model", inputs=sources, overwrite=overwrite)

    check()
    loaded = [load_model_file(p) for p in paths]
    info = ensemble_info([i for _, i in loaded], [_source(p) for p in paths], tta=tta)
    ensemble = combine([m for m, _ in loaded], [i for _, i in loaded], info)
    members = [str(p) for p in paths]
    if data is None:
        check()
        save_model_file(out, ensemble, info, dtype=SAVE_DTYPES[dtype])
        return EnsembleResult(out=str(out), members=members, tta=tta,
                              thresholds="0.5 (no dataset to tune them on)")  # fmt: skip

    data, notes = _common_carve(paths, data)
    for note in notes:
        progress.log(note)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".safetensors", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # Evaluated as it will be saved (fp16 weights included), through the file.
        save_model_file(tmp, ensemble, info, dtype=SAVE_DTYPES[dtype])
        probs, targets, index, groups = _evaluate(
            tmp, data, split, tta, progress, f"ensemble {split}"
        )
        attributes = list(info.attributes)
        member_scores: list[MemberScores] = []
        for p in paths:
            m_probs, _, m_index, _ = _evaluate(p, data, split, tta, progress, f"{p.name} {split}")
            if not np.array_equal(m_index, index):
                raise ModelError(f"{p} could not read the same {split} images as the others.")
            m = held_out_scores(m_probs, targets, attributes, max_accuracy_drop=drop)
            member_scores.append({"model": str(p), **m})
        scores = held_out_scores(probs, targets, attributes, max_accuracy_drop=drop)
        # Tuned where that beats 0.5 under cross-validation (by identity), else 0.5.
        thresholds, policy = choose_thresholds(
            probs, targets, attributes, metric=metric, max_accuracy_drop=drop, groups=groups
        )
        validation = {"split": split, "images": len(probs), **scores}
        extra = dict(info.extra, validation=validation, threshold_policy=policy)
        info = replace(info, thresholds=[float(t) for t in thresholds], extra=extra)
        check()
        save_model_file(out, ensemble, info, dtype=SAVE_DTYPES[dtype])
    finally:
        tmp.unlink(missing_ok=True)
    best = max(m["mean_accuracy_at_0.5"] for m in member_scores)
    return EnsembleResult(
        out=str(out),
        members=members,
        tta=tta,
        evaluated=True,
        split=split,
        images=len(probs),
        notes=notes,
        member_scores=member_scores,
        ensemble=scores,
        gain_over_best_member=round(scores["mean_accuracy_at_0.5"] - best, 4),
        threshold_metric=metric,
        threshold_accuracy_drop=drop,
        tuned_attributes=list(policy["tuned"]),
    )
