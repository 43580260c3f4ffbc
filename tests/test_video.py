"""Videos, cameras and streams (faceattr.video, `faceattr predict` on videos): clips made here
with PyAV from the example photos, faces pasted onto a canvas and moved along known paths, so
every true track is known."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from faceattr.cli.app import app

av = pytest.importorskip("av")
pytest.importorskip("lap")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
W, H, FPS = 320, 240, 10
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _face(photo: str, box: tuple[int, int, int, int], side: int = 90) -> Image.Image:
    """The face in ``box`` of an example photo with a margin, resized to ``side`` pixels."""
    image = Image.open(EXAMPLES / photo).convert("RGB")
    x, y, w, h = box
    cx, cy, s = x + w / 2, y + h / 2, max(w, h) * 1.6
    return image.crop((int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2))).resize(
        (side, side)
    )


@functools.cache
def faces() -> dict[str, Image.Image]:
    return {
        "astronaut": _face("astronaut.jpg", (178, 57, 95, 120)),
        "right": _face("two-portraits.jpg", (622, 88, 141, 177)),
        "left": _face("two-portraits.jpg", (168, 53, 90, 116)),
    }


def scene(n: int, paths: dict[str, dict[int, tuple[int, int]]]) -> list[Image.Image]:
    """``n`` frames; ``paths``: face name -> frame -> top-left corner where it is pasted."""
    frames = []
    for i in range(n):
        canvas = Image.new("RGB", (W, H), (120, 130, 140))
        for name, where in paths.items():
            if i in where:
                canvas.paste(faces()[name], where[i])
        frames.append(canvas)
    return frames


def write_clip(
    path: Path,
    frames: list[Image.Image],
    *,
    codec: str = "libx264",
    audio: bool = False,
    bad_packet: int | None = None,
    gop: int | None = None,
) -> Path:
    """Encode ``frames`` at 10 fps (``audio``: with a silent AAC track; ``bad_packet``: that
    packet replaced by garbage, a frame FFmpeg cannot decode)."""
    fmt = {".mp4": "mp4", ".avi": "avi", ".mov": "mov", ".ts": "mpegts"}[path.suffix]
    out = av.open(str(path), "w", format=fmt)
    st = out.add_stream(codec, rate=FPS)
    st.width, st.height = frames[0].size
    if gop is not None:  # a key frame every `gop` frames: --start can jump near its time
        st.codec_context.gop_size = gop
    st.pix_fmt = {"mjpeg": "yuvj420p", "png": "rgb24"}.get(codec, "yuv420p")
    ast = out.add_stream("aac", rate=16000) if audio else None
    k = 0
    for image in frames:
        for packet in st.encode(av.VideoFrame.from_image(image)):
            if k == bad_packet:
                bad = av.Packet(b"\x00\x01garbage" * 60)
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                bad.stream = st
                packet = bad
            out.mux(packet)
            k += 1
    for packet in st.encode():
        out.mux(packet)
    if ast is not None:
        samples = int(16000 * len(frames) / FPS)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, start
            for packet in ast.encode(frame):
                out.mux(packet)
        for packet in ast.encode():
            out.mux(packet)
    out.close()
    return path


# The moving clip: the astronaut crosses left to right for all 30 frames; the right-hand
# portrait enters at frame 5 and leaves after frame 24, moving left.
MOVING = {
    "astronaut": {i: (10 + 6 * i, 10) for i in range(30)},
    "right": {i: (220 - 5 * i, 135) for i in range(5, 25)},
}
TRUE_SPANS = {"astronaut": (0.0, 2.9), "right": (0.5, 2.4)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    static = scene(8, {"left": dict.fromkeys(range(8), (110, 60))})
    gap = {"astronaut": {i: (40 + 2 * i, 60) for i in range(24) if not 10 <= i < 14}}
    return {
        "moving": write_clip(d / "moving.mp4", scene(30, MOVING), audio=True),
        # png: lossless, so identical pictures decode identically
        "static": write_clip(d / "static.mov", static, codec="png"),
        "gap": write_clip(d / "gap.mp4", scene(24, gap)),
        "corrupt": write_clip(
            d / "corrupt.avi",
            scene(20, {"left": dict.fromkeys(range(20), (110, 60))}),
            codec="mjpeg",
            bad_packet=10,
        ),  # fmt: skip
        "dir": d,
    }


@pytest.fixture(scope="module")
def predictor():
    from faceattr.inference.predictor import Predictor

    return Predictor()


@pytest.fixture(scope="module")
def detector():
    from faceattr.inference.detect import create_detector

    return create_detector(None)


def predict(path, predictor, detector, **options):
    from faceattr.video.pipeline import VideoOptions, predict_video

    return predict_video(path, predictor, detector=detector, options=VideoOptions(**options),
                         workers=1)  # fmt: skip


def true_face(box: list[float], frame: int) -> str | None:
    """The pasted face whose square holds the centre of ``box`` in ``frame``."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    for name, where in MOVING.items():
        if frame in where:
            x, y = where[frame]
            if x <= cx < x + 90 and y <= cy < y + 90:
                return name
    return None


