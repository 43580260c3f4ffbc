"""`faceattr tune`: studies on Optuna whose trials are run directories; grid, pruning,
resume after kill -9, settings checks, PostgreSQL with two workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import new_database
from faceattr.cli.app import app
from faceattr.engine.tune import parse_param
from faceattr.errors import UsageError

FACEATTR = str(Path(sys.executable).with_name("faceattr"))
KINDS = {"lr": float, "dropout": float, "epochs": int, "arch": str, "hflip": bool}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def base(root: Path) -> list[str]:
    return ["--root", root, "--arch", "celebnet", "--img-size", "32", "--num-features", "32",
            "--workers", "0", "--sample", "300"]  # fmt: skip


def test_param_specs():
    assert parse_param("lr=1e-4:1e-2:log", KINDS).log
    spec = parse_param("epochs=3:10", KINDS)
    assert (spec.low, spec.high, spec.integer) == (3, 10, True)
    assert parse_param("dropout=0.3,0.5", KINDS).choices == (0.3, 0.5)
    assert parse_param("arch=resnet50,densenet121", KINDS).choices == ("resnet50", "densenet121")
    assert parse_param("hflip=true,false", KINDS).choices == (True, False)
    bad_specs = [("lrr=0.1,0.2", "Did you mean: lr"), ("lr=0.1:0.01", "not a valid spec"),
                 ("lr=0:1:log", "not a valid spec"), ("lr", "NAME=SPEC"),
                 ("dropout=a,b", "not a valid spec"), ("arch=a:b", "not a valid spec")]  # fmt: skip
    for bad, says in bad_specs:
        with pytest.raises(UsageError, match=says):
            parse_param(bad, KINDS)


def test_grid_study_runs_every_combination_once(synthetic_root, tmp_path):
    study = tmp_path / "grid"
    r = invoke("tune", *base(synthetic_root), "--epochs", "1", "--param", "lr=0.003,0.01",
               "--param", "dropout=0.1,0.3", "--sampler", "grid", "--study-dir", study,
               "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    combos = {(t["params"]["lr"], t["params"]["dropout"]) for t in summary["trials"]}
    assert len(summary["trials"]) == 4 and combos == {(a, b) for a in (0.003, 0.01)
                                                      for b in (0.1, 0.3)}  # fmt: skip
    assert {t["state"] for t in summary["trials"]} <= {"complete", "pruned"}
    for t in summary["trials"]:
        run = Path(t["run_dir"])
        assert run.parent == study / "trials" and (run / "config.json").exists()
        config = json.loads((run / "config.json").read_text())
        assert config["optim"]["lr"] == t["params"]["lr"]
        assert config["model"]["dropout"] == t["params"]["dropout"]
    best = summary["best"]
    assert best["state"] == "complete" and "--lr" in best["command"]
    assert best["command"].startswith("faceattr train --root")
    assert best["value"] == max(t["value"] for t in summary["trials"] if t["state"] == "complete")
    # the same command again: nothing to do; --summary reads the same table
    again = invoke("tune", *base(synthetic_root), "--epochs", "1", "--param", "lr=0.003,0.01",
                   "--param", "dropout=0.1,0.3", "--sampler", "grid", "--study-dir", study,
                   "--json")  # fmt: skip
    assert json.loads(again.stdout)["trials"] == summary["trials"]
    shown = invoke("tune", "--summary", study)
    assert shown.exit_code == 0 and "Reproduce it with" in said(shown)
    # the report of a study: its best trials side by side, and the metric against each param
    page = tmp_path / "study.html"
    rep = invoke("report", study, "--out", page)
    assert rep.exit_code == 0, rep.output
    html = page.read_text()
    assert f"Study {study}" in html and "against each parameter" in html
    assert "image/svg+xml" in html  # the plot
    assert html.count("trial-00") >= 4
    # other settings on the same folder are refused
    other = invoke("tune", *base(synthetic_root), "--epochs", "1", "--param", "lr=0.1,0.2",
                   "--sampler", "grid", "--study-dir", study)  # fmt: skip
    assert other.exit_code == 2 and "other settings" in said(other)


def test_tpe_study_with_the_median_pruner(synthetic_root, tmp_path):
    r = invoke("tune", *base(synthetic_root), "--epochs", "2", "--param", "lr=1e-4:3e-1:log",
               "--trials", "5", "--study-dir", tmp_path / "tpe", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    states = [t["state"] for t in summary["trials"]]
    assert len(states) == 5 and set(states) <= {"complete", "pruned"}
    pruned = [t for t in summary["trials"] if t["state"] == "pruned"]
    assert all(t["epochs"] == 1 for t in pruned)  # stopped after its first epoch
    assert summary["importances"] is None or set(summary["importances"]) == {"lr"}


def test_one_epoch_trials_are_complete_not_pruned(synthetic_root, tmp_path):
    """With --epochs 1 every trial runs its only epoch: complete, with its metrics, and in
    the study's report (the median pruner once marked the ones below the median pruned)."""
    study = tmp_path / "one"
    r = invoke("tune", *base(synthetic_root), "--epochs", "1", "--param", "lr=1e-4:3e-1:log",
               "--trials", "5", "--study-dir", study, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["counts"]["complete"] == 5 and summary["counts"]["pruned"] == 0
    for t in summary["trials"]:
        assert t["value"] is not None and t["epochs"] == 1
        assert (Path(t["run_dir"]) / "metrics-valid.json").exists()
    page = tmp_path / "study.md"
    assert invoke("report", study, "--out", page).exit_code == 0
    assert "5 complete, 0 pruned" in page.read_text()


def test_usage_errors(synthetic_root, tmp_path):
    r = invoke("tune", *base(synthetic_root), "--param", "lr=1e-3:1e-2", "--sampler", "grid",
               "--study-dir", tmp_path / "s")  # fmt: skip
    assert r.exit_code == 2 and "needs listed values" in said(r)
    r = invoke("tune", *base(synthetic_root), "--study-dir", tmp_path / "s")
    assert r.exit_code == 2 and "Nothing to tune" in said(r)
    r = invoke("tune", *base(synthetic_root), "--param", "lrate=0.1,0.2", "--study-dir",
               tmp_path / "s")  # fmt: skip
    assert r.exit_code == 2 and "Did you mean: lr" in said(r)
    r = invoke("tune", "--summary", tmp_path / "nothing")
    assert r.exit_code == 1 and "No study" in said(r)


def _tune_cmd(root: Path, study: Path, extra: list[str] = ()) -> list[str]:
    return [FACEATTR, "tune", *map(str, base(root)), "--epochs", "2", "--param",
            "lr=0.003,0.005", "--param", "dropout=0.1,0.3", "--sampler", "grid", "--pruner",
            "none", "--study-dir", str(study), *extra]  # fmt: skip


@pytest.mark.slow
def test_kill_9_during_a_trial_then_the_same_command_continues(synthetic_root, tmp_path):
    study = tmp_path / "study"
    proc = subprocess.Popen(_tune_cmd(synthetic_root, study), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    second = study / "trials" / "trial-001" / "history.csv"
    deadline = time.monotonic() + 240
    while not second.exists() and time.monotonic() < deadline:  # trial 1 finished an epoch
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.exists()
    done = subprocess.run(_tune_cmd(synthetic_root, study, ["--json"]), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing them from their last finished epoch" in " ".join(done.stderr.split())
    summary = json.loads(done.stdout)
    states = sorted(t["state"] for t in summary["trials"])
    assert states == ["complete"] * 4 + ["fail"]  # the killed trial, retried once
    [retry] = [t for t in summary["trials"] if t["retry_of"] is not None]
    assert retry["run_dir"].endswith("trial-001") and retry["epochs"] == 1  # epoch 2 only
    history = (study / "trials" / "trial-001" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # epochs 1-2, each once


@pytest.mark.slow
def test_two_workers_on_postgres_share_one_study(postgres_server, synthetic_root, tmp_path):
    """Two `tune` processes on one PostgreSQL study: every grid point is trained once."""
    url = new_database(postgres_server, "study")
    cmd = _tune_cmd(synthetic_root, tmp_path / "pg-study", ["--storage", url, "--json"])
    cmd[cmd.index("--epochs") + 1] = "1"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = []
    for _ in range(2):
        workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env))  # fmt: skip
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-1500:] for o in outs]
    final = invoke("tune", "--summary", tmp_path / "pg-study", "--storage", url, "--json")
    summary = json.loads(final.stdout)  # after both: each printed the study as it ended
    points = [(t["params"]["lr"], t["params"]["dropout"]) for t in summary["trials"]]
    assert sorted(points) == sorted({(a, b) for a in (0.003, 0.005) for b in (0.1, 0.3)})
    assert all(t["state"] == "complete" for t in summary["trials"]), summary["trials"]
    owners = {t["run_dir"] for t in summary["trials"]}
    assert len(owners) == 4  # four run directories, none trained twice


