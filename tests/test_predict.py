"""`faceattr predict` on photos: detection, alignment, pictures, odd inputs, Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import faceattr
from faceattr.cli.app import app
from faceattr.inference.detect import available_detectors

EXAMPLES = Path(__file__).parents[1] / "examples"
ASTRONAUT = EXAMPLES / "astronaut.jpg"
needs_detector = pytest.mark.skipif(not available_detectors(), reason="no face detector installed")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@needs_detector
def test_detects_and_aligns_the_astronaut(trained_run, tmp_path):
    crops, drawn = tmp_path / "crops", tmp_path / "drawn"
    r = invoke("predict", ASTRONAUT, "--model", trained_run, "--json",
               "--save-crops", crops, "--annotate", drawn)  # fmt: skip
    assert r.exit_code == 0, r.output
    [entry] = json.loads(r.stdout)
    assert entry["error"] is None and len(entry["faces"]) == 1
    face = entry["faces"][0]
    x, y, w, h = face["box"]
    assert 0 <= x < entry["width"] and 0 <= y < entry["height"] and w > 50 and h > 50
    (lx, ly), (rx, ry), _, (mlx, mly), _ = face["landmarks"]
    assert lx < rx and ly < mly  # left eye left of right eye, eyes above the mouth
    assert len(face["probabilities"]) == 40
    [crop] = list(crops.iterdir())
    assert Image.open(crop).size == (178, 218)
    [picture] = list(drawn.iterdir())
    assert Image.open(picture).size == (entry["width"], entry["height"])


@needs_detector
def test_faces_are_numbered_from_0_everywhere(tmp_path, monkeypatch):
    """The table, the CSV, the JSON's order, the crops' names and the annotated labels give
    the two faces of a photo the same numbers (0 and 1)."""
    import faceattr.inference.draw as draw

    photo = EXAMPLES / "two-portraits.jpg"
    labels: list[str] = []
    real_label = draw.face_label

    def spy(*args, **kwargs):
        labels.append(real_label(*args, **kwargs))
        return labels[-1]

    monkeypatch.setattr(draw, "face_label", spy)
    crops, drawn = tmp_path / "crops", tmp_path / "drawn"
    r = invoke("predict", photo, "--save-crops", crops, "--annotate", drawn)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert f"{photo} face 0" in text and f"{photo} face 1" in text and "face 2" not in text
    assert sorted(p.name for p in crops.iterdir()) == ["two-portraits_face0.jpg",
                                                       "two-portraits_face1.jpg"]  # fmt: skip
    assert [label.splitlines()[0] for label in labels] == ["face 0", "face 1"]
    r = invoke("predict", photo, "--csv", tmp_path / "p.csv", "--json")
    import csv

    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    faces = json.loads(r.stdout)[0]["faces"]
    assert [row["face"] for row in rows] == ["0", "1"]
    for row, face in zip(rows, faces, strict=True):  # CSV face k is the JSON's faces[k]
        assert float(row["x"]) == pytest.approx(face["box"][0])


@needs_detector
def test_no_face_is_a_valid_answer(trained_run, tmp_path):
    Image.new("RGB", (1, 1), (90, 90, 90)).save(tmp_path / "tiny.png")
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(tmp_path / "blank.jpg")
    r = invoke("predict", tmp_path / "tiny.png", tmp_path / "blank.jpg", "--model", trained_run,
               "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [e["faces"] for e in json.loads(r.stdout)] == [[], []]


@needs_detector
def test_python_api_detects(trained_run):
    [result] = faceattr.predict(ASTRONAUT, model=trained_run)
    assert len(result["faces"]) == 1 and result["error"] is None
    [result] = faceattr.predict(Image.open(ASTRONAUT), model=trained_run, no_detect=True)
    assert result["faces"][0]["box"][:2] == [0.0, 0.0]


def test_python_api_speaks_the_cli(trained_run, synthetic_root, tmp_path):
    """faceattr.predict takes folders and the CLI's option names, and answers what
    `predict --json` prints; help() shows the real signature; dir() the public API."""
    import inspect

    folder = tmp_path / "crops"
    folder.mkdir()
    for image in sorted((synthetic_root / "img_align_celeba").glob("*.jpg"))[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    api = faceattr.predict([folder, ASTRONAUT], model=trained_run, no_detect=True, tta="flip")
    r = invoke("predict", folder, ASTRONAUT, "--model", trained_run, "--no-detect", "--tta",
               "flip", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert api == json.loads(r.stdout) and len(api) == 4
    signature = inspect.signature(faceattr.predict)
    assert {"no_detect", "min_face_size", "max_faces", "recursive"} <= set(signature.parameters)
    assert not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    assert dir(faceattr) == ["__version__", "index", "predict", "search"]


def test_unknown_detector_lists_choices(trained_run):
    r = invoke("predict", ASTRONAUT, "--model", trained_run, "--detector", "yolo")
    assert r.exit_code == 2 and "retinaface" in r.stderr


def test_image_modes_are_handled(trained_run, tmp_path):
    rgb = Image.open(ASTRONAUT).resize((128, 128))
    rgb.convert("L").save(tmp_path / "grey.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(tmp_path / "16bit.png")
    r = invoke("predict", tmp_path, "--model", trained_run, "--no-detect", "--json")
    assert r.exit_code == 0, r.output
    entries = json.loads(r.stdout)
    assert len(entries) == 4 and all(len(e["faces"]) == 1 for e in entries)


def test_default_model_ships_inside_the_package():
    from faceattr.models import read_model_info
    from faceattr.models.file import default_model_path

    path = default_model_path()
    # An ensemble of three small models, fp16 weights in both files (docs/default-model.md).
    assert path.exists() and path.stat().st_size < 30e6
    assert default_model_path("onnx").stat().st_size < 30e6
    info = read_model_info(path)
    assert len(info.attributes) == 40 and len(info.thresholds) == 40
    assert "non-commercial" in info.license
    assert info.arch == "ensemble" and read_model_info(default_model_path("onnx")).members


def test_default_model_thresholds_follow_its_policy():
    """Both shipped files carry the same thresholds, chosen by the policy their metadata
    records: tuned for accuracy where that beat 0.5 under cross-validation, 0.5 elsewhere."""
    from faceattr.config import TrainConfig
    from faceattr.models.file import ModelFile, default_model_path

    files = [ModelFile.resolve(default_model_path(f)) for f in ("safetensors", "onnx")]
    for file in files:
        file.read_verified()  # the weights still match their digests
        info = file.info
        policy = info.extra["threshold_policy"]
        assert policy["policy"] == "cross-validated" and policy["split"] == "valid"
        assert policy["metric"] == TrainConfig().threshold_metric == "accuracy"
        assert policy["images"] == 1428 and policy["folds_by"] == "identity"
        tuned = [a for a, t in zip(info.attributes, info.thresholds, strict=True) if t != 0.5]
        assert tuned == policy["tuned"] and 0 < len(tuned) < 40
        for name in tuned:  # each won out of fold
            oof = policy["out_of_fold"][name]
            assert oof["tuned"] > oof["at_0.5"]
        assert info.thresholds == files[0].info.thresholds
    # The shipped thresholds no longer flip at far-apart probabilities.
    assert all(0.3 < t < 0.7 for t in files[0].info.thresholds)


def _table_rows(text: str) -> dict[str, list[str]]:
    """attribute -> its cells, from a rendered predict table."""
    rows = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line[1:-1].split("│")]
        if len(cells) == 4 and cells[0] and cells[0] != "attribute":
            rows[cells[0]] = cells[1:]
    return rows


def test_predict_says_which_threshold_decided(tmp_path):
    """The table, the JSON and the CSV say which threshold decided each attribute, and
    where it came from: the model's tuned value, 0.5, or the caller's --threshold."""
    import csv

    from faceattr.models.file import ModelFile, default_model_path

    info = ModelFile.resolve(default_model_path("onnx")).info
    tuned = info.extra["threshold_policy"]["tuned"]
    r = invoke("predict", ASTRONAUT, "--no-detect", "--json", "--csv", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    [face] = json.loads(r.stdout)[0]["faces"]
    probs, thresholds = face["probabilities"], face["thresholds"]
    assert list(thresholds) == list(probs) == list(info.attributes)
    assert thresholds == dict(zip(info.attributes, info.thresholds, strict=True))
    assert face["threshold_sources"] == {a: "tuned" if a in tuned else "0.5" for a in probs}
    order = sorted(probs, key=lambda a: -probs[a])
    assert face["attributes"] == [a for a in order if probs[a] >= thresholds[a]]
    [row] = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    assert row["attributes"].split() == face["attributes"] and row["error"] == ""
    assert float(row["Smiling"]) == probs["Smiling"]

    r = invoke("predict", ASTRONAUT, "--no-detect")
    assert r.exit_code == 0, r.output
    rows = _table_rows(r.stdout)
    assert set(rows) == set(probs)
    for name, (_, threshold, present) in rows.items():
        value = f"{thresholds[name]:.3f}"
        assert threshold == (f"{value} tuned" if name in tuned else value), name
        assert (present == "yes") == (name in face["attributes"]), name
    assert "present: probability >= threshold" in " ".join(r.stdout.split())

    r = invoke("predict", ASTRONAUT, "--no-detect", "--threshold", "0.3", "--json")
    [face] = json.loads(r.stdout)[0]["faces"]
    assert set(face["thresholds"].values()) == {0.3}
    assert set(face["threshold_sources"].values()) == {"given"}
    assert face["attributes"] == [a for a in order if probs[a] >= 0.3]
    r = invoke("predict", ASTRONAUT, "--no-detect", "--threshold", "0.3", "--top", "3")
    rows = _table_rows(r.stdout)
    assert len(rows) == 3 and {c[1] for c in rows.values()} == {"0.300 --threshold"}


@needs_detector
def test_readme_shows_the_real_output_of_its_command(monkeypatch):
    """The README's example is the whole output of `faceattr predict examples/astronaut.jpg`
    (probabilities within 0.002: ONNX Runtime may round differently on another CPU)."""
    monkeypatch.chdir(EXAMPLES.parent)
    readme = Path("README.md").read_text(encoding="utf-8")
    command = "$ faceattr predict examples/astronaut.jpg\n"
    start = readme.index(command) + len(command)
    shown = readme[start : readme.index("```", start)].splitlines()
    r = invoke("predict", "examples/astronaut.jpg")
    assert r.exit_code == 0, r.output
    real = r.stdout.splitlines()
    assert len(shown) == len(real) == 46
    assert shown[:4] == real[:4] and shown[-2:] == real[-2:]
    want, got = _table_rows("\n".join(shown)), _table_rows("\n".join(real))
    assert set(want) == set(got) and len(want) == 40
    for name, (p, threshold, present) in want.items():
        assert abs(float(p) - float(got[name][0])) <= 0.002, name
        assert (threshold, present) == tuple(got[name][1:]), name


@needs_detector
def test_default_model_on_the_example_photo():
    [result] = faceattr.predict(ASTRONAUT)  # no model argument: the packaged one
    [face] = result["faces"]
    # A broadly smiling face with an open mouth and no beard: the default model must see that.
    for name in ("Smiling", "Mouth_Slightly_Open", "No_Beard"):
        assert name in face["attributes"], face["probabilities"]
    assert face["probabilities"]["Eyeglasses"] < 0.1 and face["probabilities"]["Wearing_Hat"] < 0.1


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessing_matches_the_pixel_steps_and_the_model_file():
    from faceattr.data import cut_box
    from faceattr.data.transforms import Preprocessing, normalize, preprocess
    from faceattr.models import read_model_info
    from faceattr.models.file import default_model_path

    info = read_model_info(default_model_path())
    prep = Preprocessing.from_info(info)
    assert (prep.img_size, prep.crop) == (info.img_size, tuple(info.crop))
    assert prep.mean == tuple(info.mean) and prep.std == tuple(info.std)
    photo = Image.open(ASTRONAUT).convert("RGB")
    box = (-20.0, 30.5, 180.0, 230.5)  # reaches past the left edge: grey padding
    np.testing.assert_array_equal(prep.pixels(photo), preprocess(photo, info.img_size, info.crop))
    expected = preprocess(cut_box(photo, box), info.img_size, info.crop)
    np.testing.assert_array_equal(prep.pixels(photo, box), expected)
    batch = prep.batch([photo, photo], [None, box])
    assert batch.dtype == np.uint8 and batch.shape == (2, 3, info.img_size, info.img_size)
    np.testing.assert_array_equal(batch[1], expected)
    # numpy and torch normalisation agree, and both match the old function
    import torch

    x = torch.from_numpy(batch)
    as_numpy = prep.normalize(batch)
    assert as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, prep.normalize(x).numpy(), atol=1e-6)
    np.testing.assert_array_equal(prep.normalize(x), normalize(x, info.mean, info.std))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"img_size": 0}, "positive whole number"),
        ({"crop": (0.5, 0.0, 0.5, 1.0)}, "crop .* is empty"),
        ({"crop": (0.0, 0.0, 1.0)}, "crop must be 4 finite numbers"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
    ],
)
def test_preprocessing_rejects_bad_settings(changes, message):
    from faceattr.data.transforms import Preprocessing

    with pytest.raises(ValueError, match=message):
        Preprocessing(**{"img_size": 64, **changes})


def test_preprocessing_needs_no_torch():
    """An inference path without torch (ONNX Runtime) can import and use it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from PIL import Image\n"
        "from faceattr.data.transforms import Preprocessing\n"
        "p = Preprocessing(32)\n"
        "x = p.normalize(p.batch([Image.new('RGB', (50, 60))], [(0, 0, 40, 40)]))\n"
        "assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
