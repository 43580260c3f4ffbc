"""`faceattr predict`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, print_json
from faceattr.cli.options import (
    BackendOption,
    DetectorOption,
    MaxFacesOption,
    MinFaceSizeOption,
    MinScoreOption,
    NoDetectOption,
    OverwriteOption,
    TtaOverride,
    WorkersOption,
)
from faceattr.config import MIN_FACE_SIZE, PREDICT_BATCH_SIZE

if TYPE_CHECKING:
    from faceattr.inference.results import ImageResult


def expand_inputs(paths: list[str], recursive: bool) -> tuple[list[str], int]:
    """Files as given, folders expanded to their images, '-' read from stdin (one path a
    line); and how many folders could not be read (each said on stderr, as is each FIFO,
    socket or device passed over)."""
    from faceattr.data.images import expand_image_paths
    from faceattr.errors import UsageError

    given: list[str] = []
    for p in paths:
        if p == "-":
            given.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            given.append(p)
    # Missing files stay in the list: they become per-image errors, not a crash.
    result, empty, skipped = expand_image_paths(given, recursive)
    for folder in empty:
        err.print(f"[yellow]Warning:[/] no images in folder {literal(folder)}", highlight=False)
    for path, reason in skipped:
        err.print(f"[yellow]Skipped[/] {literal(path)}: {literal(reason)}", highlight=False)
    unreadable = sum(reason.startswith("a folder") for _, reason in skipped)
    if not result:
        raise UsageError(
            "No input images.", "Pass image files, folders, or - to read paths from stdin."
        )
    return result, unreadable


@handle_errors
def predict_command(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders, or - for stdin.")],
    model: Annotated[
        str,
        typer.Option(help="A run directory, a .safetensors or .onnx model file, or 'default'."),
    ] = "default",
    backend: BackendOption = "auto",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="One decision threshold for all attributes (default: the model's: 0.5, or "
            "a tuned value where tuning beat 0.5 on validation data)."
        ),
    ] = None,
    tta: TtaOverride = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one entry per image.")
    ] = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write one CSV row per face to this file.")
    ] = None,
    no_detect: NoDetectOption = False,
    detector: DetectorOption = None,
    min_score: MinScoreOption = None,
    min_face_size: MinFaceSizeOption = MIN_FACE_SIZE,
    max_faces: MaxFacesOption = None,
    save_crops: Annotated[
        Path | None, typer.Option(help="Write each face's aligned crop into this folder.")
    ] = None,
    annotate: Annotated[
        Path | None,
        typer.Option(help="Write each photo with boxes and top attributes drawn into this folder."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Recurse into folders.")
    ] = False,
    top: Annotated[int, typer.Option(help="Rows per face in the table (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Faces per model call.")] = PREDICT_BATCH_SIZE,
    workers: WorkersOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    max_pixels: Annotated[
        int | None, typer.Option(help="Refuse images larger than this many pixels.")
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Predict the attributes of the faces in images.

    Each face is found, aligned like CelebA's aligned crops and passed to the model (default:
    the model shipped with faceattr). An image with no face is a valid answer ("faces": []).

    \b
    Examples:
      faceattr predict photo.jpg
      faceattr predict photos/ --json
      ls *.jpg | faceattr predict - --csv out.csv
    """
    from faceattr.fileio import Inputs, atomic_open, check_output
    from faceattr.inference.detect import create_detector
    from faceattr.inference.draw import PictureWriter
    from faceattr.inference.predictor import Predictor, iter_predictions

    inputs, unreadable = expand_inputs(paths, recursive)
    # Outputs are checked before any work: never over an input, an existing file only with
    # --overwrite.
    sources = Inputs(inputs) if csv_file or save_crops or annotate else None
    if csv_file is not None:
        check_output(csv_file, what="predictions CSV", inputs=sources, overwrite=overwrite)
    pictures = PictureWriter(save_crops, annotate, images=inputs, overwrite=overwrite,
                             inputs=sources)  # fmt: skip
    face_detector = None
    if not no_detect:
        face_detector = create_detector(
            detector, min_score=min_score, min_face_size=min_face_size, max_faces=max_faces
        )
    predictor = Predictor(
        model, backend=backend, device=device, batch_size=batch_size, threshold=threshold,
        tta=tta,
    )  # fmt: skip
    predictions = iter_predictions(
        inputs,
        predictor,
        detector=face_detector,
        max_pixels=max_pixels,
        progress=RichProgress(quiet=len(inputs) <= 5),  # on stderr: --json output stays clean
        total=len(inputs),
        on_image=pictures if pictures.wanted else None,
        workers=workers,
    )
    if csv_file is None:
        results = list(predictions)
    else:  # rows go to disk as they come: a failure keeps them in CSV_FILE.partial
        with atomic_open(csv_file, "w", newline="", encoding="utf-8", what="predictions CSV",
                         keep_partial=True, overwrite=overwrite, inputs=sources) as fh:  # fmt: skip
            rows = CsvRows(fh, predictor.attributes)
            results = [rows.write(r) for r in predictions]
        err.print(f"Wrote {literal(csv_file)}", highlight=False)
    if json_out:
        print_json([r.to_json() for r in results])
    elif csv_file is None:
        for r in results:
            render_result(r, top)
    failed = [r for r in results if r.error]
    if failed:
        err.print(f"[bold red]{len(failed)} of {len(results)} image(s) could not be read.[/]")
    if unreadable:
        err.print(f"[bold red]{unreadable} folder(s) could not be read.[/]")
    if failed or unreadable:
        raise typer.Exit(1)


