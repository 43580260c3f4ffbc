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
from faceattr.cli.settings import (
    EndOption,
    EveryOption,
    FpsOption,
    FramesOption,
    MaxFramesOption,
    SourceOption,
    StartOption,
    TrackGapOption,
)
from faceattr.cli.videos import (
    VIDEO_CSV_COLUMNS,
    json_line,
    render_video,
    track_ended_line,
    video_csv_rows,
    video_outputs,
)
from faceattr.config import MIN_FACE_SIZE, PREDICT_BATCH_SIZE, VIDEO_TRACK_GAP
from faceattr.errors import UsageError

if TYPE_CHECKING:
    from faceattr.inference.results import ImageResult
    from faceattr.video.results import VideoResult


def expand_inputs(paths: list[str], recursive: bool) -> tuple[list[str], int]:
    """Files as given, folders expanded to their images and videos, '-' read from stdin (one
    path a line); and how many folders could not be read (each said on stderr, as is each
    FIFO, socket or device passed over)."""
    from faceattr.data.images import IMAGE_EXTENSIONS, expand_image_paths
    from faceattr.errors import UsageError
    from faceattr.video.probe import VIDEO_EXTENSIONS

    given: list[str] = []
    for p in paths:
        if p == "-":
            given.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            given.append(p)
    # Missing files stay in the list: they become per-image errors, not a crash.
    result, empty, skipped = expand_image_paths(
        given, recursive, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    )
    for folder in empty:
        err.print(f"[yellow]Warning:[/] no images in folder {literal(folder)}", highlight=False)
    for path, reason in skipped:
        err.print(f"[yellow]Skipped[/] {literal(path)}: {literal(reason)}", highlight=False)
    unreadable = sum(reason.startswith("a folder") for _, reason in skipped)
    if not result:
        raise UsageError(
            "No input images.",
            "Pass image or video files, folders, - to read paths from stdin, or --source.",
        )
    return result, unreadable


