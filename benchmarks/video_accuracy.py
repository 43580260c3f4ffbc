"""Does a track's answer beat a single frame's? A proxy measured on held-out CelebA faces.

    python benchmarks/video_accuracy.py [--root DIR] [--images N] [--frames K] [--seed S]
                                        [--quick] [--json]

No labelled video of faces with CelebA's 40 attributes is at hand, so this makes one: for
each of ``--images`` labelled images (300; 60 with ``--quick``) of the held-out carve the
default model was measured on (the ``valid`` split faceattr carves out of the CelebA sample
by identity, seed 0: 1,428 images of 570 people no member of the ensemble was trained on;
docs/default-model.md), a clip of ``--frames`` frames (20; 12 with ``--quick``) of that one
aligned face, each frame changed at random and independently: shifted by up to 4% of the
image's width and height, scaled by 0.9-1.1 about its centre (edges repeated), blurred
(Gaussian, radius 0-1.5 px at 178 px wide) and JPEG-compressed at quality 25-95. The clip is
written losslessly (PNG frames in a .mov, so the JPEG step is the only compression) and
predicted by ``faceattr.video.predict_video`` in this process, with the default model and no
detector (``no_detect``: each frame is the aligned face, as ``predict clip.mov --no-detect``
does) and ``frames=True``, which keeps each frame's probabilities next to the track's.

Accuracy is against the image's 40 CelebA labels, at the model's thresholds, averaged over the
40 attributes (as ``faceattr eval`` reports it). Rows: a single frame (the mean over the
frames, and the worst and best frame position), the track (what faceattr ships: the weighted
mean logit; the weights are all equal here, every frame being a whole aligned face of one
size), two other ways to combine the same frames (the mean probability, a majority vote), and
the clean image through the photo pipeline (``no_detect``) for reference. The gain's 95%
interval is a bootstrap over the images (2,000 resamples).

It is a proxy: the frames of a real video differ by pose, expression, lighting and motion
blur, which a jittered copy of one photo does not imitate, and the errors of such frames are
less independent than these. It says whether averaging a track's frames removes the noise of
alignment, blur and compression; not how much a real video gains.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
SHIFT = 0.04  # of the width and height
SCALE = (0.9, 1.1)
BLUR = (0.0, 1.5)  # Gaussian radius at 178 px wide
QUALITY = (25, 95)
BOOTSTRAP = 2000


def jittered(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` shifted, scaled, blurred and JPEG-compressed at random (same size)."""
    w, h = image.size
    pad = int(0.25 * max(w, h))
    padded = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), "edge"))
    scale = rng.uniform(*SCALE)
    cx = pad + w / 2 + rng.uniform(-SHIFT, SHIFT) * w
    cy = pad + h / 2 + rng.uniform(-SHIFT, SHIFT) * h
    half_w, half_h = w / scale / 2, h / scale / 2
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    out = padded.resize((w, h), Image.Resampling.BICUBIC, box=box)
    radius = rng.uniform(*BLUR) * w / 178
    if radius > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def write_clip(path: Path, frames: list[Image.Image], fps: int = 25) -> None:
    """``frames`` as a lossless clip (PNG frames in a QuickTime file)."""
    import av

    out = av.open(str(path), "w", format="mov")
    stream = out.add_stream("png", rate=fps)
    stream.width, stream.height = frames[0].size
    stream.pix_fmt = "rgb24"
    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_image(image)):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def accuracy(decisions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image ``[N]``: the share of its known labels decided right."""
    known = ~np.isnan(labels)
    right = (decisions == (labels > 0.5)) & known
    return right.sum(axis=-1) / np.maximum(known.sum(axis=-1), 1)


def mean_attribute_accuracy(decisions: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy per attribute over the images, averaged over the attributes (eval's mean)."""
    known = ~np.isnan(labels)
    right = (decisions == (labels > 0.5)) & known
    return float(np.mean(right.sum(axis=0) / np.maximum(known.sum(axis=0), 1)))


def load_text() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def pick_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    real = os.environ.get("FACEATTR_REAL_DATA")
    if real and (Path(real) / "celeba-sample").is_dir():
        return Path(real) / "celeba-sample"
    raise SystemExit(
        "No labelled CelebA data: pass --root DIR (CelebA's layout) or set FACEATTR_REAL_DATA "
        "to a folder holding celeba-sample/."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root", help="CelebA-layout dataset (default: $FACEATTR_REAL_DATA/celeba-sample)"
    )
    p.add_argument("--images", type=int, help="held-out images, one clip each (300; quick 60)")
    p.add_argument("--frames", type=int, help="frames per clip (20; quick 12)")
    p.add_argument("--seed", type=int, default=0, help="the images chosen and their jitter")
    p.add_argument("--quick", action="store_true", help="fewer, shorter clips (a smoke run)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = p.parse_args(argv)
    n_images = args.images or (60 if args.quick else 300)
    n_frames = args.frames or (12 if args.quick else 20)
    if n_images < 2 or n_frames < 2:
        raise SystemExit("--images and --frames must be at least 2")
    try:
        import av  # noqa: F401
    except ImportError:
        raise SystemExit('PyAV is missing: pip install "faceattr[video]"') from None

    from faceattr.config import DataConfig
    from faceattr.data import load_split
    from faceattr.errors import FaceAttrError
    from faceattr.inference.predictor import Predictor
    from faceattr.video import VideoOptions, predict_video

    root = pick_root(args.root)
    load_start = load_text()
    try:
        valid = load_split(DataConfig(root=str(root)), "valid")
    except FaceAttrError as exc:
        raise SystemExit(f"{root}: {exc.message} {exc.hint or ''}".strip()) from None
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(len(valid), size=min(n_images, len(valid)), replace=False))
    table = valid.subset(chosen)
    labels = table.labels
    predictor = Predictor("default")
    attrs = predictor.attributes
    if list(table.attributes) != attrs:
        order = [list(table.attributes).index(a) for a in attrs]
        labels = labels[:, order]
    thresholds = predictor.thresholds

    frame_probs = np.zeros((len(table), n_frames, len(attrs)))
    track_probs = np.zeros((len(table), len(attrs)))
    clean = np.zeros((len(table), len(attrs)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faceattr-video-accuracy-") as tmp_name:
        clip = Path(tmp_name) / "clip.mov"
        for i, path in enumerate(table.paths):
            image = Image.open(path).convert("RGB")
            jitter = np.random.default_rng([args.seed, int(chosen[i])])
            write_clip(clip, [jittered(image, jitter) for _ in range(n_frames)])
            result = predict_video(clip, predictor, options=VideoOptions(frames=True))
            if result.error or len(result.tracks) != 1 or result.frames != n_frames:
                raise SystemExit(
                    f"{path.name}: expected one track over {n_frames} frames, got "
                    f"{len(result.tracks)} track(s), {result.frames} frame(s), error "
                    f"{result.error!r}"
                )
            track = result.tracks[0]
            assert track.probability_array is not None and result.frame_results is not None
            track_probs[i] = track.probability_array
            for k, frame in enumerate(result.frame_results):
                (face,) = frame.faces
                assert face.probabilities is not None
                frame_probs[i, k] = [face.probabilities[a] for a in attrs]
            clean[i] = predictor.probabilities([image])[0]
    seconds = time.perf_counter() - started

    def decide(probs: np.ndarray) -> np.ndarray:
        return probs >= thresholds

    frame_acc = np.array(
        [mean_attribute_accuracy(decide(frame_probs[:, k]), labels) for k in range(n_frames)]
    )
    rows = {
        "single frame (mean over frame positions)": float(frame_acc.mean()),
        "single frame, worst position": float(frame_acc.min()),
        "single frame, best position": float(frame_acc.max()),
        "track: weighted mean logit (shipped)": mean_attribute_accuracy(
            decide(track_probs), labels
        ),
        "track: mean probability": mean_attribute_accuracy(
            decide(frame_probs.mean(axis=1)), labels
        ),
        "track: majority vote of the frames": mean_attribute_accuracy(
            decide(frame_probs).mean(axis=1) >= 0.5, labels
        ),
        "clean image, photo pipeline (reference)": mean_attribute_accuracy(decide(clean), labels),
    }
    # Per image: the track's accuracy minus its frames' mean accuracy; bootstrap over images.
    per_frame = np.stack([accuracy(decide(frame_probs[:, k]), labels) for k in range(n_frames)])
    gain = accuracy(decide(track_probs), labels) - per_frame.mean(axis=0)
    boot = np.random.default_rng(1).integers(0, len(gain), size=(BOOTSTRAP, len(gain)))
    low, high = np.percentile(gain[boot].mean(axis=1), [2.5, 97.5])
    # The other ways of combining against the shipped one, per image, same resamples.
    shipped = accuracy(decide(track_probs), labels)
    others = {
        "mean probability": accuracy(decide(frame_probs.mean(axis=1)), labels) - shipped,
        "majority vote": accuracy(decide(frame_probs).mean(axis=1) >= 0.5, labels) - shipped,
    }
    versus = {
        name: [
            round(100 * float(d.mean()), 3),
            *(round(100 * float(v), 3) for v in np.percentile(d[boot].mean(axis=1), [2.5, 97.5])),
        ]
        for name, d in others.items()
    }
    # How often a decision of one frame differs from the track's (the noise averaged away).
    flips = float((decide(frame_probs) != decide(track_probs)[:, None, :]).mean())
    summary: dict[str, Any] = {
        "root": str(root),
        "images": len(table),
        "identities": int(table.frame["identity"].nunique()),
        "frames": n_frames,
        "seconds": round(seconds, 1),
        "load_start": load_start,
        "load_end": load_text(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "accuracy": {k: round(v, 5) for k, v in rows.items()},
        "gain_points": round(100 * float(gain.mean()), 3),
        "gain_points_95": [round(100 * float(low), 3), round(100 * float(high), 3)],
        "images_better": int((gain > 0).sum()),
        "images_worse": int((gain < 0).sum()),
        "frame_decisions_differing_from_track": round(flips, 5),
        "versus_shipped_points": versus,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(
        f"{summary['images']} held-out images ({summary['identities']} identities) of {root}, "
        f"{n_frames} jittered frames each, {seconds:.0f} s; load average {load_start} at the "
        f"start, {summary['load_end']} at the end; {os.cpu_count()} cores"
    )
    print("\n### Mean accuracy over the 40 attributes (a proxy: jittered copies of one photo)\n")
    print("| answer | accuracy % | vs a single frame |")
    print("|---|---:|---:|")
    base = rows["single frame (mean over frame positions)"]
    for name, value in rows.items():
        print(f"| {name} | {100 * value:.2f} | {100 * (value - base):+.2f} |")
    print(
        f"\nTrack minus single frame, per image: {summary['gain_points']:+.2f} points "
        f"(95% bootstrap interval {summary['gain_points_95'][0]:+.2f} to "
        f"{summary['gain_points_95'][1]:+.2f}); the track was better on "
        f"{summary['images_better']} images, worse on {summary['images_worse']}. A single "
        f"frame's decision differs from its track's in {100 * flips:.1f}% of (frame, "
        "attribute) pairs. Against the shipped track, per image: "
        + "; ".join(
            f"{name} {v[0]:+.2f} points ({v[1]:+.2f} to {v[2]:+.2f})" for name, v in versus.items()
        )
        + ".\nThis is a proxy: frames made by jittering one aligned photo "
        "(shift, scale, blur, JPEG quality), not a real video."
    )


if __name__ == "__main__":
    sys.exit(main())
