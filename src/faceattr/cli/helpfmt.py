"""--help that reads at 80 columns: option names are never cut.

Typer lays an options panel out as a table of six columns (long name, short name, negative
long and short names, value type, help) and, when they do not fit, shrinks them all alike,
so at 80 columns `--threshold-metric` became `--threshold-metr…` and long help words were cut.
:class:`HelpTable` (installed into typer by :func:`install`) keeps the same rows but puts every
name of an option in one cell (`-h, --help`; a negative form on its own line), never wraps
that cell, breaks a long list of choices after a `|`, and folds (never cuts) the help text.
A row of another shape (another typer version's layout) is left as typer made it.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

CHOICES_WIDTH = 20  # a "[a|b|c]" value type longer than this breaks after a "|"


def _plain(cell: Any) -> str | None:
    """The text of a cell typer made (rich Text), or None for anything else."""
    return cell.plain if isinstance(cell, Text) else None


def _choice_lines(cell: Text) -> Text:
    """``[balanced_accuracy|accuracy|f1]`` as lines of at most CHOICES_WIDTH, broken after a
    ``|`` (a single longer choice keeps its line)."""
    text = cell.plain
    if len(text) <= CHOICES_WIDTH or not (text.startswith("[") and "|" in text):
        return cell
    lines, line = [], ""
    for part in text.split("|"):
        piece = part if not line else "|" + part
        if line and len(line) + len(piece) + 1 > CHOICES_WIDTH:  # +1: the "|" ending a line
            lines.append(line + "|")
            line = part
        else:
            line += piece
    lines.append(line)
    return Text("\n".join(lines), style=cell.style)


def _names(long: Text, short: Text, negative: Text, negative_short: Text) -> Text:
    """All the names of an option in one cell: ``-h, --help`` or ``--amp`` over ``--no-amp``."""
    name = Text()
    for i, part in enumerate(p for p in (short, long) if p.plain):
        if i:
            name.append(", ")
        name.append_text(part)
    for part in (negative_short, negative):
        if part.plain:
            name.append("\n")
            name.append_text(part)
    return name


class HelpTable(Table):
    """typer's options table, laid out so that no option name is ever cut (module doc)."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        required: tuple[Any, ...] = ()
        if len(cells) == 7:  # typer puts the "required" mark first when a panel has one
            required, cells = cells[:1], cells[1:]
        if len(cells) != 6 or any(_plain(c) is None for c in cells[:5]):
            super().add_row(*required, *cells, **kwargs)
            return
        long, short, negative, negative_short, types, help_text = cells
        for part in getattr(help_text, "renderables", [help_text]):  # typer: Columns of Text
            if isinstance(part, Text):
                part.overflow = "fold"
        super().add_row(*required, _names(long, short, negative, negative_short),
                        _choice_lines(types), help_text, **kwargs)  # fmt: skip
        first = len(required)
        self.columns[first].no_wrap = True  # the names
        self.columns[first + 1].overflow = "fold"  # the value type
        self.columns[first + 2].overflow = "fold"  # the help: a long word folds, never cut
        self.columns[first + 2].ratio = 1  # and it takes the room the others leave


def install() -> None:
    """Make typer lay out every options panel with :class:`HelpTable`."""
    import typer.rich_utils

    if hasattr(typer.rich_utils, "Table"):
        setattr(typer.rich_utils, "Table", HelpTable)  # noqa: B010 (typer's own name for it)