def test_moving_faces_make_one_track_each_with_the_right_span(clips, predictor, detector):
    r = predict(clips["moving"], predictor, detector, frames=True)
    assert r.error is None and r.frames == 30 and r.width == W and r.fps == FPS
    assert len(r.tracks) == 2
    # No identity switch: every face of a track, in every frame, is the same true face.
    owner: dict[int, set[str | None]] = {}
    for fr in r.frame_results:
        for f in fr.faces:
            owner.setdefault(f.track, set()).add(true_face(f.box, fr.frame))
    assert sorted(map(tuple, owner.values())) == [("astronaut",), ("right",)]
    for t in r.tracks:
        (name,) = owner[t.id]
        start, end = TRUE_SPANS[name]
        assert abs(t.start - start) <= 0.2 and abs(t.end - end) <= 0.2, (name, t.start, t.end)
        assert abs(t.frames - round((end - start) * FPS + 1)) <= 2
        assert set(t.agreement) == set(predictor.attributes)
        assert all(0 <= a <= 1 for a in t.agreement.values())
        assert true_face(t.box, t.best_frame) == name  # the best frame shows this face
    js = r.to_json()
    assert list(js)[:8] == ["video", "width", "height", "fps", "frames", "duration", "tracks",
                            "corrupt_frames"]  # fmt: skip
    assert list(js["tracks"][0]) == ["id", "start", "end", "frames", "box", "best_frame",
                                     "probabilities", "attributes", "agreement"]  # fmt: skip
    json.dumps(js, allow_nan=False)


@pytest.mark.parametrize("fps", [2.0, 5.0])
def test_sparse_sampling_keeps_one_track_per_person(clips, predictor, detector, fps):
    r = predict(clips["moving"], predictor, detector, fps=fps, frames=True)
    owner: dict[int, set[str | None]] = {}
    for fr in r.frame_results:
        for f in fr.faces:
            owner.setdefault(f.track, set()).add(true_face(f.box, fr.frame))
    assert sorted(map(tuple, owner.values())) == [("astronaut",), ("right",)]


def test_aggregation_is_the_weighted_mean_logit_and_agreement_counts_frames():
    from faceattr.video.results import TrackFaces, logit

    faces = TrackFaces(0, 2)
    faces.add(np.array([0.9, 0.2]), 1.0, 0, 0.0, [0, 0, 10, 10], None)
    faces.add(np.array([0.3, 0.1]), 3.0, 1, 0.1, [0, 0, 10, 10], None)
    r = faces.result(["A", "B"], np.array([0.5, 0.5]))
    want = 1 / (1 + np.exp(-(logit(0.9) * 1 + logit(0.3) * 3) / 4))
    assert r.probabilities["A"] == pytest.approx(float(want), abs=1e-4)
    assert r.attributes == [] and r.agreement == {"A": 0.5, "B": 1.0}
    assert r.best_frame == 1 and r.frames == 2


