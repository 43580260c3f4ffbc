"""`faceattr distill`: train a student on a teacher's outputs mixed with the labels.

It takes every option of `faceattr train` (its signature is train's, read from
:func:`faceattr.cli.train.train_command`, so the two never drift apart) and the distillation
settings below, each declared once with :func:`faceattr.cli.options.setting`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, pct, print_json
from faceattr.cli.options import config_changes, setting, setting_argument
from faceattr.cli.train import (
    _report,
    config_with_run_dir,
    handled_before_run,
    missing_root,
    train_command,
)

DISTILL_HELP = "Distillation"

Teacher = Annotated[
    str,
    setting_argument(
        "distill.teacher",
        "TEACHER",
        help="The teacher: a run directory, a .safetensors or .onnx model file (an ensemble "
        "too), or `default`. Only its outputs are used, so any format teaches any student.",
        show_default=False,
        metavar="TEACHER",
    ),
]
Alpha = Annotated[
    float | None,
    setting(
        "distill.alpha",
        "--alpha",
        panel=DISTILL_HELP,
        help="Weight of the label loss; the teacher's gets 1 - alpha (0: the teacher only) "
        "(default: {default}).",
    ),
]
Temperature = Annotated[
    float | None,
    setting(
        "distill.temperature",
        "--temperature",
        panel=DISTILL_HELP,
        help="Softens both sides' probabilities: sigmoid(logit / T) (default: {default}).",
    ),
]
Unlabeled = Annotated[
    list[Path] | None,
    setting(
        "distill.unlabeled",
        "--unlabeled",
        panel=DISTILL_HELP,
        metavar="DIR",
        help="A folder of face images without labels (repeatable; subfolders searched): "
        "photos, whose faces are detected and aligned first, or aligned crops with "
        "--unlabeled-aligned. The teacher labels them.",
    ),
]
UnlabeledAligned = Annotated[
    bool | None,
    setting(
        "distill.unlabeled_aligned",
        "--unlabeled-aligned",
        panel=DISTILL_HELP,
        help="The --unlabeled images are aligned crops like the dataset's (no detection).",
    ),
]


@handle_errors
def distill_command(
    cli: typer.Context,
    teacher: Teacher,
    alpha: Alpha = None,
    temperature: Temperature = None,
    unlabeled: Unlabeled = None,
    unlabeled_aligned: UnlabeledAligned = None,
    **options: Any,  # every option of `faceattr train` (see the signature below)
) -> None:
    """Train a student network on a teacher's probabilities mixed with the labels.

    loss = alpha * label loss + (1 - alpha) * T^2 * KL(teacher || student), both sides
    softened by the temperature T. The teacher runs once per image; its outputs are cached
    beside the prepared cache (keyed by its weights' digest), so a run costs little more than
    training the student. The run directory records the teacher, and
    metrics-valid-teacher.json holds its validation metrics (`faceattr report` shows both).
    Every option of `faceattr train` applies; see docs/distill.md.

    \b
    Example:
      faceattr distill default --root data/celeba --arch efficientnet_lite0 --epochs 10
    """
    from faceattr.extras import require

    require("torch", what="faceattr distill")
    from faceattr.engine import distributed
    from faceattr.engine.distill import distill, resume_distill

    nproc, resume = options.get("nproc"), options.get("resume")
    list_archs, print_config = options.get("list_archs"), options.get("print_config")
    json_out = bool(options.get("json_out"))
    if handled_before_run(nproc, print_config=bool(print_config), list_archs=bool(list_archs)):
        return
    if resume is not None:
        result = resume_distill(resume, progress=RichProgress())
        if distributed.init().is_main:
            _report_distill(result, json_out)
        return
    if options.get("root") is None:
        raise missing_root("the dataset folder the student learns on")
    cfg = config_with_run_dir(distill_changes(cli))
    if print_config:
        print_json(cfg.to_dict())
        return
    ctx = distributed.init(cfg.device)
    if ctx.is_main:
        err.print(f"Distilling {literal(teacher)} into {literal(cfg.model.arch)} -> "
                  f"[bold]{literal(cfg.out)}[/]", highlight=False)  # fmt: skip
    result = distill(cfg, progress=RichProgress())
    if ctx.is_main:
        _report_distill(result, json_out)


def distill_changes(cli: Any, **values: Any) -> dict[str, Any]:
    """The settings a distill command line gives (``values`` replace options, as
    :func:`~faceattr.cli.options.config_changes` takes them), ``--unlabeled`` as a tuple."""
    changes = config_changes(cli, **values)
    if "distill.unlabeled" in changes:
        changes["distill.unlabeled"] = tuple(str(p) for p in changes["distill.unlabeled"])
        if not changes["distill.unlabeled"]:
            del changes["distill.unlabeled"]
    return changes


def _report_distill(result: Any, json_out: bool) -> None:
    if json_out:
        print_json(result.to_json())
        return
    _report(result.fit, False)
    t = result.teacher
    valid = t.get("valid") or {}
    half = result.fit.metrics.get("at_threshold_0.5", result.fit.metrics)
    out.print(
        f"Teacher {literal(t.get('name'))}: validation mean accuracy "
        f"{pct(valid.get('mean_accuracy'))}% at 0.5 (student {pct(half.get('mean_accuracy'))}%).",
        highlight=False,
    )


def _signature() -> inspect.Signature:
    """distill's own parameters, then every option of train that it does not declare."""
    own = inspect.signature(distill_command, eval_str=True).parameters
    mine = [p for p in own.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in mine}
    trains = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(train_command, eval_str=True).parameters.values()
        if p.name not in names
    ]
    return inspect.Signature(mine + trains)


distill_command.__signature__ = _signature()  # type: ignore[attr-defined]
