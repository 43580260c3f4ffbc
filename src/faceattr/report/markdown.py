"""Render a :class:`~faceattr.report.document.Report` as Markdown, plots as files beside it.

``report.md`` gets a folder ``report_files/`` with one SVG/PNG per plot and one JPEG per
gallery image, linked by relative paths (fit for a README, a pull request or a wiki).

Every text goes through :func:`text`: the report's own ``**bold**`` and ```code``` marks become
Markdown's, and every other character (names whole) shows as itself: Markdown's and HTML's
special characters are backslash-escaped, so a name can neither open markup nor inject HTML.
"""

from __future__ import annotations

import re
from itertools import groupby
from pathlib import Path
from urllib.parse import quote

from faceattr.fileio import Inputs, atomic_write_bytes, atomic_write_text
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
    literal,
    spans,
)

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")  # a file name from a name: no dots, no separators
# What Markdown (CommonMark and GitHub's extensions) would read in running text: escapes,
# emphasis, code, links and images, raw HTML and entities, table cells, strikethrough.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")
# What would open a block at the start of a line: a heading, a list item, a quote.
_BLOCK_START = re.compile(r"^(\s*)(#{1,6}(?=\s|$)|[-+](?=\s|$)|>|\d{1,9}(?=[.)](?:\s|$)))")
_BREAKS = re.compile(r"[\r\n\v\f\x85\u2028\u2029]+")


def _code(s: str, cell: bool) -> str:
    """A code span holding ``s`` as it is (a fence longer than any run of backticks in it)."""
    fence = "`" * (max((len(run) for run in re.findall("`+", s)), default=0) + 1)
    pad = " " if s.strip(" ") and (s[0] in "` " or s[-1] in "` ") else ""
    return f"{fence}{pad}{s.replace('|', chr(92) + '|') if cell else s}{pad}{fence}"


def _escape(s: str) -> str:
    # GitHub reads $...$ as maths and has no backslash escape for it: a span breaks the pair.
    return _SPECIAL.sub(r"\\\1", s).replace("$", "<span>$</span>")


def text(t: str, *, cell: bool = False, bold: bool = False) -> str:
    """A report text as Markdown on one line: its ``**bold**`` and ```code``` as Markdown's,
    all other characters (names whole, see :func:`~faceattr.report.document.literal`) literal.
    ``cell``: inside a table row (``|`` escaped in code too); ``bold``: all of it bold."""
    out = []
    runs = spans(_BREAKS.sub(" ", t.replace("\0", "\ufffd")))
    for strong, group in groupby(runs, key=lambda s: s.bold or bold):
        inner = "".join(_code(s.text, cell) if s.code else _escape(s.text) for s in group)
        if strong and inner.strip():
            core = inner.strip()
            lead, trail = inner[: len(inner) - len(inner.lstrip())], inner[len(inner.rstrip()) :]
            inner = f"{lead}**{core}**{trail}"  # ** must touch the text to count
        out.append(inner)
    rendered = "".join(out)
    m = _BLOCK_START.match(rendered)
    if m:
        at = m.end(2) if m.group(2)[0].isdigit() else m.start(2)  # "1\." / "\#", "\-", "\>"
        rendered = rendered[:at] + "\\" + rendered[at:]
    return rendered