def test_a_static_video_gives_what_predict_gives_on_one_frame(clips, predictor, detector):
    from faceattr.inference.predictor import iter_predictions

    r = predict(clips["static"], predictor, detector)
    assert len(r.tracks) == 1 and r.tracks[0].frames == 8
    with av.open(str(clips["static"])) as c:
        first = next(c.decode(video=0)).to_image()
    (one,) = list(iter_predictions([first], predictor, detector=detector, workers=0))
    (face,) = one.faces
    got = r.tracks[0].probability_array
    want = face.probability_array
    assert np.abs(got - want).max() < 1e-4
    assert r.tracks[0].attributes == face.attributes
    assert set(r.tracks[0].agreement.values()) == {1.0}


def test_track_gap_decides_whether_an_absence_ends_a_track(clips, predictor, detector):
    # The face is away for frames 10-13 (0.4 s).
    assert len(predict(clips["gap"], predictor, detector, track_gap=1.0).tracks) == 1
    parts = predict(clips["gap"], predictor, detector, track_gap=0.2).tracks
    assert len(parts) == 2
    assert parts[0].end == pytest.approx(0.9, abs=0.15)
    assert parts[1].start == pytest.approx(1.4, abs=0.15)


def test_every_n_carries_faces_between_searched_frames(clips, predictor, detector):
    r = predict(clips["moving"], predictor, detector, every=3, frames=True)
    assert len(r.tracks) == 2 and r.frames == 30
    searched = [fr for fr in r.frame_results if fr.frame % 3 == 0]
    between = [fr for fr in r.frame_results if fr.frame % 3 != 0]
    assert all(f.detected and f.probabilities for fr in searched for f in fr.faces)
    assert all(not f.detected and f.probabilities is None for fr in between for f in fr.faces)
    # The motion model keeps a carried box on its face (while the face is there: a face
    # that left is carried until the next search finds it gone).
    carried = [(f, fr.frame) for fr in between for f in fr.faces if fr.frame < 25]
    assert len(carried) > 20 and all(true_face(f.box, n) is not None for f, n in carried)
    assert sum(t.frames for t in r.tracks) == sum(len(fr.faces) for fr in searched)


def test_start_end_fps_and_max_frames_choose_the_frames(clips, predictor, detector):
    r = predict(clips["moving"], predictor, detector, start=1.0, end=2.0, frames=True)
    assert [fr.frame for fr in r.frame_results] == list(range(10, 21))
    r = predict(clips["moving"], predictor, detector, fps=5, frames=True)
    assert [fr.frame for fr in r.frame_results] == list(range(0, 30, 2))
    r = predict(clips["moving"], predictor, detector, max_frames=4)
    assert r.frames == 4 and [t.end for t in r.tracks] == [pytest.approx(0.3)]


def test_a_corrupt_frame_is_skipped_and_counted(clips, predictor, detector):
    r = predict(clips["corrupt"], predictor, detector)
    assert r.error is None and r.corrupt_frames == 1 and r.frames == 19
    assert len(r.tracks) == 1 and r.tracks[0].frames == 19


def test_tracker_motion_model_and_two_stage_matching():
    from faceattr.video.tracker import Tracker

    def run(tracker, xs, t0=0.0):
        return [tracker.update(t0 + 0.1 * i, np.array([[x, 50, 50, 50]]), [0.9])[0]
                for i, x in enumerate(xs)]  # fmt: skip

    # A face that speeds up: from 70 to 115 the boxes overlap too little (IoU 0.05) for a
    # tracker without motion; the velocity learnt from the first steps bridges it.
    tracker = Tracker(gap=1.0, high=0.7, low=0.3)
    assert run(tracker, [10, 30, 50, 70, 115, 160, 205]) == [[0]] * 7
    # The same jump from a standstill, with the nearness stage off: two tracks.
    assert run(Tracker(gap=1.0, reach=0.0), [70, 115]) == [[0], [1]]
    # A weak detection keeps the track (second stage) but does not start one.
    box = tracker.live[0].box_at(0.7)
    ids, _ = tracker.update(0.7, np.array([box + 3, [10, 150, 50, 50]]), [0.4, 0.4])
    assert ids == [0, None]
    _, ended = tracker.update(2.0, np.zeros((0, 4)), [])
    assert [t.id for t in ended] == [0] and tracker.live == []


