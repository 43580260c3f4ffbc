"""Render a :class:`~faceattr.report.document.Report` as Markdown, plots as files beside it.

``report.md`` gets a folder ``report_files/`` with one SVG/PNG per plot and one JPEG per
gallery image, linked by relative paths (fit for a README, a pull request or a wiki).
"""

from __future__ import annotations

import re
from pathlib import Path

from faceattr.fileio import atomic_write_bytes, atomic_write_text
from faceattr.report.document import (
    Block,
    Bullets,
    Card,
    Columns,
    Details,
    Figure,
    Gallery,
    Note,
    Paragraph,
    Report,
    Table,
    Tiles,
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> str:
    lines = []
    if t.caption:
        # Markdown tables neither sort nor colour: say so in the caption's own terms.
        caption = t.caption.replace(" (click a column to sort)", "").replace(
            "(best in green)", "(best in bold)"
        )
        lines.append(f"**{caption}**\n")
    cols = t.columns
    if t.groups and any(label for label, _ in t.groups):
        # Markdown has no column groups: prefix the group to each column's name.
        named = []
        i = 0
        for label, span in t.groups:
            for c in cols[i : i + span]:
                named.append(f"{label}: {c}" if label and label not in c else c)
            i += span
        cols = named + cols[i:]
    lines.append("| " + " | ".join(_cell(c) or " " for c in cols) + " |")
    align = ":--" if t.wrap else "--:"  # settings tables hold text; the others numbers
    lines.append("|" + "|".join([":--"] + [align] * (len(cols) - 1)) + "|")
    for row in t.rows:
        cells = [
            f"**{_cell(c.text)}**" if c.tone in ("good", "strong") and c.text else _cell(c.text)
            for c in row
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _Writer:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.folder = out.with_name(out.stem + "_files")
        self.used: set[str] = set()

    def file(self, stem: str, ext: str, data: bytes) -> str:
        """Write ``data`` into the files folder; return its path relative to the report."""
        name = _SAFE.sub("-", stem).strip("-") or "figure"
        candidate, k = f"{name}.{ext}", 2
        while candidate in self.used:
            candidate, k = f"{name}-{k}.{ext}", k + 1
        self.used.add(candidate)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / candidate, data)
        return f"{self.folder.name}/{candidate}"

    def figure(self, f: Figure) -> str:
        rel = self.file(f.name, f.extension, f.data)
        text = f"![{f.alt or f.name}]({rel})"
        return text + (f"\n\n*{f.caption}*" if f.caption else "")

    def card(self, c: Card) -> str:
        img = f"![{c.title}]({self.file(c.name or c.title, 'jpg', c.image)})" if c.image else ""
        wrong = "<br>".join(f"✗ {w}" for w in c.wrong) or "–"
        right = "<br>".join([*(f"✓ {r}" for r in c.right), *c.lines]) or "–"
        title = f"{_cell(c.title)} ({_cell(c.subtitle)})"
        return f"| {img}<br>{title} | {_cell(wrong)} | {_cell(right)} |"

    def block(self, b: Block) -> str:
        if isinstance(b, Figure):
            return self.figure(b)
        if isinstance(b, Table):
            return _table(b)
        if isinstance(b, Paragraph):
            return b.text
        if isinstance(b, Bullets):
            return "\n".join(f"- {i}" for i in b.items)
        if isinstance(b, Note):
            return f"> **{'Note' if b.kind == 'info' else 'Warning'}:** {b.text}"
        if isinstance(b, Tiles):
            return "\n".join(
                f"- **{t.label}**: {t.value}" + (f" ({t.detail})" if t.detail else "")
                for t in b.items
            )
        if isinstance(b, Gallery):
            head = "| image | wrong | right (present) |\n|:--|:--|:--|"
            return head + "\n" + "\n".join(self.card(c) for c in b.cards)
        if isinstance(b, Columns):
            return "\n\n".join(self.block(x) for x in b.blocks)
        if isinstance(b, Details):
            inner = "\n\n".join(self.block(x) for x in b.blocks)
            return f"<details><summary>{b.summary}</summary>\n\n{inner}\n\n</details>"
        raise TypeError(f"unknown report block {type(b).__name__}")


def write_markdown(report: Report, out: Path) -> list[Path]:
    """Write ``out`` (Markdown) and its files folder; return every path written."""
    out = Path(out)
    w = _Writer(out)
    parts = [f"# {report.title}", f"*{report.subtitle}*"]
    if report.findings:
        parts.append("## At a glance\n\n" + "\n".join(f"- {f}" for f in report.findings))
    for s in report.sections:
        parts.append(f"## {s.title}")
        if s.lead:
            parts.append(f"*{s.lead}*")
        parts.extend(w.block(b) for b in s.blocks)
    if report.footer:
        parts.append(f"---\n*{report.footer}*")
    atomic_write_text(out, "\n\n".join(parts) + "\n")
    return [out, *(w.folder / n for n in sorted(w.used))]