def _table(t: Table) -> str:
    lines = []
    if t.caption:
        # Markdown tables neither sort nor colour: say so in the caption's own terms.
        caption = t.caption.replace(" (click a column to sort)", "").replace(
            "(best in green)", "(best in bold)"
        )
        lines.append(text(caption, bold=True) + "\n")
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
    lines.append("| " + " | ".join(text(c, cell=True) or " " for c in cols) + " |")
    align = ":--" if t.wrap else "--:"  # settings tables hold text; the others numbers
    lines.append("|" + "|".join([":--"] + [align] * (len(cols) - 1)) + "|")
    for row in t.rows:
        cells = [text(c.text, cell=True, bold=c.tone in ("good", "strong")) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _Writer:
    def __init__(self, out: Path, overwrite: bool | None = None, inputs: Inputs | None = None):
        self.out, self.overwrite, self.inputs = out, overwrite, inputs
        self.folder = out.with_name(out.stem + "_files")
        self.used: set[str] = set()  # file names written, lower case
        self.names: list[str] = []  # as written

    def file(self, stem: str, ext: str, data: bytes) -> str:
        """Write ``data`` into the files folder; return its path relative to the report (as a
        link target). The file name keeps only letters, digits, ``_`` and ``-`` of ``stem``
        (a name can reach no other folder, hide as a dot file, or overflow a name's length)
        and differs from the others also where case does not count (macOS, Windows)."""
        stem = _SAFE.sub("-", stem).strip("-")[:80].strip("-") or "figure"
        candidate, k = f"{stem}.{ext}", 2
        while candidate.lower() in self.used:
            candidate, k = f"{stem}-{k}.{ext}", k + 1
        self.used.add(candidate.lower())
        self.names.append(candidate)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / candidate, data, overwrite=self.overwrite,
                           inputs=self.inputs)  # fmt: skip
        return quote(f"{self.folder.name}/{candidate}")

    def figure(self, f: Figure) -> str:
        rel = self.file(f.name, f.extension, f.data)
        image = f"![{text(f.alt) or text(literal(f.name))}]({rel})"
        return image + (f"\n\n*{text(f.caption)}*" if f.caption else "")

    def card(self, c: Card) -> str:
        title = literal(c.title)  # the image's name, as it is
        img = ""
        if c.image:
            img = f"![{text(title, cell=True)}]({self.file(c.name or c.title, 'jpg', c.image)})"
        wrong = "<br>".join(text(f"✗ {w}", cell=True) for w in c.wrong) or "–"
        right = "<br>".join(text(x, cell=True) for x in [*(f"✓ {r}" for r in c.right), *c.lines])
        head = f"{text(title, cell=True)} ({text(c.subtitle, cell=True)})"
        return f"| {img}<br>{head} | {wrong} | {right or '–'} |"

    def block(self, b: Block) -> str:
        if isinstance(b, Figure):
            return self.figure(b)
        if isinstance(b, Table):
            return _table(b)
        if isinstance(b, Paragraph):
            return text(b.text)
        if isinstance(b, Bullets):
            return "\n".join(f"- {text(i)}" for i in b.items)
        if isinstance(b, Note):
            return f"> **{'Note' if b.kind == 'info' else 'Warning'}:** {text(b.text)}"
        if isinstance(b, Tiles):
            return "\n".join(
                f"- {text(t.label, bold=True)}: {text(t.value)}"
                + (f" ({text(t.detail)})" if t.detail else "")
                for t in b.items
            )
        if isinstance(b, Gallery):
            head = "| image | wrong | right (present) |\n|:--|:--|:--|"
            return head + "\n" + "\n".join(self.card(c) for c in b.cards)
        if isinstance(b, Columns):
            return "\n\n".join(self.block(x) for x in b.blocks)
        if isinstance(b, Details):
            inner = "\n\n".join(self.block(x) for x in b.blocks)
            from faceattr.report.html import inline  # the summary is in an HTML block

            summary = inline(_BREAKS.sub(" ", b.summary))  # a blank line would end the block
            return f"<details><summary>{summary}</summary>\n\n{inner}\n\n</details>"
        raise TypeError(f"unknown report block {type(b).__name__}")


def write_markdown(
    report: Report, out: Path, *, overwrite: bool | None = None, inputs: Inputs | None = None
) -> list[Path]:
    """Write ``out`` (Markdown) and its files folder; return every path written.
    ``overwrite`` and ``inputs``: as :func:`faceattr.fileio.atomic_open`'s, for every file."""
    out = Path(out)
    w = _Writer(out, overwrite, inputs)
    parts = [f"# {text(report.title)}", f"*{text(report.subtitle)}*"]
    if report.findings:
        parts.append("## At a glance\n\n" + "\n".join(f"- {text(f)}" for f in report.findings))
    for s in report.sections:
        parts.append(f"## {text(s.title)}")
        if s.lead:
            parts.append(f"*{text(s.lead)}*")
        parts.extend(w.block(b) for b in s.blocks)
    if report.footer:
        parts.append(f"---\n*{text(report.footer)}*")
    atomic_write_text(out, "\n\n".join(parts) + "\n", overwrite=overwrite, inputs=inputs)
    return [out, *(w.folder / n for n in sorted(w.names))]
