"""What every command shares: consoles, error-to-exit-code mapping, rich progress, JSON out."""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
import typer.core
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

from faceattr.errors import FaceAttrError
from faceattr.progress import EpochEnd, PlainLines, Progress, format_duration


class _Console(Console):
    """rich's console, with a safety net: a line whose markup does not parse (a name that
    missed :func:`literal`) prints as plain text rather than ending a command whose work is
    done in a traceback."""

    def render_str(self, text: str, **kwargs: Any) -> Any:
        from rich.errors import MarkupError

        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})

    @property
    def soft_wrap(self) -> bool:
        """Lines are wrapped at the width only on a terminal: in a log file, a pipe or a
        captured stream a message stays one line, so a path in it is never broken."""
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


# Results go to stdout (pipeable); progress, logs and errors to stderr. No emoji codes: a
# file named ":smile:.jpg" prints as itself. Rich markup ("[bold]...[/]") is faceattr's own
# styling only: every value from outside goes in through literal().
out = _Console(soft_wrap=True, emoji=False)
err = _Console(stderr=True, emoji=False)

# Characters that would act on the terminal instead of showing: C0/C1 controls (escape
# sequences, carriage returns, newlines in a name) and the bidirectional overrides that can
# make "gpj.exe" read as "exe.jpg".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_SHOWN = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    c = match.group()
    return _SHOWN.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _visible(text: str) -> str:
    """``text`` with its control characters shown as escapes (where no markup is read)."""
    return _CONTROL.sub(_shown, text)


def literal(value: object, *, lines: bool = False) -> str:
    """``value`` (a path, a file, folder, attribute or run name, a message from the core: any
    text faceattr did not write) as rich markup that prints exactly it: ``[`` never opens a
    tag, and control characters are shown as escapes (``\\n``, ``\\x1b``, ``\\u202e``) instead
    of acting on the terminal; ``lines=True`` keeps newlines and tabs (multi-line messages).

    Use it for every such value in ``out``/``err`` prints, rich Table cells, titles and column
    names; faceattr's own styling goes around it: ``err.print(f"[bold]{literal(path)}[/]")``.
    """
    from rich.markup import escape

    return escape((_CONTROL_BUT_LINES if lines else _CONTROL).sub(_shown, str(value)))


F = TypeVar("F", bound=Callable[..., Any])


def reflow(text: str | None) -> str | None:
    """Help text with the line breaks of its source joined: paragraphs (blank-line
    separated) print as flowing sentences; a paragraph starting with ``\\b`` keeps its lines."""
    if not text:
        return text
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _flags_take_no_value(params: list[Any]) -> None:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # shown as `--json`, not `--json <bool>`


class Group(typer.core.TyperGroup):
    """faceattr and its sub-command groups: flags shown without a value type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["help"] = reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)
        _flags_take_no_value(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _flags_take_no_value([option] if option is not None else [])
        return option

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # includes the completion options typer adds
        _flags_take_no_value(params)
        return params


class Command(typer.core.TyperCommand):
    """Every faceattr command: flowing help paragraphs, flags shown without a value type
    (``--json``, not ``--json <bool>``), and each number's allowed range (``config.LIMITS`` /
    ``NUMBER_LIMITS``, see :func:`faceattr.cli.options.option_limit`) said in its help and
    checked before the command runs (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from faceattr.cli.options import option_limit

        kwargs["help"] = reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)
        _flags_take_no_value(self.params)
        for param in self.params:
            limit = option_limit(param)
            if limit is not None and isinstance(param, typer.core.TyperOption):
                text = param.help or ""
                if "must be" not in text.lower():
                    rule = limit.describe().replace("[", "\\[")  # no rich markup
                    param.help = f"{text} Must be {rule}.".strip()

    def invoke(self, ctx: Any) -> Any:
        from faceattr.cli.options import check_numbers

        handle_errors(check_numbers)(self, ctx.params)  # a number out of range: exit 2
        return super().invoke(ctx)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _flags_take_no_value([option] if option is not None else [])
        return option


