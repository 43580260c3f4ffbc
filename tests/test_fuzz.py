"""Fuzzed readers: whatever bytes a user's file holds, faceattr answers with a result or a
faceattr error (a message, exit code 1), never another exception (a traceback).

Each reader gets a few hundred generated inputs in the default suite: mutations of a valid
file (lines cut, fields dropped, values swapped, bytes flipped) and free text, the same
inputs every run. Run more, freshly drawn, with ``FACEATTR_FUZZ_EXAMPLES=5000 pytest -m fuzz``.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.errors import FaceAttrError

EXAMPLES = int(os.environ.get("FACEATTR_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 200,  # the default suite sees the same inputs every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
pytestmark = pytest.mark.fuzz

NAMES = [f"{i:06d}.jpg" for i in range(1, 5)]
ATTRS = list(CELEBA_ATTRIBUTES)

# Pieces that readers treat specially: numbers, signs, separators, quotes, non-ASCII.
TOKENS = st.sampled_from(
    ["-1", "1", "0", "2", "", " ", "  ", ",", ";", "\t", '"', "NA", "nan", "1e309", "-0",
     "000001.jpg", "../x.jpg", "image_id", "partition", "Smiling", "Male", "é", "\x00", "\r",
     "\n", "999999999999999999999", "train", "valid", "test", "x"]
)  # fmt: skip


def _official_attr_text() -> str:
    rows = [str(len(NAMES)), " ".join(ATTRS) + " "]
    rng = np.random.default_rng(0)
    for name in NAMES:
        values = rng.choice([-1, 1], size=len(ATTRS))
        rows.append(name + "".join(f" {v:2d}" for v in values))
    return "\r\n".join(rows) + "\r\n"


def _kaggle_attr_text() -> str:
    rows = [",".join(["image_id", *ATTRS])]
    rng = np.random.default_rng(1)
    for name in NAMES:
        rows.append(",".join([name, *map(str, rng.choice([-1, 1], size=len(ATTRS)))]))
    return "\n".join(rows) + "\n"


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` with a few lines cut, repeated, shuffled, or with tokens spliced in."""
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "dup", "splice", "cut", "swap", "garbage"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "splice":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(TOKENS) + lines[i][at:]
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = draw(st.text(max_size=80)) + "\n"
    return "".join(lines)


def _any_text(valid: str):
    return st.one_of(mutated(valid), st.text(max_size=300))


def _expect_result_or_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except FaceAttrError:
        return None


def _celeba_root(base: Path, attr_text: str, *, kaggle: bool) -> Path:
    root = Path(tempfile.mkdtemp(dir=base))
    images = root / "img_align_celeba"
    images.mkdir()
    for name in NAMES:
        (images / name).write_bytes(b"")  # the readers only look for the files
    if kaggle:
        (root / "list_attr_celeba.csv").write_bytes(attr_text.encode("utf-8", "surrogatepass"))
        part = "image_id,partition\n" + "".join(f"{n},{i % 3}\n" for i, n in enumerate(NAMES))
        (root / "list_eval_partition.csv").write_text(part)
    else:
        (root / "list_attr_celeba.txt").write_bytes(attr_text.encode("utf-8", "surrogatepass"))
        part = "".join(f"{n} {i % 3}\r\n" for i, n in enumerate(NAMES))
        (root / "list_eval_partition.txt").write_text(part)
    return root


@FUZZ
@given(text=_any_text(_official_attr_text()))
def test_celeba_txt_reader(tmp_path, text):
    from faceattr.data.celeba import read_celeba

    table = _expect_result_or_error(read_celeba, _celeba_root(tmp_path, text, kaggle=False))
    if table is not None:
        assert table.labels.shape == (len(table), len(table.attributes))


@FUZZ
@given(text=_any_text(_kaggle_attr_text()))
def test_kaggle_csv_reader(tmp_path, text):
    from faceattr.data.celeba import read_celeba

    table = _expect_result_or_error(read_celeba, _celeba_root(tmp_path, text, kaggle=True))
    if table is not None:
        assert table.labels.shape == (len(table), len(table.attributes))


@FUZZ
@given(text=_any_text(_official_attr_text()))
def test_celeba_partition_reader(tmp_path, text):
    """The partition file, fuzzed beside a valid attribute file."""
    from faceattr.data.celeba import read_celeba

    root = _celeba_root(tmp_path, _official_attr_text(), kaggle=False)
    lines = [f"{n} {i % 3}" for i, n in enumerate(NAMES)]
    fuzzed = text if text.strip() and not text.startswith("4") else "\n".join(lines)
    (root / "list_eval_partition.txt").write_bytes(fuzzed.encode("utf-8", "surrogatepass"))
    _expect_result_or_error(read_celeba, root)


def _wflw_line() -> str:
    from faceattr.data.wflw import format_wflw_line

    landmarks = np.tile(np.linspace(10, 90, 98 * 2).reshape(98, 2), 1)
    return format_wflw_line(landmarks, (5, 5, 95, 95), [0, 1, 0, 0, 1, 0], "0--Parade/x.jpg")


@FUZZ
@given(text=_any_text(_wflw_line() + "\n" + _wflw_line() + "\n"))
def test_wflw_annotation_reader(tmp_path, text):
    from faceattr.data.wflw import read_wflw_annotations

    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "list.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _expect_result_or_error(read_wflw_annotations, path)


CSV_DATASET = (
    "image,split,identity,Smiling,Has Scar\n"
    "a.jpg,train,ann,1,\n"
    "b.jpg,valid,bob,0,1\n"
    "c.jpg,test,ann,,0\n"
)


