"""`faceattr export`: a model as one self-describing ONNX file, fp32 or int8.

The ONNX graph maps normalised pixels ``[B, 3, S, S]`` to logits ``[B, A]`` (dynamic batch);
the model's :class:`~faceattr.models.info.ModelInfo` (attributes, preprocessing, thresholds,
TTA, licence) goes into the file's metadata with the export's provenance, so the file alone is
enough to predict and evaluate. Test-time augmentation stays outside the graph (the Predictor
applies it), so ``--tta`` works on an exported model as on the original.

After writing, the export checks itself on real images: the largest probability change
against PyTorch and how many decisions flip at the model's thresholds. int8 (static
quantization, QDQ, per-channel, calibrated on real aligned faces) is also compared with fp32
on a held-out split when one is given, and refused when it loses more than
``max_accuracy_drop`` points of mean accuracy.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from faceattr.config import (
    EXPORT_CALIBRATION_IMAGES,
    EXPORT_CHECK_IMAGES,
    EXPORT_FORMATS,
    EXPORT_MAX_ACCURACY_DROP,
    DataConfig,
)
from faceattr.errors import FaceAttrError, UsageError
from faceattr.extras import require
from faceattr.fileio import TEMP_SUFFIX, Inputs, atomic_write_bytes, check_output, sha256_of
from faceattr.metrics import MetricsReport, compute_metrics, defined
from faceattr.models.digest import with_onnx_metadata
from faceattr.models.file import ModelFile, ModelRef
from faceattr.models.info import FORMAT_VERSION, METADATA_KEY, ModelInfo, check_tta
from faceattr.progress import NullProgress, Progress
from faceattr.utils import JsonResult, json_key

OPSET = 18


class ExportRefused(FaceAttrError):
    """int8 lost too much accuracy: nothing was written (exit code 1)."""


@dataclass
class ExportCheck(JsonResult):
    """The exported file against PyTorch on the same images."""

    images: int
    source: str  # which images, e.g. "celeba valid split"
    max_abs_probability_diff: float
    decisions_differ: int  # (image, attribute) decisions that differ at the model's thresholds
    decisions: int


class AccuracyChange(TypedDict):
    """Mean accuracy in points of fp32 and int8, and what int8 loses."""

    fp32: float
    int8: float
    drop: float


class AttributeDrop(TypedDict):
    name: str
    drop: float  # points of accuracy


@dataclass
class Int8Comparison(JsonResult):
    """int8 against fp32 on a held-out split (``int8_vs_fp32``)."""

    split: str
    images: int
    at_half: AccuracyChange = field(metadata=json_key("at_0.5"))  # at threshold 0.5
    tuned: AccuracyChange  # at the model's thresholds
    worst_attribute: AttributeDrop  # the attribute whose accuracy drops most (tuned)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: ``faceattr export --json`` (docs/formats.md)."""

    model: str  # the source model file
    out: str  # the ONNX file written
    format: str  # "onnx"
    precision: str  # "fp32" or "int8"
    opset: int
    tta: str
    weights_stored_as_fp16: int  # weight tensors stored as float16
    check: ExportCheck
    # int8 only: the comparison, None when no held-out split was given (not measured).
    int8_vs_fp32: Int8Comparison | None = None
    # int8 of a quantization-aware trained model: tensors quantized with the scales it
    # learned (the others calibrated); None: not such a model.
    learned_scales: int | None = None
    nbytes: int = 0  # the file's size ("bytes")
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "out": self.out,
            "format": self.format,
            "precision": self.precision,
            "opset": self.opset,
            "tta": self.tta,
            "weights_stored_as_fp16": self.weights_stored_as_fp16,
            "check": self.check.to_json(),
        }
        if self.precision == "int8":
            out["int8_vs_fp32"] = self.comparison_json()
            out["learned_scales"] = self.learned_scales
        out["bytes"], out["seconds"] = self.nbytes, self.seconds
        return out

    def comparison_json(self) -> dict[str, Any] | None:
        return None if self.int8_vs_fp32 is None else self.int8_vs_fp32.to_json()


