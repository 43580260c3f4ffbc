"""`faceattr tune`: train options as for `faceattr train`, plus the study's own options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, print_json
from faceattr.cli.options import JsonOption, choice, config_changes, setting_of
from faceattr.config import TUNE_METRICS, TUNE_PRUNERS, TUNE_SAMPLERS

if TYPE_CHECKING:
    from faceattr.engine.tune import StudySummary

# Train options that make no sense as --param (they say where things are, not how to train;
# balance_groups: its specs hold the commas that --param splits choices at; pass it as a train
# option for every trial).
_NOT_PARAMS = {"root", "labels", "dataset", "out_dir", "weights", "device", "workers", "cache",
               "balance_groups", "teacher", "unlabeled"}  # fmt: skip


def _train_command(distill: bool) -> Any:
    """`faceattr train` (or `distill`) as a click command, to parse the options tune is given."""
    import typer.main

    from faceattr.cli.common import Command
    from faceattr.cli.distill import distill_command
    from faceattr.cli.train import train_command

    app = typer.Typer()
    name = "distill" if distill else "train"
    app.command(name, cls=Command)(distill_command if distill else train_command)
    return typer.main.get_command(app)  # one command: that command itself


def _kinds(train: Any) -> dict[str, type]:
    """Each train setting --param may set -> the Python type of its values."""
    kinds: dict[str, type] = {}
    for p in train.params:
        if setting_of(p) is None or p.name in _NOT_PARAMS:
            continue
        kind = p.type_descriptor.annotation  # the option's value type, e.g. float
        kinds[p.name] = kind if kind in (bool, int, float) else str
    return kinds


@handle_errors
def tune_command(
    ctx: typer.Context,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="NAME=SPEC, repeatable: a train option and its values: "
            "a,b,c (choices), LOW:HIGH (a range; integers if both are), LOW:HIGH:log.",
        ),
    ] = None,  # fmt: skip
    trials: Annotated[
        int | None,
        typer.Option(help="Finished trials to reach (default 10; grid: every combination)."),
    ] = None,  # fmt: skip
    study_dir: Annotated[
        Path | None, typer.Option(help="The study's folder: study.db and trials/trial-NNN.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="An Optuna storage URL instead of DIR/study.db, e.g. "
            "postgresql://USER@HOST/DB, so several processes or machines share it."
        ),
    ] = None,  # fmt: skip
    sampler: Annotated[
        str,
        typer.Option(
            help="grid: the full factorial of the listed values.", **choice(TUNE_SAMPLERS)
        ),
    ] = "tpe",
    pruner: Annotated[
        str,
        typer.Option(
            help="median: stop a trial whose epoch is below the median of the others.",
            **choice(TUNE_PRUNERS),
        ),
    ] = "median",  # fmt: skip
    metric: Annotated[
        str,
        typer.Option(
            help="Validation metric to maximise, reported after every epoch.",
            **choice(TUNE_METRICS),
        ),
    ] = "mean_accuracy",  # fmt: skip
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Print the summary of the study in this folder and exit."),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="Tune a distillation: every trial is `faceattr distill TEACHER` with the "
            "options given, and --param may also vary alpha and temperature (docs/distill.md).",
        ),
    ] = None,  # fmt: skip
    json_out: JsonOption = False,
) -> None:
    """Search hyperparameters with Optuna: each trial is a training run.

    Pass any `faceattr train` option (--root, --arch, --epochs, ...) for every trial, and
    --param for each option to vary. Each trial writes a run directory under
    DIR/trials/ (eval, predict and report work on it) and reports its validation metric after
    every epoch, so the pruner can stop weak trials early. Re-running the same command
    continues the study: finished trials are kept and an interrupted one continues from its
    last finished epoch.

    \\b
    Examples:
      faceattr tune --root data/celeba --arch mobilenet_v2 --epochs 2 \\
          --param lr=1e-4:1e-2:log --param dropout=0.3,0.5 --trials 8 --study-dir studies/lr
      faceattr tune --root data/celeba --param lr=0.01,0.001 --param dropout=0.3,0.5 \\
          --sampler grid --study-dir studies/grid
      faceattr tune --teacher default --root data/celeba --arch efficientnet_lite0 \\
          --param alpha=0.2,0.5,0.8 --param temperature=1,2,4 --study-dir studies/kd
      faceattr tune --summary studies/lr
    """
    from faceattr.extras import require

    require("optuna", what="faceattr tune")
    from faceattr.engine.tune import (
        StudySettings,
        parse_param,
        run_study,
    )
    from faceattr.engine.tune import summarize as summarize_study
    from faceattr.errors import UsageError

    if summary is not None:
        _show(summarize_study(summary, storage), json_out)
        return
    if study_dir is None:
        raise UsageError(
            "Missing --study-dir: the folder the study is kept in.",
            "e.g. --study-dir studies/lr (re-run the same command to continue).",
        )
    if not param:
        raise UsageError("Nothing to tune: pass --param NAME=SPEC at least once.",
                         "e.g. --param lr=1e-4:1e-2:log --param dropout=0.3,0.5")  # fmt: skip
    if teacher is not None:  # a missing or unreadable teacher: said before the study exists
        from faceattr.models.file import ModelFile

        _ = ModelFile.resolve(teacher).info  # reads and checks its metadata
    train = _train_command(distill=teacher is not None)
    base_args = list(ctx.args)
    head = [] if teacher is None else [teacher]
    tctx = train.make_context("tune", [*head, *base_args, "--print-config"])
    config_changes(tctx)  # the base options' numbers checked before any trial
    if tctx.params.get("root") is None:
        raise UsageError("Missing --root: the dataset folder every trial trains on.")
    from faceattr.utils import resolve_device

    resolve_device(tctx.params.get("device") or "auto")  # --device cuda without a GPU: say so now
    specs = [parse_param(p, _kinds(train)) for p in param]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"--param names repeat: {', '.join(names)}.")
    if sampler == "grid" and any(s.choices is None for s in specs):
        raise UsageError("--sampler grid needs listed values for every --param (a,b,c), "
                         "not ranges.")  # fmt: skip
    from dataclasses import asdict

    settings = StudySettings(
        base_args=base_args,
        params=[asdict(s) for s in specs],
        metric=metric,
        sampler=sampler,
        pruner=pruner,
        trials=trials,
        teacher=teacher,
    )

    def make_config(values: dict[str, Any], run_dir: Path) -> Any:
        from faceattr.cli.distill import distill_changes
        from faceattr.config import build_config
        from faceattr.engine.distill import resolve_teacher

        if teacher is None:
            return build_config(config_changes(tctx, **values, out_dir=run_dir))
        return resolve_teacher(build_config(distill_changes(tctx, **values, out_dir=run_dir)))

    result = run_study(study_dir, settings, make_config, storage=storage,
                       progress=RichProgress())  # fmt: skip
    _show(result, json_out)


def _show(summary: StudySummary, json_out: bool) -> None:
    if json_out:
        print_json(summary.to_json())
        return
    names = list(dict.fromkeys(k for t in summary.trials for k in t.params))
    table = Table(title=literal(f"{summary.study_dir}: {summary.metric}"), title_justify="left")
    for col in ("trial", *names, summary.metric, "epochs", "seconds", "state"):
        table.add_column(literal(col), justify="left" if col == "state" else "right")
    for t in summary.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        table.add_row(str(t.number), *[literal(_fmt(t.params.get(n))) for n in names], value,
                      str(t.epochs), "" if t.seconds is None else f"{t.seconds:.0f}",
                      t.state + (f" (retry of {t.retry_of})" if t.retry_of is not None
                                 else ""))  # fmt: skip
    out.print(table)
    best = summary.best
    if best is not None:
        err.print(f"Best: trial {best.number}, {literal(summary.metric)} {best.value:.4f} "
                  f"({literal(best.run_dir)}). Reproduce it with:", highlight=False)  # fmt: skip
        out.print(literal(summary.command), highlight=False, soft_wrap=True)
    if summary.importances:
        shown = ", ".join(f"{literal(k)} {v:.2f}" for k, v in summary.importances.items())
        err.print(f"Parameter importances: {shown}", highlight=False)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)