def test_tracker_follows_faces_sampled_sparsely_without_swapping():
    """Frames far apart (fps=2): two faces of 50 px move 30-45 px between frames, so their
    boxes barely overlap from one frame to the next; nearness keeps each its track, and a
    face that appears far away starts its own."""
    from faceattr.video.tracker import Tracker

    tracker = Tracker(gap=1.0)
    got = []
    for i in range(6):
        a = [20 + 45 * i, 40, 50, 50]  # left to right
        b = [300 - 30 * i, 200, 52, 52]  # right to left, lower down
        ids, _ = tracker.update(0.5 * i, np.array([a, b], float), [0.9, 0.9])
        got.append(ids)
    assert got == [[0, 1]] * 6
    ids, _ = tracker.update(3.0, np.array([[600, 400, 50, 50]], float), [0.9])
    assert ids == [2]  # too far from both: a new person


def test_video_recognised_by_content(tmp_path, clips):
    from faceattr.video.probe import is_video_file

    renamed = tmp_path / "clip.dat"
    renamed.write_bytes(clips["moving"].read_bytes())
    assert is_video_file(renamed) and is_video_file(clips["static"])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert not is_video_file(text) and not is_video_file(EXAMPLES / "astronaut.jpg")
    fake = tmp_path / "fake.mkv"
    fake.write_text("hello")
    assert is_video_file(fake)  # named like a video: it gets a video's error


def test_cli_mixed_folder_table_json_and_csv(tmp_path, clips):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    (folder / "b.mp4").write_bytes(clips["moving"].read_bytes())
    res = invoke("predict", folder, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d.get("image") or d.get("video") for d in data] == [
        str(folder / "a.jpg"), str(folder / "b.mp4")]  # fmt: skip
    assert len(data[1]["tracks"]) == 2 and "frame_results" not in data[1]
    res = invoke("predict", folder / "b.mp4")
    assert res.exit_code == 0 and "track" in res.stdout and "0.00-2.90" in res.stdout
    out = tmp_path / "p.csv"
    res = invoke("predict", folder, "--csv", out)
    assert res.exit_code == 0, res.output
    rows = out.read_text().splitlines()
    assert rows[0].endswith(",start,end,frames,frame,time") and len(rows) == 1 + 1 + 2
    res = invoke("predict", folder / "b.mp4", "--csv", out, "--frames", "--overwrite")
    assert res.exit_code == 0
    assert len(out.read_text().splitlines()) == 1 + 30 + 20  # a row per face and frame


def test_cli_bad_inputs_are_errors_and_the_rest_is_processed(tmp_path, clips):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "text.mp4").write_text("not a video")
    (folder / "photo.mkv").write_bytes((EXAMPLES / "astronaut.jpg").read_bytes())
    data = clips["moving"].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    audio = tmp_path / "audio.mp4"
    out = av.open(str(audio), "w")
    st = out.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")  # fmt: skip
    frame.sample_rate, frame.pts = 16000, 0
    for packet in [*st.encode(frame), *st.encode()]:
        out.mux(packet)
    out.close()
    (folder / "audio.mp4").write_bytes(audio.read_bytes())
    (folder / "good.mp4").write_bytes(clips["static"].read_bytes())
    res = invoke("predict", folder, "--json")
    assert res.exit_code == 1
    by_name = {Path(d["video"]).name: d for d in json.loads(res.stdout)}
    assert by_name["good.mp4"]["error"] is None and len(by_name["good.mp4"]["tracks"]) == 1
    assert "audio only" in by_name["audio.mp4"]["error"]
    assert "is not a video: its content is text" in by_name["text.mp4"]["error"]
    assert "is not a video: its content is a JPEG image" in by_name["photo.mkv"]["error"]
    assert "not a video, or truncated or damaged" in by_name["truncated.mp4"]["error"]
    assert "4 of 5 input(s) could not be read" in res.stderr
    assert "Traceback" not in res.output


def test_cli_options_are_checked(clips):
    for args in (["--every", "0"], ["--fps", "0"], ["--start", "-1"], ["--track-gap", "-1"]):
        res = invoke("predict", clips["static"], *args)
        assert res.exit_code == 2 and "must be" in res.output.lower(), args
    res = invoke("predict", clips["static"], "--start", "2", "--end", "1")
    assert res.exit_code == 2 and "must be after start" in res.output
    res = invoke("predict", clips["static"], "--max-pixels", "1000")
    assert res.exit_code == 1 and "320x240 = 76,800 pixels, more than `--max-pixels 1000`" in (
        res.output
    )


