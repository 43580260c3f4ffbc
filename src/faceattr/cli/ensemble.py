"""`faceattr ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, pct, print_json
from faceattr.cli.options import JsonOption, OverwriteOption, choice, data_config, setting
from faceattr.cli.settings import CacheOption, DatasetOption, DataWorkers, LabelsOption
from faceattr.config import ENSEMBLE_DTYPES, THRESHOLD_METRICS, TTA_MODES

if TYPE_CHECKING:
    from faceattr.engine.ensemble import EnsembleResult
    from faceattr.thresholds import HeldOutScores


@handle_errors
def ensemble_command(
    ctx: typer.Context,
    models: Annotated[
        list[str],
        typer.Argument(help="Two or more run directories or .safetensors model files."),
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="The ensemble model file to write (.safetensors).")
    ],
    dataset: DatasetOption = None,
    root: Annotated[
        Path | None,
        setting(
            "data.root",
            "--root",
            help="Dataset folder: evaluate the members and the ensemble on --split and tune "
            "the ensemble's thresholds there (without it they stay at 0.5).",
        ),
    ] = None,
    labels: LabelsOption = None,
    split: Annotated[
        str,
        typer.Option(help="Held-out split to tune on (valid: the runs' identity-disjoint carve)."),
    ] = "valid",
    tta: Annotated[
        str,
        typer.Option(
            **choice(TTA_MODES),
            help="Test-time augmentation of the ensemble: none, or flip (2x the cost).",
        ),
    ] = "none",
    dtype: Annotated[
        str,
        typer.Option(**choice(ENSEMBLE_DTYPES), help="Weights in the file: float16 halves it."),
    ] = "float32",
    threshold_metric: Annotated[
        str | None,
        setting(
            "threshold_metric",
            "--threshold-metric",
            **choice(THRESHOLD_METRICS),
            help="What tuned thresholds maximise (default: as train, {default}).",
        ),
    ] = None,
    threshold_accuracy_drop: Annotated[
        float | None,
        setting(
            "threshold_accuracy_drop",
            "--threshold-accuracy-drop",
            help="balanced_accuracy/f1: a tuned threshold may cost its attribute at most this "
            "much accuracy against 0.5 (default: as train, {default}).",
        ),
    ] = None,
    overwrite: OverwriteOption = False,
    workers: DataWorkers = None,
    cache: CacheOption = None,
    json_out: JsonOption = False,
) -> None:
    """Combine trained models into one ensemble model file (their mean probability).

    The file works wherever a model does: predict, eval, export (one ONNX graph), index.
    Members may differ in architecture, input size and normalisation, but not in attributes
    or crop. With --root, each member and the ensemble are evaluated on the held-out split,
    the ensemble's thresholds are chosen there (tuned for --threshold-metric where that beats
    0.5 under cross-validation, else 0.5), and the summary shows the gain over the best member
    (tuned = balanced-accuracy thresholds tuned on one half of the images, scored on the
    other). Needs
    the train extra: pip install "faceattr\\[train]".

    \b
    Example:
      faceattr ensemble runs/lite0 runs/mbv2 --out ens.safetensors --root data/celeba
      faceattr export ens.safetensors && faceattr predict photo.jpg --model ens.onnx
    """
    from faceattr.data.splits import resolve_split_name
    from faceattr.engine.ensemble import make_ensemble

    data = data_config(ctx) if root is not None else None
    result = make_ensemble(
        models,
        out_file,
        data=data,
        split=resolve_split_name(split),
        tta=tta,
        dtype=dtype,
        threshold_metric=threshold_metric,
        max_accuracy_drop=threshold_accuracy_drop,
        overwrite=overwrite,
        progress=RichProgress(quiet=json_out),
    )
    if json_out:
        print_json(result.to_json())
        return
    if result.evaluated:
        render_scores(result)
    else:
        err.print("No --root: the ensemble's thresholds are 0.5.", highlight=False)
    out.print(f"Wrote {literal(result.out)}", highlight=False)


def render_scores(s: EnsembleResult) -> None:
    table = Table(
        title=f"{literal(s.split)} split: {s.images} images (tuned: two-fold)", title_justify="left"
    )
    for col in ("model", "acc @0.5", "bal acc @0.5", "acc tuned", "bal acc tuned"):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows: list[tuple[str, HeldOutScores]] = [(m["model"], m) for m in s.member_scores]
    if s.ensemble is not None:
        rows.append(("ensemble", s.ensemble))
    for name, r in rows:
        table.add_row(
            literal(name),
            pct(r["mean_accuracy_at_0.5"]),
            pct(r["mean_balanced_accuracy_at_0.5"]),
            pct(r["mean_accuracy_tuned_two_fold"]),
            pct(r["mean_balanced_accuracy_tuned_two_fold"]),
        )
    out.print(table)
    gain = 100 * s.gain_over_best_member
    err.print(f"Mean accuracy at 0.5: {gain:+.2f} points over the best member.", highlight=False)
    metric = (s.threshold_metric or "").replace("_", " ")
    tuned = ", ".join(s.tuned_attributes) or "none"
    err.print(
        f"Thresholds tuned for {metric} where that beat 0.5 under cross-validation: "
        f"{len(s.tuned_attributes)} attribute(s) ({tuned}); the others decide at 0.5.",
        highlight=False,
    )
