"""A report as format-neutral blocks, rendered to HTML (:mod:`.html`) or Markdown
(:mod:`.markdown`). Text fields may use two inline marks: ``**bold**`` and ```code```.

Text fields are faceattr's own sentences; a name from outside (an attribute from a CSV header,
a run, file or folder name, a setting's value) goes in through :func:`literal`, which every
renderer shows exactly as it is: its ``**``, backticks, ``<``, ``|``, ``[`` are characters, not
marks or markup. :func:`spans` is the one reading of a text that the renderers (and the
terminal summary) share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

# A name is wrapped in two Unicode noncharacters (reserved for a program's internal use): they
# never come from faceattr's text, and literal() takes them out of the names themselves.
_OPEN, _CLOSE, _SLOT = "\ufdd0", "\ufdd1", "\ufdd2"
_NAMED = re.compile(f"{_OPEN}([^{_OPEN}{_CLOSE}]*){_CLOSE}")
_MARKS = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*")


def literal(value: object) -> str:
    """``value`` for a text field, shown literally by every renderer (no marks, no markup)."""
    text = str(value)
    for c in (_OPEN, _CLOSE, _SLOT):
        text = text.replace(c, "\ufffd")
    return f"{_OPEN}{text}{_CLOSE}"


@dataclass(frozen=True)
class Span:
    """A run of a text's characters, to show as they are, in one style."""

    text: str
    bold: bool = False
    code: bool = False


def spans(text: str) -> list[Span]:
    """``text`` as styled runs: ``**bold**`` and ```code``` outside names become styles (the
    marks dropped), everything else (names whole) is literal characters."""
    names: list[str] = []

    def slot(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return _SLOT

    masked = _NAMED.sub(slot, text.replace(_SLOT, "\ufffd"))
    masked = masked.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
    out: list[Span] = []

    def walk(part: str, bold: bool) -> None:
        at = 0
        for m in _MARKS.finditer(part):
            out.append(Span(part[at : m.start()], bold))
            if m.group(1) is not None:
                out.append(Span(m.group(1), bold, code=True))
            else:
                walk(m.group(2), True)
            at = m.end()
        out.append(Span(part[at:], bold))

    walk(masked, False)
    filled = iter(names)  # the slots, left to right
    runs = [Span(re.sub(_SLOT, lambda _: next(filled), s.text), s.bold, s.code) for s in out]
    return [s for s in runs if s.text]


def plain(text: str) -> str:
    """``text``'s characters without its marks (alt texts, tooltips, the page title)."""
    return "".join(s.text for s in spans(text))


@dataclass
class Figure:
    """A rendered plot: ``data`` is the file content (SVG text or PNG bytes)."""

    name: str  # file stem when written beside a Markdown report
    data: bytes
    mime: str  # image/svg+xml or image/png
    caption: str = ""
    alt: str = ""
    width: int | None = None  # display width in CSS pixels (None = natural, capped to page)

    @property
    def extension(self) -> str:
        return "svg" if self.mime == "image/svg+xml" else "png"


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # value the HTML table sorts by (None = text)
    tone: str | None = None  # good | bad | warn | muted | strong
    background: str | None = None  # CSS colour (heat-map cells)
    title: str | None = None  # tooltip


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    groups: list[tuple[str, int]] | None = None  # a header row spanning columns
    sortable: bool = True
    tips: dict[str, str] = field(default_factory=dict)  # column -> tooltip
    wrap: bool = False  # let long text cells wrap (settings tables)


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Note:
    text: str
    kind: str = "info"  # info | warn


@dataclass
class Tile:
    label: str
    value: str
    detail: str = ""
    tone: str | None = None


@dataclass
class Tiles:
    items: list[Tile]


@dataclass
class Card:
    """One gallery image with its right and wrong attributes (or plain ``lines``)."""

    title: str  # the image's name: shown as it is, never read for marks
    image: bytes | None  # JPEG
    subtitle: str = ""
    wrong: list[str] = field(default_factory=list)
    right: list[str] = field(default_factory=list)
    name: str = ""  # file stem for Markdown
    lines: list[str] = field(default_factory=list)  # neutral facts, e.g. probabilities


@dataclass
class Gallery:
    cards: list[Card]


@dataclass
class Columns:
    """Blocks shown side by side (stacked on narrow screens and in Markdown)."""

    blocks: list[Block]


@dataclass
class Details:
    """A collapsible group of blocks."""

    summary: str
    blocks: list[Block]
    open: bool = False


Block = Union[Figure, Table, Paragraph, Bullets, Note, Tiles, Gallery, Columns, Details]  # noqa: UP007


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    lead: str = ""  # one sentence saying what the section answers

    def add(self, *blocks: Block | None) -> Section:
        self.blocks.extend(b for b in blocks if b is not None)
        return self


@dataclass
class Report:
    title: str
    subtitle: str
    findings: list[str]  # the "at a glance" bullets
    sections: list[Section]
    footer: str = ""
