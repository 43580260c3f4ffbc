"""Distillation (``faceattr distill``, docs/distill.md): a teacher's logits as soft targets.

The teacher (a model file, a run directory or an ensemble, in either format: only its outputs
are used, through a :class:`~faceattr.inference.predictor.Predictor`) runs once per image, on
the image as the teacher's own preprocessing makes it, un-augmented; its logits are kept in
``<prepared cache base>/teachers/<dataset>-<digest>-<tta>.npz`` (names, size and mtime of each
source file, logits), so another run with the same teacher, a resumed run or a larger sample
reads them instead of running the teacher again. Another teacher (another digest) is another
file; a damaged file is rebuilt; every write is atomic.

``distill.unlabeled`` folders add face images without labels: aligned crops as they are, or
photos whose faces are detected and aligned first (the predictor's detector and alignment;
the crops are kept in ``<base>/unlabeled/<key>/`` and reused). Their labels are unknown, so
the label loss skips them and only the teacher teaches them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.config import EVAL_BATCH_SIZE, TrainConfig
from faceattr.data.table import AttributeTable
from faceattr.errors import DataError, ModelError, UsageError, command
from faceattr.progress import Progress

TEACHERS = "teachers"  # folder of teacher caches under the prepared cache's base
UNLABELED = "unlabeled"  # folder of aligned crops of unlabeled photos
FORMAT = 1  # of a teacher cache file


def resolve_teacher(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its teacher named for good: ``default`` or an absolute path, and the
    digest of the weights the run learns from (recorded in config.json)."""
    from faceattr.models.file import ModelFile, is_default

    ref = cfg.distill.teacher
    if not ref:
        raise UsageError("No teacher given.", "Pass `distill.teacher=MODEL`.")
    found = ModelFile.for_backend(ref, "auto")
    name = "default" if is_default(ref) else str(Path(ref).expanduser().resolve())
    return replace(cfg, distill=replace(cfg.distill, teacher=name, teacher_digest=found.digest))


@dataclass
class DistillResult:
    """What a distillation run did: ``faceattr distill --json`` (docs/formats.md): the
    training's :class:`~faceattr.engine.fit.FitResult` fields, and ``teacher``: its name,
    digest and validation metrics beside the student's."""

    fit: Any  # FitResult
    teacher: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.fit.to_json(), "teacher": self.teacher}


def distill(cfg: TrainConfig, *, progress: Progress | None = None) -> DistillResult:
    """Train ``cfg`` (whose ``distill.teacher`` is set) as a student of its teacher: a new
    run, or (``cfg.out`` holding one) use :func:`resume_distill`."""
    from faceattr.engine.fit import fit

    return _result(fit(resolve_teacher(cfg), progress=progress))


def resume_distill(run_dir: str | Path, *, progress: Progress | None = None) -> DistillResult:
    """Continue a distillation run (its teacher cache is read again, not recomputed)."""
    from faceattr.engine.fit import resume

    return _result(resume(run_dir, progress=progress))


def _result(fit: Any) -> DistillResult:
    from faceattr.runs import RunDir

    run = RunDir(fit.run_dir)
    d = run.config().distill
    teacher: dict[str, Any] = {"name": d.teacher, "sha256": d.teacher_digest}
    path = run.metrics_file("valid", "-teacher")
    if path.is_file():
        m = run.read_metrics("valid-teacher")
        half = m.get("at_threshold_0.5", m)
        teacher["valid"] = {
            "mean_accuracy": half.get("mean_accuracy"),
            "mean_balanced_accuracy": m.get("mean_balanced_accuracy"),
            "strict_accuracy": half.get("strict_accuracy"),
        }
    return DistillResult(fit, teacher)


@dataclass
class Teacher:
    """A run's teacher: its name and digest, and its logits ``[N, A]`` for every row of the
    training table (NaN where the teacher could not read the image); called with a batch's
    table rows (``Batch.index``) it gives their logits."""

    name: str
    digest: str
    logits: Any  # torch.Tensor [N, A] float32
    valid_metrics: dict[str, Any] | None = None

    def __call__(self, index: Any) -> Any:
        return self.logits[index]