def default_output(source: ModelFile, int8: bool) -> Path:
    """RUN/model.onnx (model-int8.onnx) for a run directory, FILE.onnx beside a file."""
    if source.is_default:
        raise UsageError(
            "Exporting the default model needs `out=FILE.onnx` (it would land inside the "
            "installed package otherwise)."
        )
    stem = source.path.stem + ("-int8" if int8 else "")
    return source.path.with_name(stem + ".onnx")


def _torch_to_onnx(source: ModelFile, dest: Path, tta: str) -> ModelInfo:
    """Write the fp32 graph of ``source`` to ``dest`` (metadata added later); its info."""
    import torch

    model, info = source.load(device="cpu")
    model.tta = "none"  # TTA stays outside the graph
    x = torch.zeros(2, 3, info.img_size, info.img_size)
    batch = torch.export.Dim("batch", min=1)
    chatter = io.StringIO()  # the exporter prints its steps on stdout
    with contextlib.redirect_stdout(chatter), torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            str(dest),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    return replace(info, tta=tta)


def store_weights_fp16(path: Path, *, exact_only: bool = True, min_size: int = 1024) -> int:
    """Store the float32 weights of the ONNX file ``path`` as float16, each behind a Cast to
    float32: all of them, or with ``exact_only`` those float16 holds exactly.

    The graph still computes in float32 (ONNX Runtime folds the casts when it loads the file),
    so exact conversions change nothing; the others round each weight to 11 significant bits
    (the default model: probabilities within 0.003; at 0.5, 2 of 57,120 decisions changed). The file
    shrinks by up to half. Tensors under ``min_size`` values stay as they are. Returns the
    number of tensors converted.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    taken = {init.name for init in graph.initializer}
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        w16 = w.astype(np.float16)
        if w.size < min_size or (exact_only and not np.array_equal(w16.astype(np.float32), w)):
            continue
        name, stored = init.name, init.name + "__fp16"
        while stored in taken:
            stored += "_"
        taken.add(stored)
        init.CopyFrom(numpy_helper.from_array(w16, stored))
        casts.append(helper.make_node("Cast", [stored], [name], to=TensorProto.FLOAT))
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return len(casts)


def _set_metadata(path: Path, entries: dict[str, str]) -> None:
    path.write_bytes(with_onnx_metadata(path.read_bytes(), entries, producer="faceattr"))


class _Calibration:
    """onnxruntime's CalibrationDataReader over normalised pixel batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def _quantize(fp32: Path, dest: Path, pixels: np.ndarray, info: ModelInfo) -> int:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on ``pixels``; the
    inputs of a quantization-aware trained model's layers keep the scales it learned
    (:mod:`faceattr.models.qat`). Returns how many tensors kept learned scales."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from faceattr.data.transforms import Preprocessing
    from faceattr.models.qat import QAT_KEY, input_overrides

    prep = Preprocessing.from_info(info)
    if info.tta == "flip":  # calibrate on what the model will see: both orientations
        pixels = np.concatenate([pixels, pixels[..., ::-1]])
    batches = [prep.normalize(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]
    pre = dest.with_name(dest.name + ".pre.onnx")
    # The quantizer logs advice on the root logger; faceattr prints its own summary.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        try:
            quant_pre_process(str(fp32), str(pre))  # shape inference + clean-up, as ORT advises
        except Exception:
            # ORT's symbolic shape inference cannot follow every graph (an ensemble's resized
            # member inputs); ONNX's own shape inference is enough for the quantizer.
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        learned = info.extra.get(QAT_KEY) or []
        overrides = input_overrides(onnx.load(str(pre)).graph, learned) if learned else {}
        quantize_static(
            str(pre),
            str(dest),
            _Calibration(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": overrides},
        )
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    return len(overrides)


def _sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _table_pixels(table: Any, info: ModelInfo, data: DataConfig, progress: Progress,
                  what: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """uint8 pixels and targets of every readable image of ``table``."""
    from faceattr.data.batches import iter_pixel_batches
    from faceattr.data.transforms import Preprocessing

    pixels, targets = [], []
    progress.start(what, total=len(table))
    for batch in iter_pixel_batches(
        table, Preprocessing.from_info(info), batch_size=64, workers=data.workers, data=data
    ):
        pixels.append(batch.images)
        targets.append(batch.targets)
        progress.advance(len(batch) + len(batch.skipped))
    progress.finish()
    if not pixels or not sum(len(p) for p in pixels):
        raise UsageError(f"None of the images for {what} could be read.")
    return np.concatenate(pixels), np.concatenate(targets)


def _bundled_faces(info: ModelInfo) -> np.ndarray:
    """The face(s) of the bundled example photo, aligned, and their mirror images."""
    from importlib import resources

    from faceattr.data.images import load_image
    from faceattr.data.transforms import Preprocessing
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import faces_detected

    photo = load_image(Path(str(resources.files("faceattr") / "assets" / "astronaut.jpg")))
    crops = [f.crop for f in faces_detected(photo, create_detector(None)) if f.crop]
    pixels = Preprocessing.from_info(info).batch(crops)
    return np.concatenate([pixels, pixels[..., ::-1]])


def _change(fp32: MetricsReport, int8: MetricsReport) -> AccuracyChange:
    fa = defined(fp32["mean_accuracy"], "mean accuracy") * 100
    ia = defined(int8["mean_accuracy"], "mean accuracy") * 100
    return {"fp32": round(fa, 3), "int8": round(ia, 3), "drop": round(fa - ia, 3)}


def compare_int8(fp32: np.ndarray, int8: np.ndarray, targets: np.ndarray, info: ModelInfo,
                 split: str) -> Int8Comparison:  # fmt: skip
    """Mean accuracy of fp32 and int8 (at 0.5 and at the model's thresholds), in points, and
    the attribute whose accuracy drops most."""
    names, tuned = info.attributes, info.thresholds or 0.5
    a_half, b_half = (compute_metrics(p, targets, names, thresholds=0.5) for p in (fp32, int8))
    a, b = (compute_metrics(p, targets, names, thresholds=tuned) for p in (fp32, int8))
    drops = {
        name: (a["per_attribute"][name]["accuracy"] or 0.0)
        - (b["per_attribute"][name]["accuracy"] or 0.0)
        for name in names
    }
    worst = max(drops, key=lambda n: drops[n])
    return Int8Comparison(
        split=split,
        images=len(targets),
        at_half=_change(a_half, b_half),
        tuned=_change(a, b),
        worst_attribute={"name": worst, "drop": round(drops[worst] * 100, 3)},
    )


def self_check(reference: np.ndarray, exported: np.ndarray, thresholds: np.ndarray,
               source: str) -> ExportCheck:  # fmt: skip
    """How far the exported model's probabilities are from PyTorch's on the same images."""
    return ExportCheck(
        images=int(len(reference)),
        source=source,
        max_abs_probability_diff=float(np.abs(reference - exported).max()),
        decisions_differ=int(((reference >= thresholds) != (exported >= thresholds)).sum()),
        decisions=int(reference.size),
    )


def export_model(
    model: ModelRef,
    out: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "onnx",
    int8: bool = False,
    data: DataConfig | None = None,
    calibration_images: int = EXPORT_CALIBRATION_IMAGES,
    eval_split: str | None = None,
    eval_images: int | None = EXPORT_CHECK_IMAGES,
    max_accuracy_drop: float = EXPORT_MAX_ACCURACY_DROP,
    tta: str | None = None,
    fp16_weights: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a run directory, a ``.safetensors`` file or ``default``) to ONNX.

    ``fp16_weights`` stores an fp32 export's weights as float16 (half the file; the graph
    still computes in float32, and the self-check measures the change). Without it, only the
    weights float16 holds exactly are stored so.

    ``data`` names the real images used for int8 calibration (``calibration_images`` of its
    train split) and, with ``eval_split`` (e.g. ``valid``: the run's held-out identities),
    for the self-check and the fp32-vs-int8 comparison. Returns an :class:`ExportResult`.
    Nothing is written when a check fails: the file appears complete or not at all. An
    existing ``out`` is refused unless ``overwrite`` (the source, never).
    """
    require("torch", "onnx", "onnxscript", what="faceattr export")
    if fmt not in EXPORT_FORMATS:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("export format", fmt, EXPORT_FORMATS)
    if tta is not None:
        check_tta(tta)
    if int8 and data is None:
        raise UsageError(
            "`int8=True` needs real face images to calibrate on.",
            "Pass `calibration_root=DIR` (with `dataset=NAME`, default celeba): a few hundred "
            "aligned faces of its train split are used.",
        )
    if eval_split is not None and data is None:
        raise UsageError("`eval_split=SPLIT` needs `calibration_root=DIR` (the dataset to use).")
    if int8 and fp16_weights:
        raise UsageError(
            "`fp16_weights=True` is for fp32 exports; `int8=True` stores int8 weights already."
        )
    progress = progress or NullProgress()
    started = time.perf_counter()
    source = ModelFile.resolve(model)
    if source.format == "onnx":
        raise UsageError(f"{source.path} is already an ONNX file; export a .safetensors model.")
    out_path = Path(out) if out is not None else default_output(source, int8)
    if out_path.suffix.lower() != ".onnx":
        raise UsageError(f"The output file must end in .onnx, got {out_path}.")
    # Never over the source; an existing file only with overwrite (checked before the work).
    sources = Inputs([source.path])
    check_output(out_path, what="ONNX model", inputs=sources, overwrite=overwrite)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # Named like atomic_open's temp files, so a killed export's are cleaned up like theirs.
    tmp = [out_path.parent / f".{out_path.name}.{secrets.token_hex(4)}.{k}{TEMP_SUFFIX}.onnx"
           for k in ("fp32", "int8")]  # fmt: skip
    try:
        return _export(
            source, out_path, tmp, int8=int8, data=data,
            calibration_images=calibration_images, eval_split=eval_split,
            eval_images=eval_images, max_accuracy_drop=max_accuracy_drop, tta=tta,
            fp16_weights=fp16_weights, progress=progress, started=started,
            overwrite=overwrite, sources=sources,
        )  # fmt: skip
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)


def _export(source: ModelFile, out_path: Path, tmp: list[Path], *, int8: bool,
            data: DataConfig | None, calibration_images: int, eval_split: str | None,
            eval_images: int | None, max_accuracy_drop: float, tta: str | None,
            fp16_weights: bool, progress: Progress, overwrite: bool, sources: Inputs,
            started: float) -> ExportResult:  # fmt: skip
    from faceattr.engine.evaluate import split_table
    from faceattr.inference.predictor import Predictor
    from faceattr.models.qat import QAT_KEY

    fp32_tmp, int8_tmp = tmp
    base_info = source.info
    info = replace(base_info, tta=tta or base_info.tta)

    # Real images: calibration (train split) and the held-out check split.
    calib = calib_note = None
    check = check_targets = None
    check_source = ""
    if data is not None:
        if int8 or eval_split is None:  # without a held-out split, these are the check too
            table = split_table(source.path, info, data, "train")
            rows = _sample_rows(len(table), calibration_images)
            what = "reading calibration images" if int8 else "reading images to check on"
            calib, _ = _table_pixels(table.subset(rows), info, data, progress, what)
        if int8 and calib is not None:
            calib_note = {"dataset": data.dataset, "split": "train", "images": int(len(calib))}
        if eval_split is not None:
            table = split_table(source.path, info, data, eval_split)
            if eval_images is not None:
                table = table.subset(_sample_rows(len(table), eval_images))
            check, check_targets = _table_pixels(table, info, data, progress,
                                                 f"reading the {eval_split} split")  # fmt: skip
            check_source = f"{data.dataset} {eval_split} split"
        elif calib is not None:
            check, check_source = calib, f"{data.dataset} train images"
    if check is None:
        check, check_source = _bundled_faces(info), "the bundled example photo"

    progress.log(f"Exporting {source.path} to ONNX (opset {OPSET})...")
    _torch_to_onnx(source, fp32_tmp, info.tta)
    # int8 quantizes the plain fp32 graph; an fp32 export stores fp16 weights as such.
    stored_fp16 = 0 if int8 else store_weights_fp16(fp32_tmp, exact_only=not fp16_weights)
    stub = {METADATA_KEY: info.to_json(), "faceattr_format": str(FORMAT_VERSION)}
    _set_metadata(fp32_tmp, stub)
    written = fp32_tmp
    learned = None
    if int8:
        assert calib is not None
        progress.log(f"Quantizing to int8, calibrated on {len(calib)} real faces...")
        learned = _quantize(fp32_tmp, int8_tmp, calib, info)
        if not info.extra.get(QAT_KEY):
            learned = None
        _set_metadata(int8_tmp, stub)
        written = int8_tmp

    reference = Predictor(source, backend="torch", device="cpu", tta=info.tta)
    exported = Predictor(ModelFile(written), backend="onnx", device="cpu")
    ref_probs = reference.probabilities_of_pixels(check)
    out_probs = exported.probabilities_of_pixels(check)
    result = ExportResult(
        model=str(source.path),
        out=str(out_path),
        format="onnx",
        precision="int8" if int8 else "fp32",
        opset=OPSET,
        tta=info.tta,
        weights_stored_as_fp16=stored_fp16,
        check=self_check(ref_probs, out_probs, reference.thresholds, check_source),
        learned_scales=learned,
    )
    if int8 and check_targets is not None:  # else (int8) not measured: no held-out split
        fp32 = Predictor(ModelFile(fp32_tmp), backend="onnx", device="cpu")
        fp32_probs = fp32.probabilities_of_pixels(check)
        comparison = compare_int8(fp32_probs, out_probs, check_targets, info, str(eval_split))
        result.int8_vs_fp32 = comparison
        worst = max(comparison.at_half["drop"], comparison.tuned["drop"])
        if worst > max_accuracy_drop:
            raise ExportRefused(
                f"int8 loses {worst:.2f} points of mean accuracy against fp32 on "
                f"{comparison.images} {eval_split} images (at 0.5: "
                f"{comparison.at_half['drop']:.2f}, tuned: {comparison.tuned['drop']:.2f}; "
                f"`max_accuracy_drop={max_accuracy_drop}`); nothing was written.",
                "Export fp32 (without `int8=True`), calibrate on more images "
                "(`calibration_images=N`), or allow more with `max_accuracy_drop=POINTS`.",
            )

    provenance = {
        "source": source.path.name,
        "source_sha256": sha256_of(source.path),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": result.precision,
        "opset": OPSET,
        "weights_stored_as_fp16": stored_fp16,
        "calibration": calib_note,
        "check": result.check.to_json(),
        "int8_vs_fp32": result.comparison_json(),
        "learned_scales": learned,
    }
    run = source.run
    if run is not None:
        provenance["run"] = run.path.name
    final_info = replace(info, extra={**info.extra, "export": provenance})
    entries = {METADATA_KEY: final_info.to_json(), "faceattr_format": str(FORMAT_VERSION)}
    blob = with_onnx_metadata(written.read_bytes(), entries, producer="faceattr")
    atomic_write_bytes(out_path, blob, what="ONNX model", overwrite=overwrite, inputs=sources)
    result.nbytes = out_path.stat().st_size
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def iter_summary_lines(result: ExportResult) -> Iterator[str]:
    """Human-readable lines of an export's result (for the CLI)."""
    c = result.check
    size = result.nbytes / 1e6
    yield (
        f"Wrote {result.out} ({result.precision}, {size:.1f} MB, opset "
        f"{result.opset}, TTA {result.tta}) in {result.seconds} s."
    )
    if result.weights_stored_as_fp16:
        yield f"{result.weights_stored_as_fp16} weight tensors stored as float16."
    yield (
        f"Check against PyTorch on {c.images} images ({c.source}): largest probability "
        f"change {c.max_abs_probability_diff:.2e}; {c.decisions_differ} of "
        f"{c.decisions} decisions differ at the model's thresholds."
    )
    if result.learned_scales is not None:
        yield (
            f"Quantization-aware trained: {result.learned_scales} layer inputs keep the scales "
            "the run learned"
            + ("." if result.learned_scales else
               " in none: what the model file records does not match its graph, so all were "
               "calibrated.")
        )  # fmt: skip
    cmp = result.int8_vs_fp32
    if result.precision == "int8" and cmp is None:
        yield (
            'int8 accuracy not measured: pass `eval_split="valid"` (held-out images) to '
            "compare it with fp32."
        )
    elif cmp is not None:
        for v, label in ((cmp.at_half, "at 0.5"), (cmp.tuned, "at the tuned thresholds")):
            yield (
                f"Mean accuracy {label} on {cmp.images} {cmp.split} images: fp32 "
                f"{v['fp32']:.2f}, int8 {v['int8']:.2f} (drop {v['drop']:.2f} points)."
            )
        w = cmp.worst_attribute
        yield f"Worst attribute: {w['name']} (drop {w['drop']:.2f} points)."