@FUZZ
@given(text=_any_text(CSV_DATASET))
def test_csv_dataset_reader(tmp_path, text):
    from faceattr.data.csvdata import read_csv_dataset

    root = Path(tempfile.mkdtemp(dir=tmp_path))
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / name).write_bytes(b"")
    (root / "labels.csv").write_bytes(text.encode("utf-8", "surrogatepass"))
    table = _expect_result_or_error(read_csv_dataset, root, root / "labels.csv")
    if table is not None:
        assert len(table) >= 1


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (200, 120, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (20, 120, 240)).save(buf, format="JPEG")
    return buf.getvalue()


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, or with a run of random bytes spliced in."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "flip", "splice"]))
        if op == "cut" and out:
            del out[draw(st.integers(0, len(out))) :]
        elif op == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        else:
            at = draw(st.integers(0, len(out)))
            out[at:at] = draw(st.binary(max_size=32))
    return bytes(out)


@FUZZ
@given(data=st.one_of(damaged_bytes(_png_bytes()), damaged_bytes(_jpeg_bytes()), st.binary()))
def test_image_loader(tmp_path, data):
    from faceattr.data.images import load_image

    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "x.jpg"
    path.write_bytes(data)
    image = _expect_result_or_error(load_image, path)
    if image is not None:
        assert image.mode == "RGB" and image.size[0] > 0 and image.size[1] > 0


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> dict[str, bytes]:
    """A small celebnet model in both file formats."""
    from faceattr.engine.export import export_model
    from faceattr.models import ModelInfo, create_model, save_model_file

    folder = tmp_path_factory.mktemp("fuzz-model")
    model = create_model("celebnet", 3, num_features=8)
    info = ModelInfo("celebnet", ["Male", "Smiling", "Young"], num_features=8, img_size=40)
    path = save_model_file(folder / "model.safetensors", model, info)
    export_model(path, out=folder / "model.onnx")
    return {
        "safetensors": path.read_bytes(),
        "onnx": (folder / "model.onnx").read_bytes(),
    }


def _header_damage(data: bytes):
    """Damage concentrated where the readers parse: the first few hundred bytes."""
    head = min(len(data), 600)
    return st.tuples(st.integers(0, head - 1), st.integers(1, 255)).map(
        lambda p: data[: p[0]] + bytes([data[p[0]] ^ p[1]]) + data[p[0] + 1 :]
    )


@FUZZ
@given(data=st.data())
def test_model_file_readers(tmp_path, model_bytes, data):
    from faceattr.models import ModelFile, load_model_file, read_model_info

    kind = data.draw(st.sampled_from(["safetensors", "onnx"]))
    original = model_bytes[kind]
    blob = data.draw(
        st.one_of(damaged_bytes(original), _header_damage(original), st.binary(max_size=200))
    )
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"m.{kind}"
    path.write_bytes(blob)
    _expect_result_or_error(read_model_info, path)
    if kind == "safetensors":
        loaded = _expect_result_or_error(load_model_file, path)
        if loaded is not None:  # only an intact file loads: the digest covers every weight
            assert blob[-1000:] == original[-1000:]
    else:
        backend = _expect_result_or_error(lambda: ModelFile.for_backend(path, "onnx").open())
        if backend is not None:
            x = np.zeros((1, 3, 40, 40), np.float32)
            _expect_result_or_error(lambda: backend.logits(x))


# --- the query language of `search`, and the redaction of secrets --------------------------

QUERY_PIECES = st.sampled_from(
    ["Smiling", "male", "EYEGLASSES", "Smilling", "and", "or", "not", "&", "|", "!", "(", ")",
     ">", ">=", "<", "<=", "0.5", "1", "2", ".3", "0.", "1e3", " ", "\t", "\n", "@", "é", "\x00",
     "((((", "not not", ")))", "_", "9" * 400]
)  # fmt: skip


@st.composite
def nested(draw) -> str:
    """A name inside a run of "(" and "not" (balanced or not), as deep as 400 levels."""
    opens = draw(st.lists(st.sampled_from(["(", "not ", "!", "not("]), max_size=400))
    closes = sum(o.endswith("(") for o in opens) + draw(st.integers(-2, 2))
    return "".join(opens) + "Smiling" + ")" * max(closes, 0)


@FUZZ
@given(
    query=st.one_of(
        st.lists(QUERY_PIECES, max_size=40).map(" ".join),
        st.lists(QUERY_PIECES, max_size=40).map("".join),
        nested(),
        st.text(max_size=200),
    )
)
def test_query_parser(query):
    """Any text is a query tree (which evaluates) or a QueryError (exit 2), nothing else."""
    from faceattr.collection.query import QueryError, attributes_of, evaluate, parse

    try:
        node = parse(query, ATTRS)
    except QueryError as e:
        assert e.exit_code == 2 and "column" in e.message and len(e.message) < 1000
        return
    probs = np.random.default_rng(0).random((len(ATTRS), 5))
    matches, score = evaluate(node, lambda i: probs[i], [0.5] * len(ATTRS))
    assert matches.dtype == bool and matches.shape == score.shape == (5,)
    assert ((score >= 0) & (score <= 1)).all() and attributes_of(node)


@FUZZ
@given(password=st.text(min_size=1, max_size=40).filter(lambda p: "\n" not in p))
def test_redaction_hides_any_password(password):
    from urllib.parse import quote

    from faceattr.redaction import redact

    url = f"postgresql://me:{password}@db.example:5432/photos"
    assert redact(url) == "postgresql://me:***@db.example:5432/photos"
    query = f"postgresql://me@db/photos?sslmode=require&password={quote(password, safe='')}"
    assert redact(query) == "postgresql://me@db/photos?sslmode=require&password=***"
    assert isinstance(redact(password, url), str)  # never raises