def _open(cfg: TrainConfig, attributes: list[str]) -> tuple[Any, list[int]]:
    """The teacher's Predictor and, for each of the run's attributes, its column; errors
    before any training when the teacher changed or lacks attributes."""
    from faceattr.inference.predictor import Predictor

    d = cfg.distill
    predictor = Predictor(d.teacher, batch_size=EVAL_BATCH_SIZE)
    if d.teacher_digest and predictor.file.digest != d.teacher_digest:
        raise ModelError(
            f"The teacher {d.teacher} has other weights than when this run started (digest "
            f"{predictor.file.digest[:12]}..., recorded {d.teacher_digest[:12]}...).",
            "Put the original teacher back to resume, or start a new run with "
            + command("`faceattr distill {teacher} ...`", teacher=d.teacher)
            + ".",
        )
    have = list(predictor.attributes)
    missing = [a for a in attributes if a not in have]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        shown = ", ".join(missing[:6]) + more
        raise UsageError(
            f"The teacher {d.teacher} predicts {len(have)} attributes; {len(missing)} of the "
            f"{len(attributes)} this run learns are not among them: {shown}.",
            "Distill only the teacher's attributes (`data.attributes=...`), or choose a teacher "
            "trained on these.",
        )
    return predictor, [have.index(a) for a in attributes]


def prepare_teacher(
    cfg: TrainConfig,
    train_table: AttributeTable,
    valid_table: AttributeTable,
    progress: Progress,
    *,
    write_metrics: Any = None,
) -> tuple[AttributeTable, Teacher]:
    """The training table with the unlabeled images added, and the :class:`Teacher` with its
    logits for each of its rows. ``write_metrics(metrics)``, when given, is called once with
    the teacher's metrics on the validation split (at its own thresholds)."""
    import torch

    from faceattr.inference.predictor import sigmoid
    from faceattr.metrics import metrics_report

    predictor, cols = _open(cfg, list(train_table.attributes))
    progress.log(
        f"Teacher {predictor.file.name} ({predictor.info.arch}, {predictor.backend.name} backend, "
        f"digest {predictor.file.digest[:12]}); alpha {cfg.distill.alpha:g}, "
        f"temperature {cfg.distill.temperature:g}."
    )
    extra = unlabeled_table(cfg, train_table, progress)
    parts = [teacher_logits(predictor, train_table, cfg, progress, "training split")]
    if extra is not None:
        parts.append(teacher_logits(predictor, extra, cfg, progress, "unlabeled images",
                                    use_prepared=False))  # fmt: skip
        train_table = concat_tables(train_table, extra)
    logits = np.concatenate(parts)[:, cols]
    valid_metrics = None
    if write_metrics is not None:
        v = teacher_logits(predictor, valid_table, cfg, progress, "validation split")[:, cols]
        ok = np.isfinite(v).all(axis=1)
        thresholds = None
        if predictor.info.thresholds:
            thresholds = np.asarray(predictor.info.thresholds, dtype=np.float64)[cols]
        valid_metrics = dict(metrics_report(
            sigmoid(v[ok]), valid_table.labels[ok], list(valid_table.attributes), thresholds,
            None,
        ))  # fmt: skip
        valid_metrics.update(split="valid", model=predictor.file.name, role="teacher")
        write_metrics(valid_metrics)
    teacher = Teacher(
        name=predictor.file.name,
        digest=predictor.file.digest,
        logits=torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)),
        valid_metrics=valid_metrics,
    )
    return train_table, teacher


# ----------------------------------------------------------------------------- the cache


def teacher_cache_file(cfg: TrainConfig, digest: str, tta: str) -> Path:
    """Where a teacher's logits for ``cfg``'s dataset are kept (beside the prepared cache)."""
    from faceattr.data.cache import cache_base

    return cache_base(cfg.data) / TEACHERS / f"{cfg.data.dataset}-{digest[:32]}-{tta}.npz"


def _read_cache(path: Path, attributes: list[str], progress: Progress) -> dict[str, np.ndarray]:
    """A teacher cache's arrays; empty when there is none, or (said) when it is damaged or
    of another teacher's attributes, so that it is rebuilt."""
    empty = {
        "names": np.zeros(0, dtype=str),
        "sizes": np.zeros(0, dtype=np.int64),
        "mtimes": np.zeros(0, dtype=np.int64),
        "logits": np.zeros((0, len(attributes)), dtype=np.float32),
    }
    if not path.exists():
        return empty
    try:
        with np.load(path, allow_pickle=False) as f:
            got = {k: f[k] for k in ("names", "sizes", "mtimes", "logits", "meta")}
        meta = json.loads(str(got.pop("meta")))
        n = len(got["names"])
        problem = (
            "another format" if meta.get("format") != FORMAT
            else "other attributes" if meta.get("attributes") != attributes
            else "arrays of different lengths"
            if not (len(got["sizes"]) == len(got["mtimes"]) == n == len(got["logits"]))
            else "a wrong shape" if got["logits"].shape != (n, len(attributes))
            else None
        )  # fmt: skip
    except Exception as exc:  # a truncated or foreign file: zipfile, ValueError, KeyError...
        problem = f"unreadable: {type(exc).__name__}: {exc}"[:200]
    if problem:
        progress.log(f"The teacher cache {path} is damaged ({problem}); rebuilding it.")
        return empty
    return got


