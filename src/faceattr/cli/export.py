"""`faceattr export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faceattr.cli.common import (
    RichProgress,
    as_flags,
    err,
    handle_errors,
    literal,
    out,
    print_json,
)
from faceattr.cli.options import (
    JsonOption,
    OverwriteOption,
    TtaOverride,
    choice,
    data_config,
    setting,
)
from faceattr.cli.settings import CacheOption, DatasetOption, DataWorkers, LabelsOption
from faceattr.config import (
    EXPORT_CALIBRATION_IMAGES,
    EXPORT_CHECK_IMAGES,
    EXPORT_FORMATS,
    EXPORT_MAX_ACCURACY_DROP,
)


@handle_errors
def export_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="A run directory, a .safetensors model file, or 'default'.")
    ],
    fmt: Annotated[
        str, typer.Option("--format", **choice(EXPORT_FORMATS), help="Output format (onnx).")
    ] = "onnx",
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantize to int8 (static, calibrated on --calibration-root's faces): about "
            "2x faster and 4x smaller. Refused when it costs more than --max-accuracy-drop.",
        ),
    ] = False,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the .onnx file (default: model.onnx, or model-int8.onnx, "
            "beside the model).",
        ),
    ] = None,
    calibration_root: Annotated[
        Path | None,
        setting(
            "data.root",
            "--calibration-root",
            help="Dataset folder with real aligned faces: int8 calibrates on its train "
            "split; with --eval-split the export is checked on its held-out images.",
        ),
    ] = None,
    dataset: DatasetOption = None,
    labels: LabelsOption = None,
    calibration_images: Annotated[
        int, typer.Option(help=f"Train images int8 calibrates on ({EXPORT_CALIBRATION_IMAGES}).")
    ] = EXPORT_CALIBRATION_IMAGES,
    eval_split: Annotated[
        str | None,
        typer.Option(
            help="Held-out split (valid or test) of --calibration-root to check the export "
            "on and to compare int8 with fp32 (a run's valid split is its held-out identities)."
        ),
    ] = None,  # fmt: skip
    eval_images: Annotated[
        int,
        typer.Option(
            help=f"At most this many --eval-split images (0: all; {EXPORT_CHECK_IMAGES})."
        ),
    ] = EXPORT_CHECK_IMAGES,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            help="Refuse int8 when it loses more than this many points of mean accuracy "
            f"against fp32, at 0.5 or at the tuned thresholds ({EXPORT_MAX_ACCURACY_DROP}).",
        ),
    ] = EXPORT_MAX_ACCURACY_DROP,
    tta: TtaOverride = None,
    fp16_weights: Annotated[
        bool,
        typer.Option(
            "--fp16-weights",
            help="Store the weights as float16: half the file, still computed in float32 (the "
            "check against PyTorch shows the change). Not with --int8.",
        ),
    ] = False,
    overwrite: OverwriteOption = False,
    workers: DataWorkers = None,
    cache: CacheOption = None,
    json_out: JsonOption = False,
) -> None:
    """Export a model to one self-describing ONNX file (fp32 or int8) for fast prediction.

    The file carries the model's attributes, preprocessing, thresholds, TTA and licence, so
    `faceattr predict --model FILE.onnx` and `faceattr eval FILE.onnx` need nothing else.
    After writing, the export is checked against PyTorch on real images. Needs the train
    extra: pip install "faceattr\\[train]".

    \b
    Example:
      faceattr export runs/lite0 --int8 --calibration-root data/celeba --eval-split valid
    """
    from faceattr.data.splits import resolve_split_name
    from faceattr.engine.export import export_model, iter_summary_lines

    data = data_config(ctx) if calibration_root is not None else None
    result = export_model(
        model,
        out_file,
        fmt=fmt,
        int8=int8,
        data=data,
        calibration_images=calibration_images,
        eval_split=None if eval_split is None else resolve_split_name(eval_split),
        eval_images=eval_images or None,
        max_accuracy_drop=max_accuracy_drop,
        tta=tta,
        fp16_weights=fp16_weights,
        overwrite=overwrite,
        progress=RichProgress(quiet=json_out),
    )
    if json_out:
        print_json(result.to_json())
        return
    for line in iter_summary_lines(result):
        (out if line.startswith("Wrote") else err).print(literal(as_flags(line)), highlight=False)
