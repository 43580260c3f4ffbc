"""A video's pictures: the video re-encoded with each track's box, id and top attributes
(audio copied as it is), and each track's best aligned crop.

The annotated video is written in a second pass over the file (the labels are the tracks'
answers, known once the video is read): every frame from ``start`` to ``end`` is kept, and
a frame the first pass did not process (``fps=``) shows the boxes of the last one it did.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from faceattr.errors import UsageError
from faceattr.fileio import Inputs, atomic_open
from faceattr.inference.draw import BOX_COLOUR, _font
from faceattr.video.reader import import_av, open_video
from faceattr.video.results import TrackResult, VideoResult

# Output suffix -> (FFmpeg muxer, video encoder).
CONTAINERS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}


def check_video_output(path: str | os.PathLike[str]) -> None:
    """A UsageError unless ``path`` ends like a video faceattr can write."""
    if Path(path).suffix.lower() not in CONTAINERS:
        raise UsageError(
            f"Cannot write an annotated video to {path}: its suffix names no container "
            f"faceattr writes ({', '.join(CONTAINERS)}).",
            "Name the output file with one of these suffixes, e.g. out.mp4.",
        )


def track_label(track: TrackResult, top: int = 3) -> str:
    """The text drawn under a track's box: its id and its ``top`` present attributes."""
    probs = track.probabilities
    names = track.attributes[:top]
    return "\n".join([f"track {track.id}", *(f"{n} {probs[n]:.2f}" for n in names)])


def draw_tracks(
    image: Image.Image, boxes: list[tuple[int, list[float]]], labels: dict[int, str]
) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    side = max(out.width, out.height)
    width = max(2, side // 400)
    font = _font(max(10, side // 50))
    for tid, (x, y, w, h) in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=width)
        text = labels.get(tid, f"track {tid}")
        box = draw.multiline_textbbox((x, y + h + width), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x, y + h + width), text, fill=(255, 255, 255), font=font)
    return out


def write_annotated(
    result: VideoResult,
    path: str | os.PathLike[str],
    *,
    start: float = 0.0,
    end: float | None = None,
    gap: float = 1.0,
    until_last: bool = False,
    top: int = 3,
    overwrite: bool = False,
    inputs: Inputs | None = None,
) -> int:
    """Write ``result``'s video (read again from ``result.video``) with its tracks drawn
        into ``path``; returns the frames written (``until_last``: up to the last frame the first
    pass processed, as when it stopped at ``max_frames``). ``result`` must come from
        :func:`~faceattr.video.pipeline.predict_video` with ``boxes=True``."""
    av = import_av()
    check_video_output(path)
    fmt, codec = CONTAINERS[Path(path).suffix.lower()]
    boxes = result.track_boxes or {}
    labels = {t.id: track_label(t, top) for t in result.tracks}
    last_processed = max(boxes) if boxes else -1
    written = 0
    with (
        open_video(result.video) as reader,
        atomic_open(path, "wb", what="annotated video", overwrite=overwrite, inputs=inputs) as fh,
    ):
        vin = reader.stream
        ain = reader.container.streams.audio[0] if reader.has_audio else None
        out = av.open(fh, mode="w", format=fmt)
        try:
            vout = out.add_stream(codec, rate=vin.average_rate or 25)
            # yuv420p needs even sides: an odd last column or row is cut off.
            vout.width, vout.height = (
                reader.width - reader.width % 2,
                reader.height - reader.height % 2,
            )
            vout.pix_fmt = "yuv420p"
            vout.time_base = vin.time_base
            aout = out.add_stream_from_template(ain) if ain is not None else None
            t0 = reader._start_time()
            k = -1
            reader.seek(start)
            shown: list[tuple[int, list[float]]] = []
            gap_frames = max(1, round((reader.fps or 25) * gap))
            shown_at = -1
            finished = False
            wanted = [s for s in (vin, ain) if s is not None]
            for packet in reader.container.demux(*wanted):
                if packet.stream is ain:
                    if packet.dts is None or aout is None:
                        continue
                    time = (
                        float(packet.pts * packet.time_base) - t0 if packet.pts is not None else 0
                    )
                    if time >= start - 1e-6 and (end is None or time <= end + 1e-6):
                        packet.stream = aout
                        out.mux(packet)
                    continue
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    continue
                for frame in frames:
                    if getattr(frame, "corrupt", False):
                        continue
                    k += 1
                    time = (frame.time - t0) if frame.time is not None else 0.0
                    number = reader.number(k, time)
                    if time < start - 1e-6 or (end is not None and time > end + 1e-6):
                        continue
                    if until_last and number > last_processed:
                        finished = True
                        break
                    if number in boxes:
                        shown, shown_at = boxes[number], number
                    elif number - shown_at > gap_frames:
                        shown = []
                    picture = draw_tracks(frame.to_image(), shown, labels)
                    if picture.size != (vout.width, vout.height):
                        picture = picture.crop((0, 0, vout.width, vout.height))
                    new = av.VideoFrame.from_image(picture)
                    new.pts, new.time_base = frame.pts, frame.time_base
                    for p in vout.encode(new):
                        out.mux(p)
                    written += 1
                if finished:
                    break
            for p in vout.encode():
                out.mux(p)
        finally:
            out.close()
    return written


def save_track_crops(
    result: VideoResult,
    folder: str | os.PathLike[str],
    stem: str,
    *,
    overwrite: bool = False,
    inputs: Inputs | None = None,
) -> list[Path]:
    """Each track's best aligned crop as ``folder/STEM_trackN.jpg``; the paths written."""
    written = []
    for track in result.tracks:
        if track.crop is None:
            continue
        path = Path(folder) / f"{stem}_track{track.id}.jpg"
        with atomic_open(path, "wb", what="face crop", overwrite=overwrite, inputs=inputs) as fh:
            track.crop.save(fh, format="JPEG", quality=92)
        written.append(path)
    return written
