"""How options become a TrainConfig, and the options several commands share.

An option that sets a TrainConfig field is declared with :func:`setting`, which names the field
and the flag together (``setting("optim.lr", "--lr", help=...)``): grep for a flag and you land
on the field it sets. Such an option defaults to None ("not given"); :func:`config_changes`
reads the given ones from the command's context, so :func:`faceattr.config.build_config` can
apply them to the library's defaults (train, eval, data prepare) or
:func:`faceattr.config.with_overrides` to a parent run's settings (finetune).

Ranges are not declared on options (no typer ``min=``/``max=``): a setting's range is its
field's in ``config.LIMITS``, another number's is in ``config.NUMBER_LIMITS`` under its
parameter name. :class:`faceattr.cli.common.Command` says the range in --help and checks it
(:func:`check_numbers`) before a command runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from faceattr.config import (
    BACKENDS,
    CROP_MODES,
    LIMITS,
    NUMBER_LIMITS,
    TTA_MODES,
    DataConfig,
    Limit,
    build_config,
    field_default,
    limit_problem,
)


class Param(Protocol):
    """A click parameter, as far as these functions read one (typer may vendor click)."""

    @property
    def name(self) -> str | None: ...
    @property
    def opts(self) -> Sequence[str]: ...
    @property
    def callback(self) -> Callable[..., Any] | None: ...


class CommandParams(Protocol):
    """A click command, as far as these functions read one."""

    @property
    def params(self) -> Sequence[Param]: ...


@dataclass(frozen=True)
class Setting:
    """What an option declared with :func:`setting` sets."""

    key: str  # the TrainConfig field: "epochs", "optim.lr"
    flag: str  # its option: "--epochs", "--lr" (an argument's name for an argument)


# Each setting's flag -> the TrainConfig field it sets, filled in by the declarations.
SETTING_FLAGS: dict[str, str] = {}


def setting(
    key: str,
    *flags: str,
    help: str,
    panel: str | None = None,
    default: Any = None,
    **options: Any,
) -> Any:
    """``typer.Option(*flags, ...)`` for an option that sets the TrainConfig field ``key``.

    ``{default}`` in ``help`` shows the field's default (``default``: the text to show instead,
    for a default derived from other settings); booleans show as on/off. A flag sets one
    field wherever it is declared (a second field is an error at import).
    """
    flag = flags[0].split("/")[0]  # "--amp/--no-amp" -> "--amp"
    if SETTING_FLAGS.setdefault(flag, key) != key:
        raise ValueError(f"{flag} sets {SETTING_FLAGS[flag]}; it cannot set {key} too.")
    shown = field_default(key) if default is None else default  # a KeyError: no such field
    if isinstance(shown, bool):
        shown = "on" if shown else "off"
    return typer.Option(
        *flags,
        help=help.replace("{default}", str(shown)),
        rich_help_panel=panel,
        callback=_marked(Setting(key, flag)),
        **options,
    )


def setting_argument(key: str, name: str, *, help: str, **options: Any) -> Any:
    """``typer.Argument`` for an argument (shown as ``name``) that sets the field ``key``."""
    field_default(key)  # a KeyError: no such field
    return typer.Argument(help=help, callback=_marked(Setting(key, name)), **options)


def _marked(found: Setting) -> Callable[[Any], Any]:
    """The click callback that marks an option as ``found``'s: it passes the value through.
    typer wraps it with functools.update_wrapper, so :func:`setting_of` finds it again."""

    def given(value: Any) -> Any:
        return value

    vars(given)["setting"] = found
    return given


def setting_of(param: Param) -> Setting | None:
    """The :class:`Setting` an option (or argument) was declared with; None for the others."""
    callback = inspect.unwrap(param.callback) if param.callback is not None else None
    found = getattr(callback, "setting", None)
    return found if isinstance(found, Setting) else None


def option_limit(param: Param) -> Limit | None:
    """The allowed range of a command's number: its setting's (``config.LIMITS``) or its own
    (``config.NUMBER_LIMITS``, by parameter name)."""
    found = setting_of(param)
    if found is not None:
        return LIMITS.get(found.key)
    return NUMBER_LIMITS.get(param.name or "")


def check_numbers(command: CommandParams, values: Mapping[str, Any]) -> None:
    """A UsageError (exit 2) naming every number of ``command`` in ``values`` (by parameter
    name) that is outside its range or not finite."""
    from faceattr.errors import UsageError

    problems = []
    for param in command.params:
        problem = limit_problem(option_limit(param), values.get(param.name or ""))
        if problem:
            problems.append(f"{param.opts[0]} {problem}")
    if problems:
        raise UsageError("; ".join(problems) + ".")


def _attribute_tuple(text: str) -> tuple[str, ...] | None:
    from faceattr.attributes import parse_attribute_list

    names = parse_attribute_list(text)
    return tuple(names) if names else None


# How a setting's option value becomes the config's value (paths are stored as strings).
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "data.attributes": _attribute_tuple,
    "data.crop": lambda mode: CROP_MODES[mode],
}


def config_changes(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """TrainConfig changes (``"section.field" -> value``) from the settings given to ``ctx``'s
    command; ``values`` (by parameter name) replace what was given (tune's trials). Every
    number is checked against its range first."""
    given = {**ctx.params, **values}
    check_numbers(ctx.command, given)
    changes: dict[str, Any] = {}
    for param in ctx.command.params:
        found = setting_of(param)
        value = given.get(param.name or "")
        if found is None or value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        changes[found.key] = _CONVERT.get(found.key, lambda v: v)(value)
    return changes


def data_config(ctx: typer.Context) -> DataConfig:
    """The DataConfig the data settings given to ``ctx``'s command (``--root``, ``--dataset``,
    ``--img-size``, ...) describe, with the library's defaults for the others."""
    return build_config(config_changes(ctx)).data