class CsvRows:
    """One CSV row per face (an image without faces or with an error gets one row too)."""

    def __init__(self, fh, attributes: list[str]) -> None:
        self.writer = csv.writer(fh)
        self.attributes = attributes
        # The probabilities, then the error, then (added later, so earlier columns keep
        # their places) the attributes present at the thresholds, most probable first.
        self.writer.writerow(
            ["image", "face", "x", "y", "w", "h", "score", *attributes, "error", "attributes"]
        )

    def write(self, r: ImageResult) -> ImageResult:
        attributes = self.attributes
        if r.error or not r.faces:
            self.writer.writerow([r.image, "", "", "", "", "", "", *[""] * len(attributes),
                                  r.error or "", ""])  # fmt: skip
            return r
        for i, face in enumerate(r.faces):
            probs = face.probabilities
            self.writer.writerow(
                [r.image, i, *face.box, face.score, *[probs[a] for a in attributes], "",
                 " ".join(face.attributes)]
            )  # fmt: skip
        return r


def render_result(r: ImageResult, top: int) -> None:
    if r.error:
        err.print(f"[bold red]{literal(r.image)}:[/] {literal(r.error)}", highlight=False)
        return
    if not r.faces:
        out.print(f"{literal(r.image)}: no face found", highlight=False)
        return
    for i, face in enumerate(r.faces):
        title = r.image if len(r.faces) == 1 else f"{r.image} face {i}"  # from 0, everywhere
        sources = face.threshold_sources or {}
        caption = threshold_caption(set(sources.values()))
        table = Table(title=literal(title), title_justify="left", caption=caption,
                      caption_justify="left")  # fmt: skip
        table.add_column("attribute")
        table.add_column("probability", justify="right")
        table.add_column("threshold", justify="right")
        table.add_column("present", justify="center")
        present = set(face.attributes)
        thresholds = face.thresholds or {}
        items = sorted(face.probabilities.items(), key=lambda kv: -kv[1])
        if top:
            items = items[:top]
        for name, p in items:
            mark = "[green]yes[/]" if name in present else ""
            style = "bold" if name in present else "dim"
            cell = threshold_cell(thresholds.get(name), sources.get(name))
            table.add_row(literal(name), f"{p:.3f}", cell, mark, style=style)
        out.print(table)


# How the table marks where a threshold came from (FaceResult.threshold_sources).
SOURCE_MARKS = {"tuned": "tuned", "0.5": "", "given": "--threshold"}


def threshold_cell(value: float | None, source: str | None) -> str:
    """The table's threshold cell: the value, and "tuned" or "--threshold" beside it."""
    if value is None:
        return ""
    mark = SOURCE_MARKS.get(source or "", "")
    return f"{value:.3f} {mark}".rstrip()


def threshold_caption(sources: set[str]) -> str:
    """What the threshold column means, under the table."""
    if sources == {"given"}:
        return "present: probability >= threshold (your --threshold)"
    if "tuned" in sources:
        return "present: probability >= threshold (tuned on validation data, or 0.5)"
    return "present: probability >= threshold (0.5: more likely than not)"
