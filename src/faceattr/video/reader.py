"""Decoding video frames with PyAV (FFmpeg's libraries inside its wheel: no system ffmpeg).

:func:`open_video` opens a file (through :func:`faceattr.reading.open_regular`, the one way an
input file is opened), a camera or a network stream and says what it holds; its
:meth:`VideoReader.frames` yields the frames asked for (``start``/``end`` seconds, a sample
rate, a count), each an RGB picture with its frame number and time. A packet FFmpeg cannot
decode, or a frame it marks corrupt, is skipped and counted (``corrupt``), never fatal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from faceattr.errors import VideoReadError
from faceattr.extras import missing_extra_error
from faceattr.reading import open_regular
from faceattr.redaction import redact
from faceattr.video.probe import camera_input, container_of

# Seconds a network stream may take to connect, and to deliver data once connected.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 20.0


def import_av() -> Any:
    """PyAV, or the error that names the extra bringing it."""
    try:
        import av
    except ModuleNotFoundError as exc:
        raise missing_extra_error(exc.name or "av", "Reading videos") from None
    return av


@dataclass(frozen=True)
class Frame:
    """One frame: its number in the video (from 0), its time in seconds from the video's
    start, and its RGB picture (None once it is no longer needed)."""

    index: int
    time: float
    image: Image.Image | None


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[-1].strip() if text else type(exc).__name__


class VideoReader:
    """An opened video: ``width``, ``height``, ``fps`` (frames per second, 0 when unknown),
    ``frames`` (the count its header gives, 0 when unknown), ``duration`` (seconds, None when
    unknown), ``has_audio``; :meth:`frames` decodes. Close it (or use ``with``)."""

    def __init__(self, container: Any, name: str, live: bool) -> None:
        self.container, self.name, self.live = container, name, live
        streams = container.streams
        if not streams.video:
            others = (("audio", streams.audio), ("subtitle", streams.subtitles))
            kinds = ", ".join(f"{len(found)} {kind}" for kind, found in others if found)
            what = f"audio only ({kinds} stream(s))" if streams.audio else "no stream at all"
            container.close()
            raise VideoReadError(
                f"{name} holds no video stream: {what}.",
                "Pass a video with pictures; an audio file has no faces to find.",
            )
        self.stream = streams.video[0]
        self.stream.thread_type = "AUTO"
        ctx = self.stream.codec_context
        self.width, self.height = int(ctx.width or 0), int(ctx.height or 0)
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.frames_in_header = int(self.stream.frames or 0)
        self.duration = self._duration()
        self.has_audio = bool(streams.audio)
        self.corrupt = 0  # packets that failed to decode and frames marked corrupt, skipped
        self.seeked = False

    def _duration(self) -> float | None:
        if self.stream.duration and self.stream.time_base:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration:
            return self.container.duration / 1_000_000
        return None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _start_time(self) -> float:
        if self.stream.start_time is not None and self.stream.time_base:
            return float(self.stream.start_time * self.stream.time_base)
        return 0.0

    def seek(self, start: float) -> bool:
        """Jump to the key frame at or before ``start`` seconds when the video is a file with
        a known frame rate (frame numbers then come from the frames' times: :meth:`number`);
        whether it did."""
        if start <= 0 or self.live or not self.fps or not self.stream.time_base:
            return False
        av = import_av()
        target = int((start + self._start_time()) / self.stream.time_base)
        try:
            self.container.seek(target, stream=self.stream)
        except (av.error.FFmpegError, OSError, ValueError):
            return False
        self.seeked = True
        return True

    def number(self, k: int, time: float) -> int:
        """The number of the ``k``-th frame decoded (from 0), shown at ``time`` seconds:
        ``k`` when reading from the start; after a :meth:`seek`, time x frame rate (the same
        for a constant frame rate)."""
        return round(time * self.fps) if self.seeked else k

    def decoded(self) -> Iterator[Any]:
        """Every frame FFmpeg decodes (PyAV ``VideoFrame``), corrupt ones skipped and counted."""
        av = import_av()
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.corrupt += 1
                continue
            for frame in frames:
                if getattr(frame, "corrupt", False):
                    self.corrupt += 1
                    continue
                yield frame

    def frames(
        self,
        *,
        start: float = 0.0,
        end: float | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
    ) -> Iterator[Frame]:
        """The frames from ``start`` to ``end`` seconds, at most ``fps`` of them a second
        (None: every frame), at most ``max_frames`` of them."""
        t0 = self._start_time()
        step = 1.0 / fps if fps else 0.0
        next_time = start
        taken = 0
        guess = 1.0 / self.fps if self.fps else 1.0 / 25
        self.seek(start)
        for k, frame in enumerate(self.decoded()):
            time = (frame.time - t0) if frame.time is not None else k * guess
            number = self.number(k, time)
            if time < start - 1e-6:
                continue
            if end is not None and time > end + 1e-6:
                break
            if step and time < next_time - 1e-6:
                continue
            if max_frames is not None and taken >= max_frames:
                break
            next_time = (next_time if next_time > time - step else time) + step
            taken += 1
            yield Frame(number, round(time, 6), frame.to_image())


def _content(head: bytes) -> str:
    """What a file's first bytes say it is, in words."""
    if not head:
        return "the file is empty"
    for magic, what in ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
                        (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"),
                        (b"PK\x03\x04", "a ZIP archive"), (b"ID3", "MP3 audio"),
                        (b"fLaC", "FLAC audio")):  # fmt: skip
        if head.startswith(magic):
            return f"its content is {what}"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "its content is WAV audio"
    try:
        head.decode("utf-8")
        return "its content is text"
    except UnicodeDecodeError:
        return "its content is no video container faceattr knows"


def open_video(path: str | os.PathLike[str]) -> VideoReader:
    """A video file, opened; :class:`VideoReadError` when it is no video (a text or image
    named .mp4, a truncated or damaged file, audio only) or cannot be read,
    :class:`~faceattr.extras.MissingExtraError` without PyAV."""
    av = import_av()
    name = os.fspath(path)
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        raise VideoReadError(f"Video {name} does not exist.", "Check the path.") from None
    except OSError as exc:
        raise VideoReadError(f"Cannot read video {name}: {exc.strerror or exc}.") from None
    head = fh.read(400)
    fh.seek(0)
    if container_of(head) is None:
        fh.close()
        raise VideoReadError(
            f"{name} is not a video: {_content(head)}.",
            "faceattr reads MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg and ASF videos; "
            "a photo named like a video is read as a photo once named like one (.jpg).",
        )
    try:
        container = av.open(fh, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        fh.close()
        size = os.path.getsize(name) if os.path.exists(name) else 0
        raise VideoReadError(
            f"Cannot read video {name}: FFmpeg finds no video it can read in it "
            f"({_ffmpeg_reason(exc)}; {size:,} bytes): not a video, or truncated or damaged.",
            "Re-download or re-export the file, or remove it from the inputs.",
        ) from None
    try:
        return VideoReader(container, name, live=False)
    except BaseException:
        fh.close()
        raise


def open_source(source: str, kind: str, timeout: float = CONNECT_TIMEOUT) -> VideoReader:
    """A camera (``kind="camera"``: its number or device) or a network stream (``"stream"``:
    a URL, connecting for at most ``timeout`` seconds), opened for live reading."""
    av = import_av()
    shown = redact(source)
    try:
        if kind == "camera":
            device, fmt = camera_input(source)
            container = av.open(device, format=fmt, timeout=timeout)
        else:
            container = av.open(source, timeout=(timeout, READ_TIMEOUT))
    except ValueError as exc:  # this FFmpeg build lacks the platform's camera input
        if kind != "camera":
            raise VideoReadError(f"Cannot open stream {shown}: {exc}.") from None
        raise VideoReadError(
            f"Cannot open camera {shown}: this PyAV build cannot read cameras ({exc}).",
            "Record the camera to a file with another program and predict the file.",
        ) from None
    except av.error.FFmpegError as exc:
        if kind == "camera":
            raise VideoReadError(
                f"Cannot open camera {shown}: {_ffmpeg_reason(exc)}.",
                "Check that the camera is connected and not in use; `source=0` is the first "
                "camera.",
            ) from None
        raise VideoReadError(
            f"Cannot open stream {shown}: {_ffmpeg_reason(exc)} (waited at most {timeout:g} s "
            "to connect).",
            "Check the URL, that the server is running and that this machine can reach it.",
        ) from None
    return VideoReader(container, shown, live=True)