@handle_errors
def predict_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Image and video files, folders, or - for stdin.", show_default=False),
    ] = None,
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
        bool,
        typer.Option(
            "--json",
            help="Print a JSON array, one entry per image or video (--source: JSON lines).",
        ),
    ] = False,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", help="Write one CSV row per face (a video: per track) to this file."),
    ] = None,
    no_detect: NoDetectOption = False,
    detector: DetectorOption = None,
    min_score: MinScoreOption = None,
    min_face_size: MinFaceSizeOption = MIN_FACE_SIZE,
    max_faces: MaxFacesOption = None,
    save_crops: Annotated[
        Path | None,
        typer.Option(
            help="Write each face's aligned crop (a video: each track's best) into this folder."
        ),
    ] = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            help="Write each photo (STEM.jpg) and video (STEM.mp4, re-encoded) with "
            "boxes and top attributes drawn into this folder; a single video into "
            "this file when it ends in .mp4, .mkv, .mov or .webm."
        ),
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
    every: EveryOption = 1,
    start: StartOption = 0.0,
    end: EndOption = None,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = None,
    track_gap: TrackGapOption = VIDEO_TRACK_GAP,
    frames: FramesOption = False,
    source: SourceOption = None,
) -> None:
    """Predict the attributes of the faces in images and videos.

    Each face is found, aligned like CelebA's aligned crops and passed to the model (default:
    the model shipped with faceattr). An image with no face is a valid answer ("faces": []).
    In a video each person's face is followed from frame to frame (a track) and gets one
    answer from all its frames (docs/video.md).

    \b
    Examples:
      faceattr predict photo.jpg
      faceattr predict photos/ --json
      ls *.jpg | faceattr predict - --csv out.csv
      faceattr predict clip.mp4 --annotate clip-annotated.mp4
      faceattr predict --source 0 --json
    """
    from faceattr.fileio import Inputs, atomic_open, check_output
    from faceattr.inference.detect import create_detector
    from faceattr.inference.draw import PictureWriter
    from faceattr.inference.predictor import Predictor, iter_predictions
    from faceattr.inference.results import ImageResult
    from faceattr.video.annotate import save_track_crops, write_annotated
    from faceattr.video.pipeline import VideoOptions, predict_video
    from faceattr.video.probe import in_input_order, is_video_input

    options = VideoOptions(
        every=every,
        start=start,
        end=end,
        fps=fps,
        max_frames=max_frames,
        track_gap=track_gap,
        frames=frames,
        crops=save_crops is not None,
        boxes=annotate is not None,
    )
    options.check()
    if source is not None:
        if paths:
            raise UsageError(
                "Pass files and folders, or --source: not both.",
                "Run one command for the files and another for the source.",
            )
        if csv_file or save_crops or annotate:
            raise UsageError(
                "--csv, --save-crops and --annotate are for files, not --source.",
                "Record the stream to a file and predict that file for them.",
            )
    inputs, unreadable = expand_inputs(paths or [], recursive) if source is None else ([], 0)
    from faceattr.video.annotate import CONTAINERS

    video_flags = [is_video_input(p) for p in inputs]
    images = [p for p, v in zip(inputs, video_flags, strict=True) if not v]
    videos = [p for p, v in zip(inputs, video_flags, strict=True) if v]
    annotate_file = annotate is not None and annotate.suffix.lower() in CONTAINERS
    if annotate_file and (images or len(videos) != 1):
        raise UsageError(
            f"--annotate {annotate} names one video file, but the inputs are "
            f"{len(images)} photo(s) and {len(videos)} video(s).",
            "Give --annotate a folder: each photo and video is written there under its name.",
        )
    # Outputs are checked before any work: never over an input, an existing file only with
    # --overwrite.
    sources = Inputs(inputs) if csv_file or save_crops or annotate else None
    if csv_file is not None:
        check_output(csv_file, what="predictions CSV", inputs=sources, overwrite=overwrite)
    pictures = PictureWriter(
        save_crops,
        None if annotate_file else annotate,
        images=images,
        overwrite=overwrite,
        inputs=sources,
    )
    outputs = video_outputs(
        videos,
        annotate=annotate,
        annotate_file=annotate_file,
        save_crops=save_crops,
        overwrite=overwrite,
        inputs=sources,
    )
    face_detector = None
    if not no_detect:
        face_detector = create_detector(
            detector, min_score=min_score, min_face_size=min_face_size, max_faces=max_faces
        )
    predictor = Predictor(
        model, backend=backend, device=device, batch_size=batch_size, threshold=threshold,
        tta=tta,
    )  # fmt: skip
    if source is not None:
        predict_source(source, predictor, face_detector, options, json_out, top, workers)
        return
    predictions = iter_predictions(
        images,
        predictor,
        detector=face_detector,
        max_pixels=max_pixels,
        progress=RichProgress(quiet=len(images) <= 5),  # on stderr: --json output stays clean
        total=len(images),
        on_image=pictures if pictures.wanted else None,
        workers=workers,
    )

    def video_results():
        for video in videos:
            r = predict_video(
                video,
                predictor,
                detector=face_detector,
                options=options,
                workers=workers,
                progress=RichProgress(),
                max_pixels=max_pixels,
            )
            target, stem = outputs[video]
            if not r.error:
                if target is not None:
                    write_annotated(
                        r,
                        target,
                        start=start,
                        end=end,
                        gap=track_gap,
                        until_last=max_frames is not None,
                        overwrite=overwrite,
                        inputs=sources,
                    )
                    err.print(f"Wrote {literal(target)}", highlight=False)
                if save_crops is not None:
                    save_track_crops(r, save_crops, stem, overwrite=overwrite, inputs=sources)
            yield r

    results: list[ImageResult | VideoResult]
    if csv_file is None:
        results = [*predictions, *video_results()]
    else:  # rows go to disk as they come: a failure keeps them in CSV_FILE.partial
        with atomic_open(csv_file, "w", newline="", encoding="utf-8", what="predictions CSV",
                         keep_partial=True, overwrite=overwrite, inputs=sources) as fh:  # fmt: skip
            rows = CsvRows(fh, predictor.attributes, videos=bool(videos), per_frame=frames)
            results = [rows.write(r) for r in predictions]
            results += [rows.write_video(r) for r in video_results()]
        err.print(f"Wrote {literal(csv_file)}", highlight=False)
    # In input order: the photos went through their pipeline, the videos one by one.
    results = in_input_order(video_flags, results[: len(images)], results[len(images) :])
    if json_out:
        print_json([r.to_json() for r in results])
    elif csv_file is None:
        for r in results:
            if isinstance(r, ImageResult):
                render_result(r, top)
            else:
                render_video(r, top)
    failed = [r for r in results if r.error]
    if failed:
        what = "input" if videos else "image"
        err.print(f"[bold red]{len(failed)} of {len(results)} {what}(s) could not be read.[/]")
    if unreadable:
        err.print(f"[bold red]{unreadable} folder(s) could not be read.[/]")
    if failed or unreadable:
        raise typer.Exit(1)