def _write_cache(path: Path, arrays: dict[str, np.ndarray], attributes: list[str]) -> None:
    from faceattr.fileio import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"format": FORMAT, "attributes": attributes})
    with atomic_open(path, "wb", what="teacher cache") as f:
        np.savez(f, meta=np.array(meta), names=arrays["names"], sizes=arrays["sizes"],
                 mtimes=arrays["mtimes"], logits=arrays["logits"])  # fmt: skip


def teacher_logits(
    predictor: Any,
    table: AttributeTable,
    cfg: TrainConfig,
    progress: Progress,
    what: str,
    *,
    use_prepared: bool = True,
) -> np.ndarray:
    """The teacher's logits ``[N, A]`` (all its attributes) for the rows of ``table``: read
    from its cache where a row's file has the recorded size and mtime, the rest computed
    (un-augmented, the teacher's own preprocessing; a matching prepared cache is read when
    ``use_prepared``) and added to the cache. NaN rows: images that could not be read."""
    from faceattr.data.batches import iter_pixel_batches
    from faceattr.data.cache import stat_sources

    attributes = list(predictor.attributes)
    paths = np.array([os.path.abspath(p) for p in table.paths], dtype=str)
    sizes, mtimes = stat_sources(list(paths))
    file = teacher_cache_file(cfg, predictor.file.digest, predictor.tta)
    stored = _read_cache(file, attributes, progress)
    import pandas as pd

    where = pd.Index(stored["names"]).get_indexer(paths) if len(stored["names"]) else None
    out = np.full((len(table), len(attributes)), np.nan, dtype=np.float32)
    if where is not None:
        hit = where >= 0
        hit[hit] &= (stored["sizes"][where[hit]] == sizes[hit]) & (
            stored["mtimes"][where[hit]] == mtimes[hit]
        )
        out[hit] = stored["logits"][where[hit]]
    else:
        hit = np.zeros(len(table), dtype=bool)
    todo = np.flatnonzero(~hit)
    if len(todo) == 0:
        progress.log(f"Teacher outputs for the {what} ({len(table):,} images) read from {file}.")
        return out
    progress.log(
        f"Running the teacher on {len(todo):,} image(s) of the {what}"
        + (f" ({int(hit.sum()):,} read from its cache)" if hit.any() else "")
        + "."
    )
    sub = table.subset(todo)
    progress.start(f"teacher: {what}", total=len(sub))
    batches = iter_pixel_batches(
        sub,
        predictor.preprocessing,
        batch_size=predictor.batch_size,
        workers=cfg.data.workers,
        data=cfg.data if use_prepared else None,
        progress=progress,
    )
    for batch in batches:
        if len(batch):
            out[todo[batch.index]] = predictor.logits(batch.images)
        progress.advance(len(batch) + len(batch.skipped))
    progress.finish()
    # The cache keeps every row it had that this table did not replace (other samples).
    keep = np.ones(len(stored["names"]), dtype=bool)
    if where is not None:
        keep[where[where >= 0]] = False
    _write_cache(file, {
        "names": np.concatenate([stored["names"][keep], paths]),
        "sizes": np.concatenate([stored["sizes"][keep], sizes]),
        "mtimes": np.concatenate([stored["mtimes"][keep], mtimes]),
        "logits": np.concatenate([stored["logits"][keep], out]).astype(np.float32),
    }, attributes)  # fmt: skip
    return out


# ----------------------------------------------------------------------------- unlabeled


def concat_tables(table: AttributeTable, extra: AttributeTable) -> AttributeTable:
    """``table`` with the rows of ``extra`` appended (their images named by absolute path,
    which ``table.image_dir / name`` leaves as it is)."""
    import pandas as pd

    frame = extra.frame.copy()
    frame["image"] = [os.path.abspath(p) for p in extra.paths]
    return replace(
        table,
        frame=pd.concat([table.frame, frame], ignore_index=True),
        labels=np.concatenate([table.labels, extra.labels]).astype(np.float32),
        notes=list(table.notes),
    )