def test_ctrl_c_then_the_same_command_continues(synthetic_root, tmp_path, monkeypatch):
    import faceattr.engine.fit as fit_module

    real = fit_module.run_epoch
    calls = {"n": 0}

    def ctrl_c_in_the_third_epoch(t, state, epoch, progress, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # trial 0 ran 2 epochs; trial 1 is interrupted in its first
            raise KeyboardInterrupt
        return real(t, state, epoch, progress, **kwargs)

    monkeypatch.setattr(fit_module, "run_epoch", ctrl_c_in_the_third_epoch)
    args = ["tune", *base(synthetic_root), "--epochs", "2", "--param", "lr=0.003,0.005",
            "--sampler", "grid", "--pruner", "none", "--study-dir", tmp_path / "s",
            "--json"]  # fmt: skip
    r = invoke(*args)
    assert r.exit_code == 130 and "run the same command again" in said(r)
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    trials = json.loads(r.stdout)["trials"]
    assert sorted(t["state"] for t in trials) == ["complete", "complete", "fail"]
    [retry] = [t for t in trials if t["retry_of"] is not None]
    assert retry["retry_of"] == 1 and retry["run_dir"].endswith("trial-001")


def test_a_grid_point_that_is_taken_is_never_trained_twice(tmp_path):
    """Every grid point is taken (one failed without a retry, one complete): a worker that
    starts then draws a taken point from the sampler, and must leave it untrained."""
    import optuna

    from faceattr.engine.tune import StudySettings, open_study, run_study

    params = [{"name": "lr", "choices": [0.1, 0.2], "low": None, "high": None,
               "log": False, "integer": False}]  # fmt: skip
    settings = StudySettings(base_args=["--epochs", "1"], params=params, metric="mean_accuracy",
                             sampler="grid", pruner="none", trials=None)  # fmt: skip
    study = open_study(tmp_path, settings, None)
    first, second = study.ask(), study.ask()  # the two queued points
    for trial in (first, second):
        trial.suggest_categorical("lr", [0.1, 0.2])  # as the objective does
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # an error: not retried
    study.tell(second, 0.9)

    def make_config(values, run_dir):
        raise AssertionError(f"trained {values} again")

    summary = run_study(tmp_path, settings, make_config)
    assert sorted(t.params["lr"] for t in summary.trials) == [0.1, 0.2]
    assert [t.state for t in summary.trials].count("complete") == 1


def test_workers_opening_a_new_postgres_study_at_once_all_succeed(postgres_server):
    """Three processes open one new database's study storage at the same moment: they race to
    create its tables (PostgreSQL: a duplicate key in pg_type), and every one must succeed."""
    code = "import sys; from faceattr.engine.tune import _storage; _storage(sys.argv[1])"
    failed = []
    for i in range(4):
        url = new_database(postgres_server, f"race{i}")
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            if proc.returncode:
                failed.append(err[-300:])
    assert not failed, failed


def test_a_distillation_study_varies_alpha_and_temperature(synthetic_root, trained_run, tmp_path,
                                                           monkeypatch):  # fmt: skip
    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(tmp_path / "cache"))  # not in the shared set
    study = tmp_path / "kd"
    args = ["tune", "--teacher", trained_run, *base(synthetic_root), "--sample", "64",
            "--epochs", "1", "--param", "alpha=0,1", "--param", "temperature=1,4",
            "--sampler", "grid", "--study-dir", study, "--json"]  # fmt: skip
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert len(summary["trials"]) == 4
    for t in summary["trials"]:
        config = json.loads((Path(t["run_dir"]) / "config.json").read_text())["distill"]
        assert config["teacher"] == str(trained_run.resolve()) and config["teacher_digest"]
        assert (config["alpha"], config["temperature"]) == (t["params"]["alpha"],
                                                            t["params"]["temperature"])  # fmt: skip
        assert (Path(t["run_dir"]) / "metrics-valid-teacher.json").is_file()
    assert summary["best"]["command"].startswith(f"faceattr distill {trained_run} --root")
    # the same study with another teacher (or none) is refused, naming the stored one
    other = invoke(*[a if a != trained_run else "default" for a in args])
    assert other.exit_code != 0 and "other settings (teacher" in said(other)
    # a teacher that is not there: said before any study is made
    missing = invoke("tune", "--teacher", tmp_path / "nope", *base(synthetic_root), "--param",
                     "alpha=0,1", "--study-dir", tmp_path / "none")  # fmt: skip
    assert missing.exit_code == 1 and "Model file not found" in said(missing)
    assert not (tmp_path / "none").exists()
