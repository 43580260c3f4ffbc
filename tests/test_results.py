"""Each command's --json is its core result's ``to_json()``: the CLI adds, drops and reorders
nothing, so the Python API (and the HTTP service) give what the CLI prints."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.utils import to_json


def _pairs(text: str) -> Any:
    """JSON with every object as its list of (key, value) pairs: equal only in the same order."""
    return json.loads(text, object_pairs_hook=list)


def cli_and_result(monkeypatch, where: str, args: list[Any]) -> tuple[Any, Any]:
    """Run ``faceattr ARGS --json``; its output, and what the core function ``where``
    (``module:name``) returned to the command."""
    module_name, name = where.split(":")
    module = importlib.import_module(module_name)
    real, returned = getattr(module, name), []

    def spy(*a: Any, **kw: Any) -> Any:
        returned.append(real(*a, **kw))
        return returned[-1]

    monkeypatch.setattr(module, name, spy)
    r = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    [result] = returned
    return _pairs(r.stdout), result


def test_eval_json_is_the_evaluation(monkeypatch, trained_run, synthetic_root, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    args = ["eval", run, "--root", synthetic_root, "--split", "test"]
    printed, result = cli_and_result(monkeypatch, "faceattr.engine.evaluate:evaluate_model", args)
    assert printed == _pairs(to_json(result.to_json()))
    assert (result.saved_to, result.saved_as) == (str(run), "metrics-test.json")
    saved = json.loads((run / "metrics-test.json").read_text())
    assert saved == {k: v for k, v in json.loads(to_json(result.to_json())).items()
                     if k not in ("saved_to", "saved_as")}  # fmt: skip


def test_export_json_is_the_export_result(monkeypatch, trained_run, tmp_path):
    args = ["export", trained_run, "--out", tmp_path / "m.onnx"]
    printed, result = cli_and_result(monkeypatch, "faceattr.engine.export:export_model", args)
    assert printed == _pairs(to_json(result.to_json()))
    assert result.precision == "fp32" and "int8_vs_fp32" not in result.to_json()


def test_ensemble_json_is_the_ensemble_result(monkeypatch, trained_run, synthetic_root, tmp_path):
    other = shutil.copytree(trained_run, tmp_path / "b")
    printed, result = cli_and_result(
        monkeypatch, "faceattr.engine.ensemble:make_ensemble",
        ["ensemble", trained_run, other, "--out", tmp_path / "e.safetensors",
         "--root", synthetic_root, "--workers", "0"],
    )  # fmt: skip
    assert printed == _pairs(to_json(result.to_json()))
    assert result.evaluated and [m["model"] for m in result.member_scores] == result.members


def test_tune_json_is_the_study_summary(monkeypatch, synthetic_root, tmp_path):
    study = tmp_path / "study"
    printed, result = cli_and_result(
        monkeypatch, "faceattr.engine.tune:run_study",
        ["tune", "--root", synthetic_root, "--arch", "celebnet", "--img-size", "32",
         "--epochs", "1", "--sample", "32", "--workers", "0", "--param", "lr=0.001,0.003",
         "--sampler", "grid", "--study-dir", study],
    )  # fmt: skip
    assert printed == _pairs(to_json(result.to_json()))
    assert len(result.trials) == 2 and result.best is not None and result.seconds is not None
    shown, summary = cli_and_result(monkeypatch, "faceattr.engine.tune:summarize",
                                    ["tune", "--summary", study])  # fmt: skip
    assert shown == _pairs(to_json(summary.to_json())) and summary.seconds is None
    assert summary.trials == result.trials


@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("faceattr.data.synthetic:fetch_synthetic",
         ["data", "fetch", "synthetic", "--n-train", "8", "--n-valid", "4", "--n-test", "4"]),
        ("faceattr.data.cache:prepare_cache", ["data", "prepare", "celeba", "--img-size", "32"]),
        ("faceattr.data.stats:dataset_stats", ["data", "stats", "celeba"]),
    ],
)  # fmt: skip
def test_data_json_is_the_result(monkeypatch, tmp_path: Path, where, args):
    root = tmp_path / "syn"
    if args[1] != "fetch":
        from faceattr.data.synthetic import write_synthetic_celeba

        write_synthetic_celeba(root, n_train=8, n_valid=4, n_test=4)
    printed, result = cli_and_result(monkeypatch, where, [*args, "--root", root])
    assert printed == _pairs(to_json(result.to_json()))