def unlabeled_table(
    cfg: TrainConfig, train_table: AttributeTable, progress: Progress
) -> AttributeTable | None:
    """The ``distill.unlabeled`` images as a table with unknown labels (None: no folder)."""
    import pandas as pd

    from faceattr.data import table_boxes
    from faceattr.data.images import scan_images

    folders = cfg.distill.unlabeled
    if not folders:
        return None
    if table_boxes(train_table) is not None:
        raise UsageError(
            f"Unlabeled images cannot be added to a {cfg.data.dataset} run, whose rows are face "
            "boxes.",
            "Leave out `distill.unlabeled`, or distill on a dataset of aligned crops.",
        )
    files: list[Path] = []
    for folder in folders:
        found = scan_images(folder, recursive=True).files
        if not found:
            raise DataError(
                f"The unlabeled folder {folder} holds no images.",
                "Give a folder of face images (.jpg, .png, ...; subfolders are searched), or "
                "leave it out.",
            )
        files.extend(Path(p) for p in found)
    if cfg.distill.unlabeled_aligned:
        crops = [str(Path(p).resolve()) for p in files]
        progress.log(f"Unlabeled: {len(crops):,} aligned crop(s) from {len(folders)} folder(s).")
    else:
        crops = aligned_faces(cfg, files, progress)
    n = len(crops)
    frame = pd.DataFrame({
        "image": crops,
        "split": ["train"] * n,
        "identity": pd.array([pd.NA] * n, dtype="Int64"),
    })  # fmt: skip
    labels = np.full((n, len(train_table.attributes)), np.nan, dtype=np.float32)
    return AttributeTable(Path("/"), frame, labels, list(train_table.attributes),
                          dataset=train_table.dataset)  # fmt: skip


def aligned_faces(cfg: TrainConfig, files: list[Path], progress: Progress) -> list[str]:
    """Every face the detector finds in ``files``, aligned onto the CelebA template and saved
    as a PNG; reused while the photos keep their names, sizes and mtimes."""
    import hashlib

    from faceattr.data.cache import cache_base, stat_sources
    from faceattr.data.images import load_image
    from faceattr.errors import ImageReadError
    from faceattr.fileio import atomic_write_text
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import faces_detected

    names = sorted(str(p.resolve()) for p in files)
    sizes, mtimes = stat_sources(names)
    key = hashlib.blake2b(digest_size=16)
    key.update(json.dumps([names, sizes.tolist(), mtimes.tolist()]).encode())
    folder = cache_base(cfg.data) / UNLABELED / key.hexdigest()
    manifest = folder / "faces.json"
    if manifest.is_file():
        try:
            crops = [str(folder / c) for c in json.loads(manifest.read_text())["crops"]]
            if all(Path(c).is_file() for c in crops):
                progress.log(f"Unlabeled: {len(crops):,} aligned face(s) read from {folder}.")
                return crops
        except (OSError, ValueError, KeyError, TypeError):
            pass
        progress.log(f"The aligned faces in {folder} are damaged; detecting them again.")
        shutil.rmtree(folder, ignore_errors=True)
    detector = create_detector(None)
    temp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    crops, unreadable, faceless = [], 0, 0
    progress.start("detecting faces in unlabeled photos", total=len(names))
    for i, name in enumerate(names):
        try:
            image = load_image(name)
        except ImageReadError:
            unreadable += 1
            progress.advance(1)
            continue
        faces = faces_detected(image, detector)
        faceless += not faces
        for k, face in enumerate(faces):
            assert face.crop is not None
            crop = f"{i:07d}-{k}.png"
            face.crop.save(temp / crop)
            crops.append(crop)
        progress.advance(1)
    progress.finish()
    if not crops:
        shutil.rmtree(temp, ignore_errors=True)
        raise DataError(
            f"No face was found in the {len(names)} unlabeled image(s).",
            "Give photos with faces, or mark folders of aligned crops as such "
            "(`distill.unlabeled_aligned=True`).",
        )
    atomic_write_text(temp / "faces.json", json.dumps({"sources": names, "crops": crops}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temp, folder)
    said = [f"{unreadable} unreadable"] if unreadable else []
    said += [f"{faceless} without a face"] if faceless else []
    progress.log(
        f"Unlabeled: {len(crops):,} face(s) detected and aligned in {len(names):,} photo(s)"
        + (f" ({', '.join(said)})" if said else "")
        + f", kept in {folder}."
    )
    return [str(folder / c) for c in crops]