def handle_errors(fn: F) -> F:
    """Turn user-fixable errors into a message and an exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FaceAttrError as exc:
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            # A package of an extra the light install leaves out (torch, matplotlib, ...).
            from faceattr.extras import EXTRA_OF, missing_extra_error

            if (exc.name or "").split(".")[0] not in EXTRA_OF:
                raise
            error = missing_extra_error(exc.name or "")
            report_error(error)
            raise typer.Exit(error.exit_code) from None
        except OSError as exc:
            # A full disk or read-only folder where no faceattr write path caught it.
            from faceattr.fileio import is_write_error, write_error

            if not is_write_error(exc, from_write=False):
                raise
            failed = write_error(exc, exc.filename or "(unknown)", "output",
                                 "Check what the command wrote before the error.")  # fmt: skip
            report_error(failed)
            raise typer.Exit(failed.exit_code) from None
        except KeyboardInterrupt as exc:
            err.print("[yellow]Interrupted.[/]")
            hint = getattr(exc, "hint", None)  # errors.Interrupted: what was kept, how to go on
            if hint:
                err.print(literal(as_flags(hint), lines=True), highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# A setting named in a core message: `root=DIR`, `no_detect=True`, `optim.lr=0.01`.
_SETTING = re.compile(r"`([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?)=([^`]*)`")


def as_flags(text: str) -> str:
    """``text`` from the core, for the command line: each setting it names as ```name=value```
    (see :mod:`faceattr.errors`) becomes the flag that sets it, ```--name value```.

    A TrainConfig field (``optim.lr``) becomes the flag declared for it (``--lr``); another
    name its own flag (``calibration_root`` -> ``--calibration-root``). ``=True`` is the flag
    alone, ``=False`` its ``--no-`` form; quotes around a value are dropped.
    """

    def flag(match: re.Match[str]) -> str:
        from faceattr.cli.options import SETTING_FLAGS

        name, value = match.group(1), match.group(2).strip()
        by_key = {key: f for f, key in SETTING_FLAGS.items()}
        option = by_key.get(name) or "--" + name.rpartition(".")[2].replace("_", "-")
        if value == "True":
            return f"`{option}`"
        if value == "False":
            return f"`--no-{option[2:]}`"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"`{option} {value}`" if value else f"`{option}`"

    return _SETTING.sub(flag, text)


def report_error(exc: FaceAttrError) -> None:
    """The red "Error:" line and the hint (printed literally: no rich markup in them), with
    the settings they name shown as flags (:func:`as_flags`)."""
    import os

    # Under torchrun every process reports; say which one when it is not the first.
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "0"
    where = "" if rank == "0" else f" (process {rank})"
    message = literal(as_flags(exc.message), lines=True)
    err.print(f"[bold red]Error{where}:[/] {message}", highlight=False)
    if exc.hint:
        err.print(literal(as_flags(exc.hint), lines=True), highlight=False)


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout (no rich markup or wrapping)."""
    from faceattr.utils import to_json

    sys.stdout.write(to_json(data, indent=2) + "\n")
    sys.stdout.flush()


class RichProgress(Progress):
    """:class:`faceattr.progress.Progress` drawn with rich on stderr."""

    def __init__(self, quiet: bool = False, *, clock: Callable[[], float] | None = None) -> None:
        self.quiet = quiet
        self._progress: Bar | None = None  # the live bar, while one runs
        self._task: TaskID | None = None
        # Not a terminal (a log file, nohup, CI, a notebook): a plain line with the ETA every
        # 30 s of a task and one at its end, instead of a live bar (``clock``: for tests).
        self._plain = PlainLines(
            lambda line: err.print(literal(line), highlight=False, soft_wrap=True),
            describe=lambda info: "  ".join(_fmt_info(k, v) for k, v in info.items()),
            clock=clock or time.monotonic,
        )

    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        if self.quiet:
            return
        if not err.is_terminal:  # the description may name a file ("extract NAME.zip")
            self._plain.start(description, total)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar  # rich's bar, not faceattr's Progress

        self.finish()
        if unit == "bytes":
            from rich.progress import DownloadColumn, TransferSpeedColumn

            counts: tuple = (DownloadColumn(), TransferSpeedColumn())
        else:
            counts = (MofNCompleteColumn(),)
        self._progress = Bar(
            TextColumn("{task.description}", style="bold", markup=False),  # no markup, emoji
            BarColumn(),
            *counts,
            TextColumn("{task.fields[info]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(_visible(description), total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._progress is None or self._task is None:
            self._plain.advance(n, **info)  # a no-op unless a plain task runs
            return
        text = "  ".join(_fmt_info(k, v) for k, v in info.items())
        self._progress.update(self._task, advance=n, info=_visible(text))

    def finish(self) -> None:
        self._plain.finish()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, message: str) -> None:
        if not self.quiet:
            err.print(literal(as_flags(message), lines=True), highlight=False)

    def epoch_end(self, event: EpochEnd) -> None:
        r = event.row
        self.log(
            f"epoch {event.epoch}/{event.epochs}  train loss {r['train_loss']:.4f}  "
            f"val loss {r['val_loss']:.4f}  val mean acc {r['val_mean_accuracy']:.4f}  "
            f"strict {r['val_strict_accuracy']:.4f}  {_fmt_info('ips', r['images_per_second'])}"
            + ("  (best)" if event.best else "")
            + _time_left(event)
        )


def _time_left(event: EpochEnd) -> str:
    """The rest of the run at this epoch's pace ("" after the last epoch)."""
    seconds, left = event.row.get("seconds"), event.epochs - event.epoch
    if not seconds or left <= 0:
        return ""
    return f"  (about {format_duration(seconds * left)} left for {left} more epoch(s))"


def _fmt_info(key: str, value: Any) -> str:
    if key == "ips":  # a slow CPU's 1.4 img/s is not "1 img/s"
        return f"{value:.1f} img/s" if value < 10 else f"{value:.0f} img/s"
    if isinstance(value, float):
        return f"{key} {value:.4f}"
    return f"{key} {value}"


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"