def test_annotated_video_has_every_frame_and_the_audio(tmp_path, clips):
    target = tmp_path / "annotated.mp4"
    crops = tmp_path / "crops"
    res = invoke("predict", clips["moving"], "--annotate", target, "--save-crops", crops)
    assert res.exit_code == 0, res.output
    with av.open(str(target)) as c:
        assert len(c.streams.audio) == 1
        pictures = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(pictures) == 30
    with av.open(str(clips["moving"])) as c:
        plain = next(c.decode(video=0)).to_ndarray(format="rgb24")
    # The box is drawn in the annotation's green where the plain frame has none.
    green = (pictures[0][..., 1] > 180) & (pictures[0][..., 0] < 120)
    assert green.sum() > 50 and ((plain[..., 1] > 180) & (plain[..., 0] < 120)).sum() < 10
    assert sorted(p.name for p in crops.iterdir()) == ["moving_track0.jpg", "moving_track1.jpg"]
    # Not replaced without --overwrite; a folder for photos and videos together.
    res = invoke("predict", clips["moving"], "--annotate", target)
    assert res.exit_code == 2 and "already exists" in res.output
    res = invoke("predict", clips["moving"], EXAMPLES / "astronaut.jpg", "--annotate", target)
    assert res.exit_code == 2 and "Give --annotate a folder" in res.output
    res = invoke("predict", clips["moving"], EXAMPLES / "astronaut.jpg", "--annotate",
                 tmp_path / "both")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["astronaut.jpg",
                                                                      "moving.mp4"]  # fmt: skip


def test_without_pyav_a_video_names_the_extra(clips, monkeypatch, predictor):
    from faceattr.video.pipeline import predict_video

    monkeypatch.setitem(sys.modules, "av", None)
    r = predict_video(clips["static"], predictor)
    assert 'pip install "faceattr[video]"' in r.error


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the folder to a client that logs in as me:secret (basic authentication)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        import base64

        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"me:secret").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="clip"')
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def http_clip(tmp_path):
    write_clip(tmp_path / "clip.ts", scene(30, MOVING))
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://me:secret@127.0.0.1:{server.server_address[1]}/clip.ts"
    server.shutdown()
    server.server_close()


def test_stream_gives_a_json_line_per_track_then_the_summary(http_clip):
    res = invoke("predict", "--source", http_clip, "--json")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    *tracks, summary = lines
    assert len(summary["tracks"]) == 2 and summary["frames"] == 30
    assert sorted(t["id"] for t in tracks) == [0, 1]
    # The password reaches the server, never the output.
    assert all(t["video"] == http_clip.replace("secret", "***") for t in tracks)
    assert "secret" not in res.output
    res = invoke("predict", "--source", http_clip)  # lines as tracks end, then the table
    assert res.exit_code == 0
    assert res.stdout.count(": track ") == 2 and "0.00-2.90" in res.stdout


def test_unreachable_stream_and_missing_camera_are_clear_errors():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = invoke("predict", "--source", f"http://me:secret@127.0.0.1:{port}/x.ts", "--json")
    assert res.exit_code == 1 and "Cannot open stream" in json.loads(res.stdout)["error"]
    assert "secret" not in res.output and json.loads(res.stdout)["video"].startswith("http://me:")
    if sys.platform.startswith("linux"):
        res = invoke("predict", "--source", "97")
        assert res.exit_code == 1 and "Cannot open camera 97" in res.output
    res = invoke("predict", "--source", "ftp://example.com/x")
    assert res.exit_code == 2 and "neither a camera nor a stream" in res.output
    assert "Traceback" not in res.output


