"""The command line as a user drives it (in-process, typer's CliRunner)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from faceattr.cli.app import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    # The first word of each row of the help's panels: the command names (and --options);
    # the app's description mentions "eval" and "predict" too, so look at rows only.
    rows = {line.strip("│ ").split(" ")[0] for line in result.output.splitlines()
            if line.startswith("│ ")}  # fmt: skip
    for cmd in ("train", "finetune", "eval", "predict", "report", "data"):
        assert cmd in rows


def test_bare_train_uses_the_library_defaults(tmp_path):
    """`faceattr train --root R` restates no default: its config is the library's."""
    from dataclasses import replace

    from faceattr.config import DataConfig, TrainConfig

    for extra in ((), ("--dataset", "wflw")):
        r = invoke("train", "--root", tmp_path, *extra, "--print-config")
        assert r.exit_code == 0, r.output
        cfg = TrainConfig.from_dict(json.loads(r.stdout))
        assert cfg.out.startswith("runs/")  # the default run directory
        library = TrainConfig(data=DataConfig(root=str(tmp_path), dataset=cfg.data.dataset))
        assert replace(cfg, out="") == library
    assert cfg.data.dataset == "wflw" and cfg.data.crop == (0.0, 0.0, 1.0, 1.0)


def test_train_options_map_onto_the_config(tmp_path):
    r = invoke("train", "--root", tmp_path, "--optimizer", "sgd", "--augment", "none",
               "--rotation", 5, "--crop", "square", "--attributes", "male, smiling",
               "--no-amp", "--freeze-backbone", "--weights-by-order", "--out", tmp_path / "run",
               "--print-config")  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert cfg["optim"]["optimizer"] == "sgd" and cfg["optim"]["lr"] == 0.05  # sgd's default
    assert cfg["augment"] == {"hflip": False, "crop_scale": 0.0, "shift": 0.0, "rotation": 5.0,
                              "brightness": 0.0, "erasing": 0.0}  # fmt: skip
    assert cfg["data"]["crop"] == [0.0, 20 / 218, 1.0, 198 / 218]  # "square" = "band"
    assert cfg["data"]["attributes"] == ["male", "smiling"]  # resolved when the data is read
    assert cfg["amp"] is False and cfg["model"]["freeze_backbone"] is True
    assert cfg["model"]["weights_by_order"] is True
    assert cfg["out"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # --print-config trains nothing
    r = invoke("train", "--root", tmp_path, "--optimizer", "lion")
    assert r.exit_code == 2 and "'lion' is not one of 'adam'" in r.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("faceattr ")


def test_fetch_synthetic_then_train_eval_predict(tmp_path):
    root = tmp_path / "syn"
    r = invoke("data", "fetch", "synthetic", "--root", root, "--n-train", 300, "--n-valid", 80,
               "--n-test", 80)  # fmt: skip
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    r = invoke("train", "--root", root, "--arch", "celebnet", "--img-size", 32, "--epochs", 2,
               "--workers", 0, "--augment", "flip", "--out", run, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["best_epoch"] in (1, 2) and len(result["history"]) == 2
    assert (run / "model.safetensors").exists()

    r = invoke("eval", run, "--root", root, "--split", "test", "--json", "--workers", 0)
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n_images"] == 80 and m["split"] == "test"
    for key in ("mean_accuracy", "mean_balanced_accuracy", "strict_accuracy",
                "majority_accuracy", "macro_precision", "macro_recall", "macro_f1"):  # fmt: skip
        assert isinstance(m[key], float), key
    per = m["per_attribute"]["Male"]
    assert set(per) >= {"accuracy", "precision", "recall", "f1", "balanced_accuracy",
                        "average_precision", "positives", "tp", "fp", "tn", "fn"}  # fmt: skip
    assert (run / "metrics-test.json").exists() and (run / "predictions-test.npz").exists()

    image = root / "img_align_celeba" / "000001.jpg"
    r = invoke("predict", image, "--model", run, "--no-detect", "--json")
    assert r.exit_code == 0, r.output
    [entry] = json.loads(r.stdout)
    assert entry["error"] is None and len(entry["faces"]) == 1
    face = entry["faces"][0]
    assert len(face["probabilities"]) == 40
    assert all(0.0 <= p <= 1.0 for p in face["probabilities"].values())
    assert set(face["attributes"]) <= set(face["probabilities"])


def test_eval_text_table_and_fail_under(trained_run, synthetic_root):
    r = invoke("eval", trained_run, "--root", synthetic_root, "--split", "valid", "--workers", 0)
    assert r.exit_code == 0, r.output
    assert "Eyeglasses" in r.stdout and "strict accuracy" in r.stdout
    r = invoke("eval", trained_run, "--root", synthetic_root, "--json", "--fail-under", 0.999,
               "--workers", 0)  # fmt: skip
    assert r.exit_code == 1
    assert "below --fail-under" in r.stderr
    r = invoke("eval", trained_run, "--root", synthetic_root, "--json", "--fail-under", 0.5,
               "--workers", 0)  # fmt: skip
    assert r.exit_code == 0


def test_predict_folder_with_broken_files_json_and_csv(trained_run, synthetic_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("000001.jpg", "000002.jpg"):
        shutil.copy(synthetic_root / "img_align_celeba" / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    data = (synthetic_root / "img_align_celeba" / "000003.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out_csv = tmp_path / "out.csv"
    r = invoke("predict", folder, "--model", trained_run, "--no-detect", "--json", "--csv", out_csv)
    assert r.exit_code == 1  # some inputs failed
    entries = {Path(e["image"]).name: e for e in json.loads(r.stdout)}
    assert entries["000001.jpg"]["error"] is None
    assert entries["broken.jpg"]["error"] and entries["broken.jpg"]["faces"] == []
    assert entries["truncated.jpg"]["error"]
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and "Male" in rows[0]


def test_predict_threshold_override(trained_run, synthetic_root):
    image = synthetic_root / "img_align_celeba" / "000001.jpg"
    r = invoke("predict", image, "--model", trained_run, "--no-detect", "--json",
               "--threshold", 0.0)  # fmt: skip
    face = json.loads(r.stdout)[0]["faces"][0]
    assert len(face["attributes"]) == 40  # everything is >= 0


def test_predict_stdin_paths(trained_run, synthetic_root):
    paths = "\n".join(str(synthetic_root / "img_align_celeba" / f"00000{i}.jpg") for i in (1, 2))
    r = invoke("predict", "-", "--model", trained_run, "--no-detect", "--json", input=paths)
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 2


def test_unknown_arch_suggests_names(synthetic_root, tmp_path):
    r = invoke("train", "--root", synthetic_root, "--arch", "resnet5", "--out", tmp_path / "x")
    assert r.exit_code == 2
    assert "resnet50" in r.stderr and "Traceback" not in r.output


def test_unknown_attribute_suggests_names(synthetic_root, tmp_path):
    r = invoke("train", "--root", synthetic_root, "--attributes", "Male,Smilling",
               "--out", tmp_path / "x", "--workers", 0)  # fmt: skip
    assert r.exit_code == 2
    assert "Smiling" in r.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    r = invoke("train", "--root", tmp_path / "nothing-here", "--out", tmp_path / "x")
    assert r.exit_code == 1
    assert "faceattr data fetch" in r.stderr and "Traceback" not in r.output


def test_missing_root_option(tmp_path):
    r = invoke("train", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--root" in r.stderr


def test_predict_empty_folder_and_missing_model(tmp_path, trained_run):
    (tmp_path / "empty").mkdir()
    r = invoke("predict", tmp_path / "empty", "--model", trained_run)
    assert r.exit_code == 2 and "No input images" in r.stderr
    r = invoke("predict", tmp_path / "x.jpg", "--model", tmp_path / "nope.safetensors")
    assert r.exit_code == 1 and "not found" in r.stderr


def test_eval_unknown_split(trained_run, synthetic_root):
    r = invoke("eval", trained_run, "--root", synthetic_root, "--split", "tst")
    assert r.exit_code == 2 and "test" in r.stderr


def test_finetune_writes_child_run(trained_run, tmp_path):
    child = tmp_path / "child"
    r = invoke("finetune", trained_run, "--epochs", 1, "--out", child, "--json",
               "--attributes", "Male,Smiling,Eyeglasses,Wearing_Hat", "--workers", 0)  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((child / "config.json").read_text())
    assert cfg["parent"] == str(trained_run) and cfg["unfreeze"] == "all"
    assert cfg["optim"]["lr"] < json.loads((trained_run / "config.json").read_text())["optim"]["lr"]
    assert json.loads(r.stdout)["valid"]["n_attributes"] == 4
