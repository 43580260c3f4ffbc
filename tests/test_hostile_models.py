"""Model files and run files are untrusted input: whatever a file says, faceattr answers with a
result or a faceattr error (a message and exit code 1), never a traceback, a file read from
elsewhere, or an allocation the file asked for.

- ONNX tensors kept in other files (``external_data``) are refused before ONNX Runtime sees
  the model (it would read them from the current folder, unchecked);
- a model's metadata is checked against its schema (types, ranges, lengths) before any field
  is used, with one message naming every problem; fuzzed here (marker ``fuzz``);
- a run's resume state, ``config.json``, ``metrics-*.json``, ``history.csv`` and predictions
  of the wrong shape give a message from ``train --resume``, ``eval``, ``finetune`` and
  ``report``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.errors import FaceAttrError, ModelError
from faceattr.models.digest import onnx_external_data, with_onnx_metadata
from faceattr.models.file import ModelFile
from faceattr.models.info import ModelInfo, metadata_problems

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ATTRS = ["Male", "Smiling", "Young"]
SECRET = b"top secret: the bytes of a file the model must never read...."


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def refused(result, *fragments: str) -> None:
    """The command ended with exit code 1 and a message holding ``fragments``, no traceback."""
    text = said(result)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# --- ONNX tensors whose data lives in another file ---------------------------------------------


def _external(tensor: Any, location: str, *, entries: bool = True, flag: bool = True) -> Any:
    from onnx import TensorProto

    if flag:
        tensor.data_location = TensorProto.EXTERNAL
    if entries:
        for key, value in (("location", location), ("offset", "0"), ("length", str(9 * 4))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def _weights(name: str = "W") -> Any:
    from onnx import TensorProto

    tensor = TensorProto()
    tensor.name, tensor.data_type = name, TensorProto.FLOAT
    tensor.dims.extend([3, 3])
    return tensor


def hostile_onnx(where: str = "initializer", **how: bool) -> bytes:
    """A faceattr-looking ONNX model, pixels [B, 3, 16, 16] -> logits [B, 3] through a 3x3
    weight matrix whose data is the file ``secret.txt`` (where it sits: ``where``)."""
    from onnx import TensorProto, helper

    weights = _external(_weights(), "secret.txt", **how)
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]  # fmt: skip
    initializers, sparse = [], []
    if where == "initializer":
        initializers.append(weights)
    elif where == "constant":  # a Constant node's tensor attribute
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=weights))
    elif where == "sparse":
        indices = helper.make_tensor("W_idx", TensorProto.INT64, [9], list(range(9)))
        values = _external(_weights("W"), "secret.txt", **how)
        values.ClearField("dims")
        values.dims.append(9)
        sparse.append(helper.make_sparse_tensor(values, indices, [3, 3]))
    elif where == "subgraph":  # inside an If's branch
        branch = helper.make_graph([helper.make_node("Constant", [], ["w"], value=weights)],
                                   "branch", [], [helper.make_tensor_value_info(
                                       "w", TensorProto.FLOAT, [3, 3])])  # fmt: skip
        initializers.append(helper.make_tensor("yes", TensorProto.BOOL, [], [True]))
        nodes.insert(0, helper.make_node("If", ["yes"], ["W"], then_branch=branch,
                                         else_branch=branch))  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["B", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        initializer=initializers,
        sparse_initializer=sparse,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = ModelInfo("celebnet", ATTRS, img_size=16, crop=[0, 0, 1, 1], mean=[0.0] * 3,
                     std=[1.0] * 3)  # fmt: skip
    return with_onnx_metadata(model.SerializeToString(), {"faceattr": info.to_json()})


@pytest.mark.parametrize(
    ("where", "how"),
    [("initializer", {}), ("initializer", {"flag": False}), ("initializer", {"entries": False}),
     ("constant", {}), ("sparse", {}), ("subgraph", {})],
)  # fmt: skip
def test_every_tensor_with_external_data_is_found(where, how):
    found = onnx_external_data(hostile_onnx(where, **how))
    assert found and {name for name, _ in found} == {"W"}  # (an If has it in both branches)
    assert found[0][1] == ("secret.txt" if how.get("entries", True) else "")


def test_onnx_runtime_would_read_the_file_from_the_current_folder(tmp_path, monkeypatch):
    """Why the check exists: a session made from the bytes reads ./secret.txt as weights."""
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    try:
        session = ort.InferenceSession(hostile_onnx(), providers=["CPUExecutionProvider"])
    except Exception as e:  # a future ONNX Runtime may refuse on its own
        pytest.skip(f"this onnxruntime refuses the file itself: {e}")
    out = session.run(None, {"pixels": np.ones((1, 3, 16, 16), np.float32)})[0]
    assert np.allclose(out, np.frombuffer(SECRET[:36], np.float32).reshape(3, 3).sum(0))


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_external_data_is_refused_before_a_session_exists(tmp_path, monkeypatch, where):
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "evil.onnx").write_bytes(hostile_onnx(where))
    sessions: list[Any] = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: sessions.append(a))
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", "evil.onnx", "--no-detect",
               "--json")  # fmt: skip
    refused(r, "keeps tensor data in other files", "secret.txt", "was not opened")
    assert sessions == [] and "probabilities" not in r.stdout
    with pytest.raises(ModelError, match="tensor data in other files"):
        ModelFile("evil.onnx").open(device="cpu")
    assert sessions == []


# --- the metadata schema -------------------------------------------------------------------


def small_onnx(info: ModelInfo) -> bytes:
    """An ONNX model as `faceattr export` shapes it (pixels [B, 3, S, S] -> logits [B, A]),
    built directly: a pooled linear map, in milliseconds instead of an export's seconds."""
    from onnx import TensorProto, helper, numpy_helper

    size, a = info.img_size, info.num_attributes
    weights = numpy_helper.from_array(np.linspace(-1, 1, 3 * a, dtype=np.float32).reshape(3, a),
                                      "W")  # fmt: skip
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", a])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return with_onnx_metadata(model.SerializeToString(), {"faceattr": info.to_json()})


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A small celebnet model as a .safetensors file, and an .onnx file with its metadata."""
    from faceattr.models import create_model, save_model_file

    folder = tmp_path_factory.mktemp("hostile-model")
    torch.manual_seed(0)
    model = create_model("celebnet", len(ATTRS), num_features=8, img_size=40)
    info = ModelInfo("celebnet", ATTRS, num_features=8, img_size=40, thresholds=[0.4, 0.5, 0.6],
                     train_positive_rates=[0.4, 0.5, float("nan")])  # fmt: skip
    path = save_model_file(folder / "model.safetensors", model, info)
    (folder / "model.onnx").write_bytes(small_onnx(info))
    return {"safetensors": path, "onnx": folder / "model.onnx"}


def _metadata(path: Path) -> dict[str, Any]:
    return json.loads(ModelFile(path).metadata["faceattr"])


def with_metadata(source: Path, dest: Path, text: str) -> Path:
    """``source`` with its faceattr metadata replaced by ``text``; the weights and their
    digest untouched."""
    blob = source.read_bytes()
    if source.suffix == ".onnx":
        dest.write_bytes(with_onnx_metadata(blob, {"faceattr": text}))
        return dest
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["faceattr"] = text
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dest.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
    return dest


MEMBER = {"arch": "celebnet", "img_size": 40, "mean": [0.5] * 3, "std": [0.5] * 3}
BAD_METADATA: list[tuple[str, Callable[[dict], Any], str]] = [
    ("attributes an int", lambda m: m.update(attributes=5), "attributes must be a list"),
    ("thresholds strings", lambda m: m.update(thresholds=["a", "b", "c"]), "thresholds[0] must"),
    ("crop of 3", lambda m: m.update(crop=[0, 0, 1]), "crop must be a list of 4 numbers"),
    ("crop inverted", lambda m: m.update(crop=[0.9, 0, 0.1, 1]), "left < right"),
    ("crop outside", lambda m: m.update(crop=[-0.5, 0, 1, 1]), "crop[0] must be in [0, 1]"),
    ("arch an int", lambda m: m.update(arch=5), "arch must be an architecture name"),
    ("arch a path", lambda m: m.update(arch="../../x\n"), "arch must be an architecture name"),
    ("num_features text", lambda m: m.update(num_features="8"), "num_features must be a whole"),
    ("num_features huge", lambda m: m.update(num_features=10**9), "num_features must be in"),
    ("img_size 60000", lambda m: m.update(img_size=60000), "img_size must be in [16, 4096]"),
    ("img_size 1e400", lambda m: m.update(img_size=10**400), "more than 30 digits"),
    ("img_size float", lambda m: m.update(img_size=40.0), "img_size must be a whole number"),
    ("img_size bool", lambda m: m.update(img_size=True), "img_size must be a whole number"),
    ("dropout 1", lambda m: m.update(dropout=1.0), "dropout must be in [0, 1)"),
    ("std zero", lambda m: m.update(std=[0.5, 0, 0.5]), "std[1] must be > 0"),
    ("mean NaN", lambda m: m.update(mean=[float("nan")] * 3), "mean[0] must be a finite"),
    ("tta unknown", lambda m: m.update(tta="rotate"), "tta must be one of none, flip"),
    ("attributes repeat", lambda m: m.update(attributes=["a", "a", "b"]), "twice"),
    ("attribute control", lambda m: m.update(attributes=["a\x1b[2J", "b", "c"]), "printable"),
    ("attributes none", lambda m: m.update(attributes=[], thresholds=None), "list of 1 to"),
    ("rates too few", lambda m: m.update(train_positive_rates=[0.5]), "train_positive_rates"),
    ("extra a list", lambda m: m.update(extra=[1]), "extra must be an object"),
    ("licence a number", lambda m: m.update(license=5), "license must be a text or null"),
    ("missing arch", lambda m: m.pop("arch"), "arch is missing"),
    ("members alone", lambda m: m.update(members=[MEMBER, MEMBER]), "arch is not 'ensemble'"),
    (
        "member too big",
        lambda m: m.update(arch="ensemble", members=[MEMBER, dict(MEMBER, img_size=60000)]),
        "member 1 img_size must be in [16, 4096]",
    ),  # fmt: skip
    ("members many", lambda m: m.update(arch="ensemble", members=[MEMBER] * 65), "at most 64"),
]


@pytest.mark.parametrize(("change", "says"), [c[1:] for c in BAD_METADATA],
                         ids=[c[0] for c in BAD_METADATA])  # fmt: skip
@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_bad_metadata_is_one_clear_error(model_files, tmp_path, fmt, change, says):
    meta = _metadata(model_files[fmt])
    change(meta)
    path = with_metadata(model_files[fmt], tmp_path / f"bad.{fmt}", json.dumps(meta))
    with pytest.raises(ModelError, match="the model's metadata is invalid") as caught:
        ModelFile(path).info  # noqa: B018
    assert says in caught.value.message
    with pytest.raises(ModelError, match="metadata is invalid"):
        ModelFile(path).open(device="cpu") if fmt == "onnx" else ModelFile(path).load()


def test_every_problem_is_named_at_once(model_files, tmp_path):
    meta = _metadata(model_files["safetensors"]) | {"img_size": 60000, "arch": 5, "crop": [0, 0, 1],
                                                    "thresholds": "high"}  # fmt: skip
    path = with_metadata(model_files["safetensors"], tmp_path / "m.safetensors", json.dumps(meta))
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", path, "--no-detect")
    refused(r, "metadata is invalid", "img_size must be in [16, 4096], got 60000", "arch must",
            "crop must be a list of 4 numbers", "thresholds must be a list of 3")  # fmt: skip


@pytest.mark.parametrize("text", ["[1, 2]", "{", '"text"', "[" * 100_000, "null"])
def test_metadata_that_is_no_object(model_files, tmp_path, text):
    path = with_metadata(model_files["safetensors"], tmp_path / "m.safetensors", text)
    with pytest.raises(ModelError, match="metadata is invalid"):
        ModelFile(path).info  # noqa: B018


def test_the_graph_must_take_the_size_the_metadata_says(model_files, tmp_path):
    meta = _metadata(model_files["onnx"]) | {"img_size": 64}
    path = with_metadata(model_files["onnx"], tmp_path / "m.onnx", json.dumps(meta))
    r = invoke("predict", EXAMPLES / "astronaut.jpg", "--model", path, "--no-detect")
    refused(r, "its input is", "the metadata says [B, 3, 64, 64]")


def test_files_faceattr_writes_pass_the_schema(model_files, trained_run):
    from faceattr.models.file import default_model_path

    for path in [*model_files.values(), trained_run / "model.safetensors",
                 default_model_path("onnx"), default_model_path("safetensors")]:  # fmt: skip
        if path.exists():
            assert metadata_problems(_metadata(path)) == [], path


# --- fuzzed metadata -----------------------------------------------------------------------

EXAMPLES_N = int(os.environ.get("FACEATTR_FUZZ_EXAMPLES", "200"))  # as tests/test_fuzz.py
FUZZ = settings(
    max_examples=EXAMPLES_N,
    deadline=None,
    derandomize=EXAMPLES_N <= 200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIELDS = ["arch", "attributes", "num_features", "dropout", "img_size", "crop", "mean", "std",
          "thresholds", "tta", "train_positive_rates", "dataset", "license", "faceattr_version",
          "created", "extra", "members", "from_the_future"]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),  # fmt: skip
    max_leaves=8,
)
EDGES = st.sampled_from(
    [0, -1, 1, 3, 15, 16, 40, 4096, 4097, 60000, 65536, 10**12, 10**40, 0.5, 1.0, 1.5, -0.0,
     math.nan, math.inf, "", "x", "ensemble", "flip", "celebnet", [], {}, None, True,
     [0, 0, 1, 1], [1, 0, 0, 1], [0.5] * 3, [0] * 3, [0.5] * 4, ["Male"] * 3, ["a", "b"],
     ["a", "b", "c"], [MEMBER, MEMBER], [MEMBER, {"arch": "x"}]]
)  # fmt: skip


@st.composite
def mutated_metadata(draw, meta: dict[str, Any]) -> str:
    """``meta`` with a few fields dropped, retyped or pushed to the edges of their range, or
    replaced by something that is no object at all."""
    meta = dict(meta)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(FIELDS))
        op = draw(st.sampled_from(["drop", "edge", "edge", "any"]))
        if op == "drop":
            meta.pop(key, None)
        else:
            meta[key] = draw(EDGES if op == "edge" else JSON_VALUES)
    if draw(st.integers(0, 30)) == 0:
        return json.dumps(draw(JSON_VALUES))
    return json.dumps(meta)


def _result_or_model_error(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except FaceAttrError:
        return None


@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_fuzzed_metadata_gives_a_result_or_a_model_error(model_files, tmp_path, data):
    fmt = data.draw(st.sampled_from(["safetensors", "onnx"]))
    text = data.draw(mutated_metadata(_metadata(model_files[fmt])))
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = with_metadata(model_files[fmt], folder / f"m.{fmt}", text)
    info = _result_or_model_error(lambda: ModelFile(path).info)
    if info is None:
        return
    assert metadata_problems(info.to_dict()) == []  # whatever is read passes the schema
    if fmt == "safetensors":
        loaded = _result_or_model_error(lambda: ModelFile(path).load())
        if loaded is not None:
            model, _ = loaded
            with torch.no_grad():
                out = model(torch.zeros(1, 3, info.img_size, info.img_size))
            assert out.shape == (1, info.num_attributes)
    else:
        backend = _result_or_model_error(lambda: ModelFile(path).open(device="cpu"))
        if backend is not None:
            x = np.zeros((2, 3, info.img_size, info.img_size), np.float32)
            out = _result_or_model_error(lambda: backend.logits(x))
            assert out is None or out.shape == (2, info.num_attributes)


# --- run files -----------------------------------------------------------------------------


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared trained run (the original stays read-only)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def edited(data: Any, change: Any) -> Any:
    """``data`` after ``change``: a function editing it in place, or what replaces it."""
    if not callable(change):
        return change
    change(data)
    return data


def without(key: str) -> Callable[[dict], None]:
    def drop(d: dict) -> None:
        d.pop(key)

    return drop


def _edit_state(run: Path, change: Any) -> None:
    state = torch.load(run / "train_state.pt", weights_only=True)
    state["finished"] = False  # so resume gets as far as restoring it
    torch.save(edited(state, change), run / "train_state.pt")


def _first_optimizer_moment(state: dict) -> None:
    moments = next(iter(state["optimizer"]["state"].values()))
    moments["exp_avg"] = torch.zeros(7)


@pytest.mark.parametrize(
    ("change", "says"),
    [([1, 2], "it holds a list, not a dict"),
     (torch.zeros(3), "it holds a Tensor"),
     (without("epoch"), "epoch is missing"),
     (lambda s: s.update(epoch="3"), "epoch is '3', expected an epoch number"),
     (lambda s: s.update(best_epoch=99), "best_epoch is 99"),
     (lambda s: s.update(history=[1]), "history is a list, expected a list of rows"),
     (lambda s: s.update(model={"w": 1}), "model is a dict, expected a dict of tensors"),
     (lambda s: s.update(scheduler=[1]), "scheduler is a list"),
     (lambda s: s.update(finished=True, history="x"), "history is 'x'")],
)  # fmt: skip
def test_a_resume_state_of_the_wrong_structure(run_copy, change, says):
    _edit_state(run_copy, change)
    r = invoke("train", "--resume", run_copy)
    refused(r, "is damaged or not faceattr's", says, "faceattr finetune")


@pytest.mark.parametrize(
    ("change", "says"),
    [(lambda s: s.update(model={"w": torch.zeros(2)}), "its model does not fit"),
     (lambda s: s["optimizer"].update(param_groups=[]), "its optimizer does not fit"),
     (_first_optimizer_moment, "its optimizer's exp_avg has shape (7,)"),
     (lambda s: s["scheduler"].update(step=1), "scheduler has an unknown entry 'step'"),
     (lambda s: s["scheduler"].update(last_epoch="x"), "scheduler['last_epoch'] is 'x'")],
)  # fmt: skip
def test_a_resume_state_that_does_not_fit_the_run(run_copy, change, says):
    _edit_state(run_copy, change)
    before = (run_copy / "model.safetensors").read_bytes()
    r = invoke("train", "--resume", run_copy)
    refused(r, "is damaged or not faceattr's", says)
    assert (run_copy / "model.safetensors").read_bytes() == before  # nothing lost


@pytest.mark.parametrize(
    ("text", "says"),
    [("{nope", "Cannot read the run's settings"),
     ("[1]", "the settings are a JSON list, not an object"),
     ('{"epochs": "ten"}', "epochs must be a whole number, got 'ten'"),
     ('{"data": 5}', "data must be an object, got 5"),
     ('{"data": {"img_size": 60000}}', "data.img_size must be in [16, 4096]"),
     ('{"optim": {"scheduler": "warp"}}', "optim.scheduler must be one of")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["resume", "eval", "finetune"])
def test_a_config_that_is_no_train_config(run_copy, synthetic_root, text, says, command):
    (run_copy / "config.json").write_text(text)
    args = {"resume": ["train", "--resume", run_copy],
            "eval": ["eval", run_copy, "--root", synthetic_root, "--split", "valid"],
            "finetune": ["finetune", run_copy, "--epochs", "1"]}[command]  # fmt: skip
    refused(invoke(*args), "config.json", says)


def test_report_refuses_a_config_of_the_wrong_types(run_copy, tmp_path):
    config = json.loads((run_copy / "config.json").read_text())
    config["data"]["attributes"] = [1, 2]
    (run_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "r.html"
    r = invoke("report", run_copy, "--split", "valid", "--out", out)
    refused(r, "is not a faceattr run's settings", "data.attributes must be a list of texts")
    (run_copy / "config.json").write_text('"a text"')
    refused(invoke("report", run_copy, "--split", "valid", "--out", tmp_path / "r.html"),
            "not a JSON object")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "says"),
    [([1], "not a JSON object"),
     (lambda m: m.update(per_attribute="x"), "per_attribute is 'x'"),
     (without("per_attribute"), "per_attribute is None"),
     (lambda m: next(iter(m["per_attribute"].values())).update(accuracy="high"),
      "['accuracy'] is 'high', expected a number"),
     (lambda m: next(iter(m["per_attribute"].values())).update(tp=-1), "['tp'] is -1"),
     (lambda m: m.update(thresholds="abc"), "thresholds is 'abc'"),
     (lambda m: m.update({"at_threshold_0.5": [1]}), "at_threshold_0.5 is a list"),
     (lambda m: m.update(n_images="many"), "n_images is 'many', expected a count")],
)  # fmt: skip
def test_report_refuses_metrics_of_the_wrong_shape(run_copy, tmp_path, change, says):
    metrics = json.loads((run_copy / "metrics-valid.json").read_text())
    (run_copy / "metrics-valid.json").write_text(json.dumps(edited(metrics, change)))
    r = invoke("report", run_copy, "--split", "valid", "--out", tmp_path / "r.html")
    refused(r, says, "faceattr eval")


def test_resume_of_a_finished_run_with_damaged_metrics(run_copy):
    (run_copy / "metrics-valid.json").write_text('{"per_attribute": [1]}')
    refused(invoke("train", "--resume", run_copy), "is not a faceattr metrics file")


def test_report_tolerates_a_garbage_history_and_predictions(run_copy, tmp_path):
    (run_copy / "history.csv").write_bytes(
        b"epoch,lr,val_mean_accuracy\n1,0.1,0.5,extra,cells\n2,\xff\xfe,x\n\x00\x00\n"
        + b"y" * 200_000 + b"\n"
    )  # fmt: skip
    (run_copy / "predictions-valid.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    r = invoke("report", run_copy, "--split", "valid", "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.html").exists()


def test_predictions_of_the_wrong_shapes_are_a_note(run_copy, tmp_path):
    from faceattr.report.load import load_run

    np.savez(run_copy / "predictions-valid.npz", image=np.array(["a.jpg"]),
             probs=np.zeros((1, 2)), targets=np.zeros((1, 40)),
             attributes=np.array(["x"] * 40))  # fmt: skip
    data = load_run(run_copy, "valid")
    assert data.predictions is None and any("probs has shape" in n for n in data.notes)


def test_the_files_faceattr_writes_pass_the_run_checks(trained_run):
    from faceattr.config import config_problems
    from faceattr.runs import RunDir, metrics_problems

    run = RunDir(trained_run)
    assert config_problems(run.config_dict()) == []
    assert metrics_problems(run.read_metrics("valid")) == []
    assert run.load_state() is not None and run.read_history()
