"""`faceattr predict` on videos, cameras and streams: the table, CSV rows and JSON lines of
:class:`faceattr.video.results.VideoResult` (the core: :mod:`faceattr.video`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from faceattr.cli.common import as_flags, err, literal, out
from faceattr.errors import UsageError

if TYPE_CHECKING:
    from faceattr.video.results import TrackResult, VideoResult

# The CSV columns a video adds after the photos' (a photo's row leaves them empty).
VIDEO_CSV_COLUMNS = ["start", "end", "frames", "frame", "time"]


def video_csv_rows(r: VideoResult, attributes: list[str], per_frame: bool) -> list[list[Any]]:
    """A video's CSV rows in predict's columns plus :data:`VIDEO_CSV_COLUMNS`: one per track
    (``face`` is the track id, the box and the probabilities the track's), or with
    ``per_frame`` one per face and frame (a frame between searches has no probabilities)."""
    blank = [""] * len(attributes)
    if r.error:
        return [[r.video, "", "", "", "", "", "", *blank, r.error, "", "", "", "", "", ""]]
    rows: list[list[Any]] = []
    if not per_frame:
        for t in r.tracks:
            rows.append(
                [
                    r.video,
                    t.id,
                    *t.box,
                    "",
                    *[t.probabilities[a] for a in attributes],
                    "",
                    " ".join(t.attributes),
                    t.start,
                    t.end,
                    t.frames,
                    t.best_frame,
                    t.best_time,
                ]
            )
        return rows or [[r.video, "", "", "", "", "", "", *blank, "", "", "", "", "", "", ""]]
    for fr in r.frame_results or []:
        for f in fr.faces:
            probs = [f.probabilities[a] for a in attributes] if f.probabilities else blank
            rows.append(
                [
                    r.video,
                    f.track,
                    *f.box,
                    "" if f.score is None else f.score,
                    *probs,
                    "",
                    " ".join(f.attributes or []),
                    "",
                    "",
                    "",
                    fr.frame,
                    fr.time,
                ]
            )
    return rows


def top_text(track: TrackResult, top: int) -> str:
    """The attributes present, most probable first (``top`` of them; 0: all), each with its
    probability and, when not every frame agrees, the share that does."""
    names = track.attributes[:top] if top else track.attributes
    parts = []
    for n in names:
        agree = track.agreement.get(n, 1.0)
        share = f" ({agree:.0%} of frames)" if agree < 1.0 else ""
        parts.append(f"{n} {track.probabilities[n]:.2f}{share}")
    return ", ".join(parts) or "(no attribute above threshold)"


def render_video(r: VideoResult, top: int) -> None:
    """One table per video: a row per track (id, time span, frames, top attributes)."""
    if r.error and not r.tracks:
        err.print(f"[bold red]{literal(r.video)}:[/] {literal(as_flags(r.error))}", highlight=False)
        return
    about = [f"{r.width}x{r.height}"]
    if r.fps:
        about.append(f"{r.fps:g} fps")
    if r.duration:
        about.append(f"{r.duration:.1f} s")
    about.append(f"{r.frames} frames processed")
    if r.corrupt_frames:
        about.append(f"{r.corrupt_frames} corrupt frame(s) skipped")
    title = f"{r.video} ({', '.join(about)})"
    if not r.tracks:
        out.print(f"{literal(title)}: no face found", highlight=False)
    else:
        table = Table(
            title=literal(title),
            title_justify="left",
            caption="attributes: present at the model's thresholds, over the track's frames",
            caption_justify="left",
        )
        table.add_column("track", justify="right")
        table.add_column("time (s)")
        table.add_column("frames", justify="right")
        table.add_column("attributes")
        for t in r.tracks:
            table.add_row(
                str(t.id),
                f"{t.start:.2f}-{t.end:.2f}",
                str(t.frames),
                literal(top_text(t, top or 5)),
            )
        out.print(table)
    if r.error:
        err.print(f"[bold red]{literal(r.video)}:[/] {literal(as_flags(r.error))}", highlight=False)
    if r.interrupted:
        err.print("[yellow]Stopped by Ctrl-C:[/] the tracks so far.")


def track_ended_line(video: str, track: TrackResult, top: int) -> None:
    """A live source's line (not --json) for a track that ended."""
    out.print(
        literal(
            f"{video}: track {track.id} ({track.start:.1f}-{track.end:.1f} s, "
            f"{track.frames} frames): {top_text(track, top or 3)}"
        ),
        highlight=False,
    )


def json_line(data: Any) -> None:
    """One JSON document on one line of stdout (a live source's tracks as they end)."""
    from faceattr.utils import to_json

    sys.stdout.write(to_json(data) + "\n")
    sys.stdout.flush()


def video_outputs(
    videos: list[str],
    *,
    annotate: Path | None,
    annotate_file: bool,
    save_crops: Path | None,
    overwrite: bool,
    inputs: Any,
) -> dict[str, tuple[Path | None, str]]:
    """Each video's annotated output (None: not asked) and its crops' stem, checked before
    any work: never an input, an existing file only with --overwrite."""
    from faceattr.fileio import check_output
    from faceattr.inference.draw import _stems

    stems = _stems(videos)
    found: dict[str, tuple[Path | None, str]] = {}
    for video in videos:
        stem = stems[video].pop(0) if len(stems[video]) > 1 else stems[video][0]
        target = None
        if annotate is not None:
            target = annotate if annotate_file else annotate / f"{stem}.mp4"
            check_output(target, what="annotated video", inputs=inputs, overwrite=overwrite)
        if save_crops is not None and not overwrite:
            clash = sorted(save_crops.glob(f"{stem}_track*.jpg")) if save_crops.is_dir() else []
            if clash:
                raise UsageError(
                    f"{save_crops} already holds the track crops of {stem} ({clash[0].name}); "
                    "faceattr does not replace files unless asked.",
                    "Pass --overwrite to replace them, or choose another folder.",
                )
        found[video] = (target, stem)
    return found