def predict_source(
    source, predictor, detector, options, json_out: bool, top: int, workers: int | None
) -> None:
    """--source: a camera or stream, read until it ends or Ctrl-C; each track as it ends
    (a JSON line with --json), then the summary."""
    from faceattr.video.pipeline import predict_video
    from faceattr.video.probe import source_kind
    from faceattr.video.results import track_line

    kind = source_kind(source)
    if kind == "unknown":
        raise UsageError(
            f"--source {literal(source)} is neither a camera nor a stream URL.",
            "Pass a camera number (0), a device (/dev/video0), or an rtsp://, http:// or "
            "https:// URL; files and folders are arguments, not --source.",
        )

    def ended(track) -> None:
        if json_out:
            json_line(track_line(result_name, track))
        else:
            track_ended_line(result_name, track, top)

    from faceattr.redaction import redact

    result_name = redact(source)
    r = predict_video(
        source,
        predictor,
        detector=detector,
        options=options,
        live=kind,
        on_track=ended,
        workers=workers,
        progress=RichProgress(quiet=True),
    )
    if json_out:
        json_line(r.to_json())
    else:
        render_video(r, top)
    if r.error:
        raise typer.Exit(1)


class CsvRows:
    """One CSV row per face (an image without faces or with an error gets one row too)."""

    def __init__(self, fh, attributes: list[str], *, videos: bool = False,
                 per_frame: bool = False) -> None:  # fmt: skip
        self.writer = csv.writer(fh)
        self.attributes = attributes
        self.per_frame = per_frame
        # Among videos, a photo's row leaves the video columns empty.
        self.pad = [""] * len(VIDEO_CSV_COLUMNS) if videos else []
        # The probabilities, then the error, then (added later, so earlier columns keep
        # their places) the attributes present at the thresholds, most probable first; then,
        # when there are videos, theirs (cli/videos.py).
        self.writer.writerow(
            ["image", "face", "x", "y", "w", "h", "score", *attributes, "error", "attributes",
             *(VIDEO_CSV_COLUMNS if videos else [])]
        )  # fmt: skip

    def write_video(self, r: VideoResult) -> VideoResult:
        self.writer.writerows(video_csv_rows(r, self.attributes, self.per_frame))
        return r

    def write(self, r: ImageResult) -> ImageResult:
        attributes = self.attributes
        if r.error or not r.faces:
            self.writer.writerow([r.image, "", "", "", "", "", "", *[""] * len(attributes),
                                  r.error or "", "", *self.pad])  # fmt: skip
            return r
        for i, face in enumerate(r.faces):
            probs = face.probabilities
            self.writer.writerow(
                [r.image, i, *face.box, face.score, *[probs[a] for a in attributes], "",
                 " ".join(face.attributes), *self.pad]
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