def test_ctrl_c_on_a_live_source_ends_with_the_tracks_so_far(clips, predictor, detector,
                                                             monkeypatch):  # fmt: skip
    from faceattr.video import pipeline, reader

    def interrupted_after(n):
        frames = reader.VideoReader.frames

        def frames_then_ctrl_c(self, **kw):
            for k, frame in enumerate(frames(self, **kw)):
                if k == n:
                    raise KeyboardInterrupt
                yield frame

        return frames_then_ctrl_c

    monkeypatch.setattr(reader.VideoReader, "frames", interrupted_after(12))
    monkeypatch.setattr(pipeline, "open_source",
                        lambda source, kind: reader.open_video(source))  # fmt: skip
    ended = []
    r = pipeline.predict_video(clips["moving"], predictor, detector=detector, live="stream",
                               on_track=ended.append, workers=0)  # fmt: skip
    assert r.interrupted and r.frames == 12 and len(r.tracks) == 2
    assert [t.id for t in ended] == [0, 1]
    with pytest.raises(KeyboardInterrupt):  # a file is not live: Ctrl-C is Ctrl-C
        pipeline.predict_video(clips["moving"], predictor, detector=detector, workers=0)


def test_python_api_answers_what_the_cli_prints(clips):
    import faceattr

    inputs = [EXAMPLES / "astronaut.jpg", clips["moving"]]
    api = faceattr.predict(inputs, every=2, max_frames=10, frames=True)
    res = invoke("predict", *inputs, "--every", "2", "--max-frames", "10", "--frames", "--json")
    assert res.exit_code == 0, res.output
    assert api == json.loads(res.stdout)
    assert "image" in api[0] and api[1]["frames"] == 10 and len(api[1]["frame_results"]) == 10


def test_start_jumps_to_a_key_frame_and_keeps_frame_numbers(tmp_path, predictor, detector):
    from faceattr.video.reader import open_video

    clip = write_clip(tmp_path / "keys.mp4", scene(30, MOVING), gop=5)
    with open_video(clip) as reader:
        first = next(reader.frames(start=1.5))
        assert reader.seeked and first.index == 15 and first.time == pytest.approx(1.5)
    r = predict(clip, predictor, detector, start=1.5, frames=True)
    assert [fr.frame for fr in r.frame_results] == list(range(15, 30))
    assert all(true_face(f.box, fr.frame) for fr in r.frame_results for f in fr.faces)
    target = tmp_path / "part.mp4"
    res = invoke("predict", clip, "--start", "1.5", "--annotate", target)
    assert res.exit_code == 0, res.output
    with av.open(str(target)) as c:
        pictures = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(pictures) == 15
    # Frame 15's boxes are drawn on frame 15: the astronaut's box is green around x 100-190.
    x, y = MOVING["astronaut"][15]
    green = (pictures[0][..., 1] > 180) & (pictures[0][..., 0] < 120)
    columns = np.nonzero(green[y : y + 90].any(axis=0))[0]
    assert columns.size and x <= columns.min() and columns.max() < x + 90


def test_a_camera_through_a_virtual_device(monkeypatch):
    """The camera path end to end, on FFmpeg's lavfi virtual input device standing in for
    /dev/video0 (no camera here): an example photo shown at 10 frames a second. The source is
    opened as a camera (`--source 0`), tracked live, and each track comes out as it ends."""
    import faceattr.video.reader as reader

    photo = EXAMPLES / "astronaut.jpg"
    device = f"movie={photo},loop=loop=-1:size=1,setpts=N/10/TB,format=yuv420p"
    opened = []

    def virtual_camera(source: str) -> tuple[str, str]:
        opened.append(source)
        return device, "lavfi"

    monkeypatch.setattr(reader, "camera_input", virtual_camera)
    res = invoke("predict", "--source", "0", "--max-frames", "12", "--json")
    assert res.exit_code == 0, res.output
    assert opened == ["0"]
    *ended, summary = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    # One JSON line for the track as it ended, then the summary holding the same track.
    assert [(t["video"], t["id"], t["frames"]) for t in ended] == [("0", 0, 12)]
    assert summary["video"] == "0" and summary["error"] is None
    assert summary["frames"] == 12 and summary["duration"] is None  # live: no length
    [track] = summary["tracks"]
    assert track["frames"] == 12 and track["attributes"] == ended[0]["attributes"]
    assert "Smiling" in track["attributes"]  # the astronaut smiles, as predict says of her
