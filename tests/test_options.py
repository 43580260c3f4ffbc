"""Options that set config fields are declared once, naming the field (cli.options.setting):
the CLI restates no default and no range, and the modules that share settings import no circle.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import typer.main

from faceattr.cli.app import app
from faceattr.cli.options import SETTING_FLAGS, option_limit, setting_of
from faceattr.config import DEFAULT_AUGMENT, NUMBER_LIMITS, OPTIMIZERS, default_lr, field_default

SRC = Path(__file__).resolve().parents[1] / "src"

# The options (by parameter name) of these commands that set no TrainConfig field.
NOT_SETTINGS = {
    ("train",): {"nproc", "resume", "list_archs", "print_config", "json_out"},
    ("finetune",): {"run_dir", "unfreeze", "print_config", "json_out"},
    ("eval",): {"model", "backend", "split", "threshold", "tta", "batch_size", "device",
                "fail_under", "metric", "subgroups", "json_out"},
    ("data", "prepare"): {"force", "json_out"},
    ("tune",): {"param", "trials", "study_dir", "storage", "sampler", "pruner", "metric",
                "teacher", "summary", "json_out"},
}  # fmt: skip
# What `tune --param NAME=...` accepts: every train setting but where the data and runs are.
TUNABLE = {
    "arch", "sample", "attributes", "epochs", "batch_size", "lr", "optimizer", "scheduler",
    "loss", "weight_decay", "warmup_epochs", "patience", "ema", "tta", "img_size",
    "valid_fraction", "crop", "pretrained", "weights_by_order", "freeze_backbone",
    "num_features", "dropout", "augment", "hflip", "random_crop", "shift", "rotation",
    "color_jitter", "erasing", "tune_thresholds", "threshold_metric", "threshold_accuracy_drop",
    "amp", "channels_last", "compile", "sync_bn", "seed", "balance_max_weight", "qat",
}  # fmt: skip


def _commands() -> dict[tuple[str, ...], Any]:
    found: dict[tuple[str, ...], Any] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(None):
                walk(cmd.get_command(None, name), (*path, name))
        else:
            found[path] = cmd

    walk(typer.main.get_command(app), ())
    return found


def test_every_option_sets_a_declared_field_or_is_listed_as_not_a_setting():
    """A new option either names the field it sets (so config_changes applies it) or is
    listed here: none is silently ignored."""
    commands = _commands()
    for path, not_settings in NOT_SETTINGS.items():
        params = {p.name: p for p in commands[path].params}
        assert not_settings <= set(params), (path, not_settings - set(params))  # none stale
        for name, param in params.items():
            found = setting_of(param)
            if found is None:
                assert name in not_settings, f"{' '.join(path)} --{name} sets no config field"
                continue
            assert name not in not_settings, (path, name)
            field_default(found.key)  # a KeyError names a field TrainConfig does not have
            if param.param_type_name == "option":
                assert found.flag in param.opts, (path, name, found.flag)
                assert SETTING_FLAGS[found.flag] == found.key  # one flag, one field


def test_tune_params_are_the_train_settings():
    from faceattr.cli.tune import _kinds, _train_command

    kinds = _kinds(_train_command(distill=False))
    assert set(kinds) == TUNABLE
    assert kinds["lr"] is float and kinds["epochs"] is int and kinds["hflip"] is bool
    assert kinds["arch"] is str
    # a distillation study (--teacher) may vary the distillation settings too
    kinds = _kinds(_train_command(distill=True))
    assert set(kinds) == TUNABLE | {"alpha", "temperature", "unlabeled_aligned"}
    assert kinds["alpha"] is float and kinds["temperature"] is float


def test_help_shows_the_config_default():
    commands = _commands()
    for path in (("train",), ("finetune",), ("eval",), ("data", "prepare")):
        for param in commands[path].params:
            found = setting_of(param)
            if found is None or param.param_type_name != "option":
                continue
            text = " ".join((param.help or "").split())
            default = field_default(found.key)
            if found.key == "optim.lr":  # default_lr(optimizer); finetune: the parent's / 10
                if path == ("train",):
                    for name in OPTIMIZERS:
                        assert f"{default_lr(name):g} for" in text
                continue
            if found.key == "augment":
                assert f"default: {DEFAULT_AUGMENT}" in text
                continue
            if found.key.startswith("augment."):  # as the preset says
                continue
            if isinstance(default, bool):
                if param.secondary_opts:  # --amp/--no-amp
                    assert ("on" if default else "off") in text, (path, param.name)
                continue
            if default not in (None, "", dataclasses.MISSING):
                assert str(default) in text, (path, param.name, default)


def test_no_option_declares_its_own_range():
    """Every range is in config.LIMITS (settings) or config.NUMBER_LIMITS (other numbers),
    said in --help and checked by the Command: no typer min=/max= states it again."""
    names = set()
    for path, cmd in _commands().items():
        for param in cmd.params:
            names.add(param.name)
            assert getattr(param, "min", None) is None, (path, param.name)
            assert getattr(param, "max", None) is None, (path, param.name)
            assert "Range" not in type(getattr(param, "type", None)).__name__, (path, param.name)
            limit = option_limit(param)
            if limit is not None and param.param_type_name == "option":
                assert f"Must be {limit.describe()}" in (param.help or "").replace("\\[", "[")
    assert set(NUMBER_LIMITS) <= names, set(NUMBER_LIMITS) - names  # no stale ranges


def _imports() -> dict[str, set[str]]:
    """Module -> the faceattr modules it imports (anywhere in it: a lazy import inside a
    function counts, TYPE_CHECKING ones too) and the package whose __init__ runs first (but
    for faceattr's own, whose functions are the Python API)."""
    graph: dict[str, set[str]] = {}
    for file in (SRC / "faceattr").rglob("*.py"):
        parts = file.relative_to(SRC).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        edges = graph.setdefault(module, set())
        if module.count(".") > 1:
            edges.add(module.rpartition(".")[0])
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("faceattr"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("faceattr"):
                base = node.module or ""
                edges.add(base)
                edges.update(f"{base}.{a.name}" for a in node.names)
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_import_circles_through_config_or_the_cli():
    """config.py <-> data/registry.py and cli/app.py <-> cli/tune.py were circles: neither
    config nor any cli module is on one now (config imports no registry; tune builds the
    train command itself)."""
    graph = _imports()
    assert not {"faceattr.data", "faceattr.data.registry"} & _reachable(graph, "faceattr.config")
    assert "faceattr.cli.app" not in _reachable(graph, "faceattr.cli.tune")
    for module in graph:
        if module == "faceattr.config" or module.startswith("faceattr.cli."):
            assert module not in _reachable(graph, module), module