def choice(values: Sequence[str], name: str | None = None) -> dict[str, Any]:
    """``typer.Option``/``typer.Argument`` settings that accept exactly ``values`` (a list the
    core owns, e.g. ``config.OPTIMIZERS``) and show them in --help, so no command restates a
    list. An argument passes its ``name`` (shown instead of the list: say the choices in its
    help)."""
    allowed = tuple(values)

    def parse(text: str) -> str:
        if text not in allowed:
            shown = ", ".join(repr(v) for v in allowed)
            raise typer.BadParameter(f"{text!r} is not one of {shown}.")
        return text

    listed = "|".join(allowed)
    return {"parser": parse, "metavar": name or f"[{listed}]"}


# Options several commands share that set no TrainConfig field (those are in cli/settings.py).
# eval/predict: override the test-time augmentation stored in the model file.
TtaOverride = Annotated[
    str | None,
    typer.Option(
        **choice(TTA_MODES),
        help="Test-time augmentation: none (faster), or flip (average each face with its "
        "mirror image). Default: the model's own setting.",
    ),
]
# predict/eval: which engine runs the model.
BackendOption = Annotated[
    str,
    typer.Option(
        **choice(BACKENDS),
        help="auto: ONNX Runtime for .onnx files and the default model, PyTorch for run "
        "directories and .safetensors files; onnx or torch to choose (torch needs "
        '`pip install "faceattr\\[train]"`).',
    ),
]
WORKERS_HELP = (
    "Threads that decode (and detect and align) images ahead of the model; 0: none (default: "
    "one per core, at most 4)."
)
# predict, index: decoding threads (eval and the others set data.workers: settings.DataWorkers).
WorkersOption = Annotated[int | None, typer.Option(help=WORKERS_HELP)]


# The face-finding options `predict` and `index` share.
NoDetectOption = Annotated[
    bool,
    typer.Option(
        "--no-detect",
        help="Treat each whole image as an aligned face crop "
        "(for data already aligned like CelebA's img_align_celeba).",
    ),
]
DetectorOption = Annotated[
    str | None,
    typer.Option(help="Face detector: retinaface (default), yunet or mtcnn, when installed."),
]
MinScoreOption = Annotated[
    float | None, typer.Option(help="Drop faces the detector scores below this.")
]
MinFaceSizeOption = Annotated[
    float, typer.Option(help="Drop faces smaller than this many pixels (shorter side).")
]
MaxFacesOption = Annotated[
    int | None, typer.Option(help="Keep at most N faces per image (best first).")
]

# eval, report: an attribute's accuracy within groups of others (faceattr.subgroups: the syntax).
SubgroupsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--subgroups",
        metavar="SPEC",
        help="An attribute's accuracy within the groups other attributes make, e.g. "
        "'Male|Heavy_Makeup,Wearing_Lipstick': Male within each of the 4 combinations "
        "(TARGET|BY[,BY...], up to 4 BY; several specs: repeat the option or separate them "
        "with ';'). Per group: images, accuracy with its 95% interval, false-positive and "
        "false-negative rates; groups under 30 images are marked.",
        show_default=False,
    ),
]

# Every command's --json: one JSON document on stdout (its keys: docs/formats.md).
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (docs/formats.md).")
]

# Every command that writes files it does not keep itself (predict, search, export, ensemble,
# report, data stats): an output never replaces an input, and an existing file only with it.
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace output files that already exist (never an input of the command). "
        "Without it an existing output is an error.",
    ),
]
