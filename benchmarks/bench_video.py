"""Video speed: `faceattr predict clip.mp4` against the same frames as JPEGs, in one run.

    python benchmarks/bench_video.py [--seconds S] [--fps R] [--sizes 640x360,1280x720]
                                     [--faces 1,3] [--every 1,3] [--repeat K] [--quick] [--json]

The clips are made here with PyAV (H.264, yuv420p, ``--fps`` 25, ``--seconds`` 10; 3 with
``--quick``) from the faces of ``examples/*.jpg``, pasted onto a textured background and moving
along smooth paths (each face in its own third of the picture, so the true number of tracks is
the number of faces); one clip per size and face count. For each clip, as whole processes of
the CLI (subprocesses, default model, default detector and workers):

- ``faceattr predict clip.mp4 --json --every N`` for each ``--every``;
- the photo pipeline: the clip's frames, decoded here and written as JPEGs (quality 95), run
  through ``faceattr predict DIR --json``.

Each command runs twice, on the whole input and on its first frame alone (``--max-frames 1``;
a folder holding only the first JPEG): the second is the load (start-up, imports, model and
detector loading, one frame), and the rate without it is ``(N - 1) / (wall(N) - wall(1))``,
as in bench_serve.py (``predict --json`` reports no timings of its own). "Per processed frame"
is that rate: for ``--every 1`` every frame is searched and predicted, as every JPEG is. With
``--every N`` the frames between searches are decoded and tracked only; the table gives the
searched frames' rate too. The tracks each video run found are checked against the number
of faces pasted, and the faces found per JPEG too: exit status 1 when one differs (a
benchmark that lost a face would be timing something else). "Decode only"
times faceattr's video reader alone in this process (``faceattr.video.reader``: H.264
decoding and the conversion of each frame to an RGB picture): the part of the video path the
photo pipeline does not have (it decodes JPEGs instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_model, faceattr_cmd, run_process, warm_files  # benchmarks/common.py
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# The faces of the example photos: (photo, x, y, w, h) of each face's box.
FACES = (
    ("astronaut.jpg", 178, 57, 95, 120),
    ("two-portraits.jpg", 168, 53, 90, 116),
    ("two-portraits.jpg", 622, 88, 141, 177),
)
TARGET = 0.9  # the video path's rate per processed frame against the photo pipeline's


def load_text() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def face_pictures(side: int) -> list[Image.Image]:
    """Each example face with a margin around its box, ``side`` pixels square."""
    out = []
    for photo, x, y, w, h in FACES:
        image = Image.open(EXAMPLES / photo).convert("RGB")
        cx, cy, s = x + w / 2, y + h / 2, max(w, h) * 1.7
        box = (int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2))
        out.append(image.crop(box).resize((side, side), Image.Resampling.BICUBIC))
    return out


def background(width: int, height: int) -> Image.Image:
    """A smooth colour gradient with soft blobs: some texture for the encoder, no faces."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            90 + 60 * xx / width,
            110 + 40 * np.sin(yy / height * math.pi),
            140 - 50 * (xx + yy) / (width + height),
        ],
        axis=-1,
    )
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(1)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(height // 20, height // 6))
        colour = tuple(int(c) for c in rng.integers(40, 220, size=3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=max(2, height // 60)))


def make_clip(path: Path, width: int, height: int, n_faces: int, fps: int, frames: int) -> None:
    """An H.264 clip of ``frames`` frames: ``n_faces`` faces, each moving in its own third of
    the picture along a smooth closed path."""
    import av

    side = height // 3
    pictures = face_pictures(side)[:n_faces]
    base = background(width, height)
    lane = width // 3
    out = av.open(str(path), "w", format="mp4")
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "veryfast", "crf": "20"}
    for k in range(frames):
        canvas = base.copy()
        t = k / fps
        for i, face in enumerate(pictures):
            # x within the face's lane, y over the height; periods differ per face
            fx = 0.5 + 0.5 * math.sin(2 * math.pi * t / (4.0 + i) + i)
            fy = 0.5 + 0.5 * math.sin(2 * math.pi * t / (5.5 - i) + 2 * i)
            x = int(i * lane + fx * (lane - side))
            y = int(fy * (height - side))
            canvas.paste(face, (x, y))
        for packet in stream.encode(av.VideoFrame.from_image(canvas)):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def write_jpegs(clip: Path, folder: Path) -> int:
    """The clip's frames, decoded, as JPEGs (quality 95) in ``folder``; their count."""
    import av

    folder.mkdir(parents=True)
    n = 0
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            frame.to_image().save(folder / f"frame{n:05d}.jpg", quality=95)
            n += 1
    return n


def run_json(cmd: list[str]) -> tuple[float, Any]:
    """Wall seconds of one whole process and its parsed --json; SystemExit when it fails."""
    seconds, out = run_process(cmd)
    return seconds, json.loads(out)


def rates(
    commands: dict[str, tuple[list[str], list[str]]], n: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """Per label, the whole-process and load-free frames per second of its first command
    (``n`` frames), the load being its second (one frame). Every command runs once per round,
    the rounds ``repeat`` times, so that a change of load hits every row alike; medians kept."""
    walls: dict[str, list[float]] = {k: [] for k in commands}
    ones: dict[str, list[float]] = {k: [] for k in commands}
    answers: dict[str, Any] = {}
    for _ in range(repeat):
        for label, (cmd_all, cmd_one) in commands.items():
            ones[label].append(run_json(cmd_one)[0])
            wall, answers[label] = run_json(cmd_all)
            walls[label].append(wall)
    out = {}
    for label in commands:
        wall, one = statistics.median(walls[label]), statistics.median(ones[label])
        steady = (n - 1) / (wall - one) if wall > one else float("nan")
        out[label] = {
            "wall_s": wall,
            "load_s": one,
            "whole_fps": n / wall,
            "fps": steady,
            "json": answers[label],
        }
    return out


def decode_fps(clip: Path, repeat: int) -> float:
    """Frames per second of faceattr's reader alone in this process: H.264 decoding and the
    conversion to RGB pictures, what the video path does before the photo pipeline's work."""
    from faceattr.video.reader import open_video

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with open_video(clip) as reader:
            n = sum(1 for _ in reader.frames())
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def measure_clip(
    clip: Path, jpegs: Path, n: int, n_faces: int, everies: list[int], repeat: int
) -> dict[str, Any]:
    first = jpegs.parent / f"{jpegs.name}-first"
    first.mkdir()
    (first / "frame00000.jpg").symlink_to(jpegs / "frame00000.jpg")
    commands = {
        "photo": (
            faceattr_cmd("predict", str(jpegs), "--json"),
            faceattr_cmd("predict", str(first), "--json"),
        )
    }
    for every in everies:
        video_cmd = faceattr_cmd("predict", str(clip), "--json", "--every", str(every))
        commands[f"every {every}"] = (video_cmd, [*video_cmd, "--max-frames", "1"])
    measured = rates(commands, n, repeat)
    photo = measured["photo"]
    faces_found = [len(r.get("faces") or []) for r in photo.pop("json")]
    row: dict[str, Any] = {
        "photo": {**photo, "faces_per_frame": statistics.mean(faces_found)},
        "video": {},
        "decode_fps": decode_fps(clip, max(repeat, 3)),
    }
    for every in everies:
        got = measured[f"every {every}"]
        result = got.pop("json")[0]
        if result.get("error"):
            raise SystemExit(f"{clip}: {result['error']}")
        if result["frames"] != n:
            raise SystemExit(f"{clip}: {result['frames']} frames processed, expected {n}")
        got["tracks"] = len(result["tracks"])
        got["searched"] = math.ceil(n / every)
        got["searched_fps"] = got["fps"] / every
        got["ratio"] = got["fps"] / photo["fps"]
        row["video"][every] = got
    return row


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) % 2 or int(h) % 2:
            raise SystemExit(f"--sizes: {part!r} is not WIDTHxHEIGHT with even numbers")
        sizes.append((int(w), int(h)))
    return sizes


def parse_ints(text: str, flag: str, low: int, high: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    if not values or any(not low <= v <= high for v in values):
        raise SystemExit(f"{flag}: each value must be between {low} and {high}, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, help="length of each clip (10; quick 3)")
    p.add_argument("--fps", type=int, default=25, help="frame rate of the clips (25)")
    p.add_argument("--sizes", default="640x360,1280x720", help="clip sizes, WxH,...")
    p.add_argument("--faces", default="1,3", help="faces per clip, 1 to 3 (1,3)")
    p.add_argument("--every", default="1,3", help="--every values timed (1,3)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of every command (in turns), median kept"
    )
    p.add_argument("--quick", action="store_true", help="3-second clips (a smoke run)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = p.parse_args(argv)
    try:
        import av  # noqa: F401
    except ImportError:
        raise SystemExit('PyAV is missing: pip install "faceattr[video]"') from None
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    if not 1 <= args.fps <= 120 or seconds <= 0 or args.repeat < 1:
        raise SystemExit("--fps must be 1..120, --seconds above 0, --repeat at least 1")
    n = max(2, round(seconds * args.fps))
    sizes = parse_sizes(args.sizes)
    face_counts = parse_ints(args.faces, "--faces", 1, len(FACES))
    everies = parse_ints(args.every, "--every", 1, 1000)

    header = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_start": load_text(),
        "python": platform.python_version(),
        "frames": n,
        "fps": args.fps,
        "quick": args.quick,
    }
    if not args.json:
        print(
            f"CPU: {header['cpu']}, {header['cores']} cores; load average {header['load_start']}; "
            f"Python {header['python']}; clips of {n} frames at {args.fps} fps"
            + ("; --quick" if args.quick else "")
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="faceattr-bench-video-") as tmp_name:
        tmp = Path(tmp_name)
        for width, height in sizes:
            for n_faces in face_counts:
                name = f"{width}x{height}-{n_faces}face"
                clip = tmp / f"{name}.mp4"
                make_clip(clip, width, height, n_faces, args.fps, n)
                jpegs = tmp / f"{name}-jpegs"
                written = write_jpegs(clip, jpegs)
                if written != n:
                    raise SystemExit(f"{clip}: decoded {written} frames, wrote {n}")
                warm_files([clip, *jpegs.iterdir()])
                load_before = load_text()
                measured = measure_clip(clip, jpegs, n, n_faces, everies, args.repeat)
                rows.append(
                    {
                        "size": f"{width}x{height}",
                        "faces": n_faces,
                        "load": [load_before, load_text()],
                        **measured,
                    }
                )
    header["load_end"] = load_text()
    wrong = [
        f"{r['size']} with {r['faces']} face(s): tracks "
        + "/".join(str(r["video"][e]["tracks"]) for e in everies)
        + f", faces per JPEG {r['photo']['faces_per_frame']:.2f}"
        for r in rows
        if r["photo"]["faces_per_frame"] != r["faces"]
        or any(r["video"][e]["tracks"] != r["faces"] for e in everies)
    ]
    header["wrong"] = wrong
    if args.json:
        print(json.dumps({**header, "rows": rows}, indent=1))
    else:
        print_tables(rows, everies, args.fps, n)
        print(f"\nLoad average at the end: {header['load_end']}")
    if wrong:  # the numbers above time something else than the clip's faces
        sys.exit("Faces lost or split: " + "; ".join(wrong))


def fmt(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}x" if math.isfinite(v) else "n/a"


def print_tables(rows: list[dict[str, Any]], everies: list[int], fps: int, n: int) -> None:
    print(
        "\n### Frames per second, without the load (`(N-1)/(wall(N)-wall(1))`, whole CLI "
        "processes)\n"
    )
    head = "| clip | faces | photos (JPEGs) |"
    rule = "|---|---:|---:|"
    for e in everies:
        head += f" video `--every {e}` | ratio |"
        rule += "---:|---:|"
    print(head + " decode only | tracks found | faces per JPEG | load avg |")
    print(rule + "---:|---:|---:|---|")
    for r in rows:
        line = f"| {r['size']} | {r['faces']} | {fmt(r['photo']['fps'])} |"
        for e in everies:
            v = r["video"][e]
            line += f" {fmt(v['fps'])} | {fmt_ratio(v['ratio'])} |"
        tracks = "/".join(str(r["video"][e]["tracks"]) for e in everies)
        line += f" {fmt(r['decode_fps'])} |"
        faces = r["photo"]["faces_per_frame"]
        print(
            line
            + f" {tracks} | {faces:.2f} | {r['load'][0].split()[0]}-{r['load'][1].split()[0]} |"
        )
    print(
        f"\nRatio: the video's frames per second over the photo pipeline's on the same {n} "
        f"frames as JPEGs (target for `--every 1`, where every frame is searched and "
        f"predicted: >= {TARGET}x). Decode only: faceattr's reader alone in-process (H.264 "
        f"decoding and conversion to RGB; median of 3). Tracks found: by each `--every` run; "
        f"the clip has as many faces as the faces column. Real time is >= {fps} frames a "
        "second."
    )
    print("\n### Whole process, load included, and the searched frames\n")
    print("| clip | faces | command | wall s | load s | fps (whole) | searched frames/s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ph = r["photo"]
        print(
            f"| {r['size']} | {r['faces']} | photos (JPEGs) | {ph['wall_s']:.1f} | "
            f"{ph['load_s']:.1f} | {fmt(ph['whole_fps'])} | {fmt(ph['fps'])} |"
        )
        for e in everies:
            v = r["video"][e]
            print(
                f"| {r['size']} | {r['faces']} | `--every {e}` | {v['wall_s']:.1f} | "
                f"{v['load_s']:.1f} | {fmt(v['whole_fps'])} | {fmt(v['searched_fps'])} |"
            )
    print("\n### Real time\n")
    for r in rows:
        ok = [e for e in everies if r["video"][e]["fps"] >= fps]
        first = f"`--every {min(ok)}`" if ok else f"none of `--every {','.join(map(str, everies))}`"
        print(
            f"- {r['size']}, {r['faces']} face(s): {first} keeps up with {fps} fps "
            f"(" + ", ".join(f"every {e}: {fmt(r['video'][e]['fps'])}" for e in everies) + ")"
        )


if __name__ == "__main__":
    main()
