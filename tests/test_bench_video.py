"""The video benchmarks' own helpers (benchmarks/bench_video.py, benchmarks/video_accuracy.py):
the clips they make and the accuracy they compute, so that a number they print measures what
it says. The benchmarks themselves are run by hand (benchmarks/README.md), never here."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")
pytest.importorskip("lap")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their sibling `common`
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_bench_clip_has_its_faces_as_tracks(tmp_path):
    """The benchmark's clip: the size and frame count asked for, and as many tracks as faces
    pasted, found by the video pipeline with the default detector."""
    bench = _module("bench_video")
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor
    from faceattr.video import predict_video

    clip = tmp_path / "clip.mp4"
    bench.make_clip(clip, 320, 180, 2, fps=10, frames=6)
    with av.open(str(clip)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 6
    assert (frames[0].width, frames[0].height) == (320, 180)
    assert bench.write_jpegs(clip, tmp_path / "jpegs") == 6
    result = predict_video(clip, Predictor("default"), detector=create_detector(None))
    assert result.error is None
    assert len(result.tracks) == 2
    assert all(t.frames == 6 for t in result.tracks)


def test_bench_argument_parsing_refuses_bad_values():
    bench = _module("bench_video")
    assert bench.parse_sizes("640x360,1280x720") == [(640, 360), (1280, 720)]
    assert bench.parse_ints("1,3", "--every", 1, 10) == [1, 3]
    for bad in ("640x", "641x360", "axb"):
        with pytest.raises(SystemExit, match="--sizes"):
            bench.parse_sizes(bad)
    with pytest.raises(SystemExit, match="between 1 and 3"):
        bench.parse_ints("4", "--faces", 1, 3)
    with pytest.raises(SystemExit, match="integers"):
        bench.parse_ints("1,x", "--every", 1, 10)


def test_jitter_keeps_the_size_changes_the_pixels_and_repeats_with_its_seed():
    acc = _module("video_accuracy")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (109, 89, 3), np.uint8))
    a = acc.jittered(image, np.random.default_rng(5))
    b = acc.jittered(image, np.random.default_rng(5))
    c = acc.jittered(image, np.random.default_rng(6))
    assert a.size == image.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_accuracy_is_per_attribute_then_averaged_and_skips_unknown_labels():
    acc = _module("video_accuracy")
    labels = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0], [0.0, 0.0]])
    decisions = np.array([[True, False], [False, True], [False, False], [False, False]])
    # attribute 0: 3 of 4 right; attribute 1: 2 of 3 known right
    assert acc.mean_attribute_accuracy(decisions, labels) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert acc.accuracy(decisions, labels).tolist() == [1.0, 0.0, 0.5, 1.0]
