"""`faceattr eval`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, pct, print_json
from faceattr.cli.options import (
    BackendOption,
    JsonOption,
    SubgroupsOption,
    TtaOverride,
    data_config,
    setting,
)
from faceattr.cli.settings import CacheOption, DatasetOption, DataWorkers, LabelsOption
from faceattr.config import EVAL_BATCH_SIZE

if TYPE_CHECKING:
    from faceattr.engine.evaluate import Evaluation
    from faceattr.subgroups import SubgroupAccuracy

SUMMARY_METRICS = (
    "mean_accuracy", "mean_balanced_accuracy", "strict_accuracy", "majority_accuracy",
    "macro_precision", "macro_recall", "macro_f1", "mean_average_precision",
)  # fmt: skip


@handle_errors
def eval_command(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Argument(help="A run directory, a .safetensors or .onnx model file, or 'default'."),
    ],
    backend: BackendOption = "auto",
    dataset: DatasetOption = None,
    root: Annotated[Path | None, setting("data.root", "--root", help="Dataset folder.")] = None,
    labels: LabelsOption = None,
    split: Annotated[str, typer.Option(help="train, valid (val), test or all.")] = "test",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="One decision threshold for all attributes, instead of the model's tuned ones."
        ),
    ] = None,  # fmt: skip
    tta: TtaOverride = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = EVAL_BATCH_SIZE,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    workers: DataWorkers = None,
    cache: CacheOption = None,
    fail_under: Annotated[
        float | None,
        typer.Option(help="Exit with code 1 when the summary metric is below this (a CI gate)."),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Summary metric that --fail-under checks.")
    ] = "mean_accuracy",
    subgroups: SubgroupsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Evaluate a model on a dataset split: per-attribute precision/recall/F1, mean and strict
    accuracy.

    In a run directory, writes metrics-<split>.json and predictions-<split>.npz (used by
    `faceattr report`).

    \b
    Examples:
      faceattr eval runs/celebnet --root data/celeba --split test --json --fail-under 0.9
      faceattr eval default --root data/celeba --split valid \\
          --subgroups "Male|Heavy_Makeup,Wearing_Lipstick; Young|Male"
    """
    from faceattr.data.splits import resolve_split_name
    from faceattr.engine.evaluate import evaluate_model
    from faceattr.errors import UsageError, unknown_name_error

    if metric not in SUMMARY_METRICS:
        raise unknown_name_error("metric", metric, SUMMARY_METRICS)
    if root is None:
        raise UsageError("Missing --root: the dataset folder to evaluate on.")
    split = resolve_split_name(split)
    result = evaluate_model(
        model,
        data_config(ctx),
        split,
        backend=backend,
        batch_size=batch_size,
        device=device,
        threshold=threshold,
        tta=tta,
        progress=RichProgress(quiet=json_out),
        subgroups=subgroups,
    )
    if json_out:
        print_json(result.to_json())
    else:
        render_metrics(result)
        if result.subgroups:
            render_subgroups(result.subgroups)
    if fail_under is not None:
        value = result.metric(metric)
        if value is None or value < fail_under:
            err.print(
                f"[bold red]FAIL:[/] {metric} {value if value is None else round(value, 4)} "
                f"is below --fail-under {fail_under}",
                highlight=False,
            )
            raise typer.Exit(1)
        err.print(f"[green]PASS:[/] {metric} {value:.4f} >= {fail_under}", highlight=False)


def render_metrics(result: Evaluation) -> None:
    m = result.metrics
    table = Table(title=f"{literal(result.split)} split: {m['n_images']} images",
                  title_justify="left")  # fmt: skip
    for col in ("attribute", "acc", "prec", "recall", "F1", "bal acc", "AP", "pos", "thr"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for name, a in m["per_attribute"].items():
        table.add_row(
            literal(name),  # a CSV dataset's attributes are its header's names
            pct(a["accuracy"], 1),
            pct(a["precision"], 1),
            pct(a["recall"], 1),
            pct(a["f1"], 1),
            pct(a["balanced_accuracy"], 1),
            pct(a["average_precision"], 1),
            str(a["positives"]),
            f"{a['threshold']:.2f}",
        )
    out.print(table)
    at_half: Mapping[str, Any] | None = m.get("at_threshold_0.5")
    summary = Table(show_header=True, title="summary (%)", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    if at_half:
        summary.add_column("at 0.5", justify="right")
    for key in SUMMARY_METRICS:
        row = [key.replace("_", " "), pct(result.metric(key))]
        if at_half:
            row.append(pct(at_half.get(key)) if key in at_half else "")
        summary.add_row(*row)
    out.print(summary)
    if result.saved_to:
        err.print(f"Saved {literal(result.saved_as)} to {literal(result.saved_to)}",
                  highlight=False)  # fmt: skip


def render_subgroups(results: list[SubgroupAccuracy], run: str | None = None) -> None:
    """One table per spec: the target overall and in each group (``few``: marked)."""
    few_seen = False
    for r in results:
        title = f"{literal(r.target)} by {literal(', '.join(r.by))} (threshold {r.threshold:.2f})"
        table = Table(title=f"{literal(run)}: {title}" if run else title, title_justify="left")
        table.add_column(literal(", ".join(r.by)))
        for col in ("images", "pos", "acc", "95% interval", "FPR", "FNR"):
            table.add_column(col, justify="right")
        for g in [r.overall, *r.groups]:
            few_seen |= g.few and g.images > 0
            name = ", ".join("yes" if on else "no" for on in g.where.values()) or "all"
            if g.few and g.images:
                name += " (few)"
            elif g.group == r.worst_group:
                name = f"[bold]{name} (worst)[/]"
            interval = (
                "-" if g.accuracy_low is None
                else f"{pct(g.accuracy_low, 1)}-{pct(g.accuracy_high, 1)}"
            )  # fmt: skip
            table.add_row(name, str(g.images), str(g.positives), pct(g.accuracy, 1), interval,
                          pct(g.false_positive_rate, 1), pct(g.false_negative_rate, 1))  # fmt: skip
        out.print(table)
        if r.gap is not None:
            out.print(f"gap: the worst group ({literal(r.worst_group)}) is "
                      f"{100 * r.gap:.1f} points below all images", highlight=False)  # fmt: skip
        if r.ungrouped:
            out.print(f"{r.ungrouped} images with an unknown label of "
                      f"{literal(', '.join(r.by))} are in no group.", highlight=False)  # fmt: skip
    if results:
        few = (f"(few): under {results[0].min_images} images, never the worst group; its 95% "
               "interval shows how little its accuracy says. " if few_seen else "")  # fmt: skip
        out.print(
            f"{few}FPR: of a group's images without the attribute, the share called present; "
            "FNR: of those with it, the share missed.",
            highlight=False,
        )
