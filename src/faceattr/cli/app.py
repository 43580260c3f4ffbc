"""The `faceattr` command line. Thin: parse options, call one core function, render."""

from __future__ import annotations

from typing import Annotated

import typer

from faceattr import __version__
from faceattr.cli import helpfmt as help_layout
from faceattr.cli.collection import index_command, search_command
from faceattr.cli.common import Command, Group
from faceattr.cli.data import data_app
from faceattr.cli.distill import distill_command
from faceattr.cli.ensemble import ensemble_command
from faceattr.cli.evaluate import eval_command
from faceattr.cli.export import export_command
from faceattr.cli.predict import predict_command
from faceattr.cli.report import report_command
from faceattr.cli.serve import serve_command
from faceattr.cli.train import finetune_command, train_command
from faceattr.cli.tune import tune_command

help_layout.install()  # --help at 80 columns never cuts an option name (cli/helpfmt.py)
app = typer.Typer(
    name="faceattr",
    help="Facial attribute recognition: which of the 40 CelebA attributes (Male, Smiling, "
    "Eyeglasses, ...) a face shows, with probabilities. Train, evaluate and predict.",
    no_args_is_help=True,
    cls=Group,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command("train", cls=Command)(train_command)
app.command("finetune", cls=Command)(finetune_command)
app.command("distill", cls=Command)(distill_command)
app.command("eval", cls=Command)(eval_command)
app.command("predict", cls=Command)(predict_command)
app.command("report", cls=Command)(report_command)
app.command("export", cls=Command)(export_command)
app.command("ensemble", cls=Command)(ensemble_command)
app.command("index", cls=Command)(index_command)
app.command("search", cls=Command)(search_command)
app.command("serve", cls=Command)(serve_command)
app.command(
    "tune",
    cls=Command,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(tune_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"faceattr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Facial attribute recognition from one command line."""


def main() -> None:
    from faceattr.malloc import tune_allocator

    tune_allocator()  # before torch allocates anything (see faceattr.malloc)
    app()
