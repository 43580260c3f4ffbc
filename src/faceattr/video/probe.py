"""Which inputs are videos, cameras or streams.

A file is a video by its content, not its name: the first bytes name its container (MP4/MOV,
Matroska/WebM, AVI, MPEG transport or program stream, FLV, Ogg, ASF). A file named like a
video whose content is none is still taken as a video, so that it gets a video's error ("not
a video") instead of an image's. Needs no PyAV: the light install recognises a video and says
which extra reads it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TypeVar

from faceattr.reading import open_regular

T = TypeVar("T")
U = TypeVar("U")

# What a folder's walk takes as a video (a file given by name is recognised by its content).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts",
    ".wmv", ".flv", ".3gp", ".ogv",
)  # fmt: skip

_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def container_of(head: bytes) -> str | None:
    """The container the first bytes of a file name (``"mp4"``, ``"matroska"``, ...), or
    None when they name no video container."""
    if len(head) >= 8 and head[4:8] in _ISO_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    return None


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is to be read as a video: its first bytes name a video container,
    or (unreadable, or content of another kind) its name ends like a video's."""
    try:
        with open_regular(path) as fh:
            head = fh.read(400)
    except (OSError, ValueError):
        head = b""
    if container_of(head) is not None:
        return True
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def is_video_input(source: object) -> bool:
    """Whether one of predict's inputs goes to the video pipeline: a path not named like a
    photo whose content (or name) is a video's (:func:`is_video_file`); never a picture in
    memory."""
    from faceattr.data.images import IMAGE_EXTENSIONS

    if not isinstance(source, (str, os.PathLike)):
        return False
    if os.path.splitext(os.fspath(source))[1].lower() in IMAGE_EXTENSIONS:
        return False
    return is_video_file(source)


def in_input_order(is_video: list[bool], images: list[T], videos: list[U]) -> list[T | U]:
    """The photos' and the videos' results, each list in input order, merged back into the
    order of the inputs (``is_video``: which input is a video)."""
    photo, video = iter(images), iter(videos)
    return [next(video) if v else next(photo) for v in is_video]


STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def source_kind(source: str) -> str:
    """``--source``: "camera" (a number, a device path such as /dev/video0, or ``video=NAME``
    on Windows) or "stream" (an rtsp/rtsps/rtmp/http(s) URL); "unknown" otherwise."""
    found = _URL.match(source)
    if found:
        return "stream" if found.group(1).lower() in STREAM_SCHEMES else "unknown"
    if source.isdigit() or source.startswith("/dev/") or source.startswith("video="):
        return "camera"
    return "unknown"


def camera_input(source: str) -> tuple[str, str]:
    """The FFmpeg input (file, format) of camera ``source`` on this platform: v4l2 on Linux,
    avfoundation on macOS, dshow on Windows."""
    if sys.platform == "darwin":
        return source, "avfoundation"
    if sys.platform == "win32":
        return (source if source.startswith("video=") else f"video={source}"), "dshow"
    return (f"/dev/video{source}" if source.isdigit() else source), "v4l2"
