"""A report as format-neutral blocks, rendered to HTML (:mod:`.html`) or Markdown
(:mod:`.markdown`). Text fields may use two inline marks: ``**bold**`` and ```code```."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


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

    title: str
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
