"""What every command prints: strict --json output (no bare NaN or Infinity) on stdout alone,
and --help that reads well."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.utils import to_json

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def strict(text: str):
    def reject(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def json_commands() -> set[str]:
    """Every command that has a --json flag."""
    group = typer.main.get_command(app)
    ctx = None  # groups list and look up their commands without a context
    found = set()

    def walk(cmd, prefix):
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*prefix, name])
        elif any("--json" in p.opts for p in cmd.params):
            found.add(" ".join(prefix))

    walk(group, [])
    return found


def test_to_json_writes_nan_as_null():
    import numpy as np

    text = to_json({"a": float("nan"), "b": [np.float32("inf"), np.int64(3)], "c": Path("x")})
    assert strict(text) == {"a": None, "b": [None, 3], "c": "x"}


def test_every_json_output_parses_strictly(synthetic_root, trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEATTR_CACHE_DIR", str(tmp_path / "cache"))  # distill's teacher cache
    runner = CliRunner()
    runs = {
        "predict": ["predict", EXAMPLES / "astronaut.jpg", "--json"],
        "eval": ["eval", trained_run, "--root", synthetic_root, "--split", "valid", "--json"],
        "train": ["train", "--root", synthetic_root, "--arch", "celebnet", "--img-size", "32",
                  "--epochs", "1", "--sample", "64", "--workers", "0",
                  "--out", tmp_path / "run", "--json"],
        "finetune": ["finetune", tmp_path / "run", "--epochs", "1", "--workers", "0",
                     "--out", tmp_path / "ft", "--json"],
        "distill": ["distill", trained_run, "--root", synthetic_root, "--arch", "celebnet",
                    "--img-size", "32", "--epochs", "1", "--sample", "64", "--workers", "0",
                    "--out", tmp_path / "student", "--json"],
        "export": ["export", tmp_path / "run", "--out", tmp_path / "m.onnx", "--json"],
        "ensemble": ["ensemble", trained_run, tmp_path / "run", "--out", tmp_path / "e.safetensors",
                     "--root", synthetic_root, "--workers", "0", "--json"],
        "data fetch": ["data", "fetch", "synthetic", "--root", tmp_path / "syn",
                       "--n-train", "8", "--n-valid", "4", "--n-test", "4", "--json"],
        "data prepare": ["data", "prepare", "celeba", "--root", tmp_path / "syn",
                         "--img-size", "32", "--json"],
        "data stats": ["data", "stats", "celeba", "--root", tmp_path / "syn", "--json"],
        "index": ["index", EXAMPLES, "--db", tmp_path / "lib.db", "--json"],
        "tune": ["tune", "--root", synthetic_root, "--arch", "celebnet", "--img-size", "32",
                 "--epochs", "1", "--sample", "64", "--workers", "0", "--param",
                 "lr=0.001,0.003", "--sampler", "grid", "--study-dir", tmp_path / "study",
                 "--json"],
        "search": ["search", "Smiling or Eyeglasses", "--db", tmp_path / "lib.db", "--json"],
    }  # fmt: skip
    assert set(runs) == json_commands(), "a command with --json is not covered here"
    for name, args in runs.items():
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, (name, r.output)
        data = strict(r.stdout)
        assert data, name
        if name == "eval":  # attributes without positives in the split: NaN became null
            per = data["per_attribute"]
            values = [v for row in per.values() for v in row.values() if isinstance(v, float)]
            assert all(math.isfinite(v) for v in values)


@pytest.mark.parametrize("option", ["--threshold", "--min-score"])
def test_predict_refuses_nan(option):
    r = CliRunner().invoke(app, ["predict", str(EXAMPLES / "astronaut.jpg"), option, "nan"])
    assert r.exit_code == 2 and "must be in [0, 1]" in " ".join(r.output.split())


def _commands():
    group = typer.main.get_command(app)

    def walk(cmd, prefix):
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(None):
                yield from walk(cmd.get_command(None, name), [*prefix, name])
        else:
            yield prefix, cmd

    return list(walk(group, []))


def test_help_of_every_command_reads_well():
    """Every option says what it does, flags show no value type, paragraphs are not cut."""
    runner = CliRunner()
    for prefix, cmd in _commands():
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert (p.help or "").strip(), f"{' '.join(prefix)} --{p.name} has no help"
        text = runner.invoke(app, [*prefix, "--help"], terminal_width=100).output
        assert "<bool>" not in text, prefix
        for paragraph in (cmd.help or "").split("\n\n"):  # the source's line ends are gone
            assert paragraph.startswith("\b") or "\n" not in paragraph, (prefix, paragraph)
    top = runner.invoke(app, ["--help"], terminal_width=100).output
    assert "<bool>" not in top and "--version" in top


# --- messages: settings, not flags, below the CLI --------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "faceattr"
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A whole command to run, in backticks: both kinds of user can run it in a shell.
_COMMAND = re.compile(r"`(?:faceattr|torchrun|pip|python3?|apt-get)\b[^`]*`")


def _message_strings(path: Path):
    """(line, text) of the string constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_core_messages_name_settings_not_flags():
    """Below cli/, a message tells a library caller the setting (`root=DIR`), which the CLI
    shows as its flag (cli.common.as_flags); a flag appears only inside a whole command."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        if parts[0] == "cli" or parts[-1] == "template.py":  # the report's CSS has --vars
            continue
        for line, text in _message_strings(path):
            if _FLAG.search(_COMMAND.sub("", text)):
                found.append(f"{'/'.join(parts)}:{line}: {text[:80]!r}")
    assert not found, "\n".join(found)


def test_the_cli_shows_settings_as_flags():
    from faceattr.cli.common import as_flags

    assert as_flags('Pass `root=DIR`, or `model="default"`.') == (
        "Pass `--root DIR`, or `--model default`."
    )
    assert as_flags("`no_detect=True`, `tune_thresholds=False`") == (
        "`--no-detect`, `--no-tune-thresholds`"
    )
    assert as_flags("`optim.lr=0.01` and `augment.crop_scale=0.1`") == (
        "`--lr 0.01` and `--random-crop 0.1`"
    )
    assert as_flags("code `x = 1` and `faceattr eval RUN --root DIR`") == (
        "code `x = 1` and `faceattr eval RUN --root DIR`"
    )
    r = CliRunner().invoke(app, ["predict", str(EXAMPLES / "astronaut.jpg"), "--model",
                                 "/no/such/model.onnx"])  # fmt: skip
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "--model default" in said and "model=" not in said


def test_messages_keep_long_paths_whole_when_not_a_terminal(tmp_path):
    """Captured (not a terminal), an error naming a long path prints it on one line: rich
    does not wrap it at 80 columns in the middle of the path."""
    deep = tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "and-another-one" / "missing.db"
    assert len(str(deep)) > 120
    r = CliRunner().invoke(app, ["search", "Male", "--db", str(deep)])
    assert r.exit_code == 1
    [line] = [x for x in r.stderr.splitlines() if x.startswith("Error:")]
    assert line == f"Error: No index at {deep}."
    assert str(deep) in r.stderr.splitlines()[1]  # the hint's command, unbroken too
