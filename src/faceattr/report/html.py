"""Render a :class:`~faceattr.report.document.Report` as one self-contained HTML page.

Everything is inline: CSS and a small sorting script in the page, plots and thumbnails as
``data:`` URIs. The page references no URL, so it opens offline and can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
from itertools import groupby

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
    Section,
    Table,
    Tiles,
    literal,
    plain,
    spans,
)
from faceattr.report.template import CSS, JS


def inline(text: str) -> str:
    """A text field as HTML: its ``**bold**`` and ```code``` as tags, every character
    (names whole: :func:`~faceattr.report.document.literal`) escaped once."""
    out = []
    for bold, group in groupby(spans(text), key=lambda s: s.bold):
        inner = "".join(
            f"<code>{html.escape(s.text, quote=False)}</code>" if s.code
            else html.escape(s.text, quote=False)
            for s in group
        )  # fmt: skip
        out.append(f"<strong>{inner}</strong>" if bold else inner)
    return "".join(out)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _figure(f: Figure) -> str:
    width = f' width="{f.width}"' if f.width else ""
    cap = f"<figcaption>{inline(f.caption)}</figcaption>" if f.caption else ""
    alt = _attr(plain(f.alt) or f.name)
    return f'<figure><img src="{data_uri(f.data, f.mime)}" alt="{alt}"{width}>{cap}</figure>'


def _table(t: Table) -> str:
    cls = "data sortable" if t.sortable else "data"
    if t.wrap:
        cls += " wrap"
    parts = [f'<div class="tablewrap"><table class="{cls}">']
    if t.caption:
        parts.append(f"<caption>{inline(t.caption)}</caption>")
    parts.append("<thead>")
    if t.groups:
        parts.append('<tr class="groups">')
        parts.extend(f'<th colspan="{span}">{inline(label)}</th>' for label, span in t.groups)
        parts.append("</tr>")
    parts.append("<tr>")
    for c in t.columns:
        tip = t.tips.get(c)
        title = f' title="{_attr(plain(tip))}"' if tip else ""
        parts.append(f"<th{title}>{inline(c)}</th>")
    parts.append("</tr></thead><tbody>")
    for row in t.rows:
        parts.append("<tr>")
        for cell in row:
            attrs = []
            if cell.sort is not None:
                attrs.append(f'data-sort="{_attr(cell.sort)}"')
            if cell.tone:
                attrs.append(f'class="t-{_attr(cell.tone)}"')
            if cell.background:
                attrs.append(f'style="background:{_attr(cell.background)}"')
            if cell.title:
                attrs.append(f'title="{_attr(plain(cell.title))}"')
            a = (" " + " ".join(attrs)) if attrs else ""
            parts.append(f"<td{a}>{inline(cell.text)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _card(c: Card) -> str:
    title = literal(c.title)  # the image's name, as it is
    img = f'<img src="{data_uri(c.image, "image/jpeg")}" alt="{_attr(c.title)}">' if c.image else ""
    wrong = "".join(f'<li class="w">{inline(w)}</li>' for w in c.wrong)
    right = "".join(f'<li class="r">{inline(r)}</li>' for r in c.right)
    lines = "".join(f"<li>{inline(x)}</li>" for x in c.lines)
    return (
        f'<div class="gcard">{img}<div class="gtext"><div class="gname">{inline(title)}</div>'
        f'<div class="gsub">{inline(c.subtitle)}</div><ul>{wrong}{right}{lines}</ul></div></div>'
    )


def render_block(b: Block) -> str:
    if isinstance(b, Figure):
        return _figure(b)
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Paragraph):
        return f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        return '<ul class="bullets">' + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Note):
        return f'<div class="note {_attr(b.kind)}">{inline(b.text)}</div>'
    if isinstance(b, Tiles):
        return '<div class="tiles">' + "".join(
            f'<div class="tile {_attr(t.tone or "")}"><div class="label">{inline(t.label)}</div>'
            f'<div class="value">{inline(t.value)}</div>'
            f'<div class="detail">{inline(t.detail)}</div></div>'
            for t in b.items
        ) + "</div>"  # fmt: skip
    if isinstance(b, Gallery):
        return '<div class="gallery">' + "".join(_card(c) for c in b.cards) + "</div>"
    if isinstance(b, Columns):
        return '<div class="cols">' + "".join(
            f"<div>{render_block(x)}</div>" for x in b.blocks
        ) + "</div>"  # fmt: skip
    if isinstance(b, Details):
        return (
            f"<details{' open' if b.open else ''}><summary>{inline(b.summary)}</summary>"
            + "".join(render_block(x) for x in b.blocks)
            + "</details>"
        )
    raise TypeError(f"unknown report block {type(b).__name__}")


def _section(s: Section) -> str:
    lead = f'<p class="lead">{inline(s.lead)}</p>' if s.lead else ""
    body = "".join(render_block(b) for b in s.blocks)
    head = f'<section class="card" id="{_attr(s.id)}"><h2>{inline(s.title)}</h2>'
    return f"{head}{lead}{body}</section>"


def render_html(report: Report) -> str:
    """The whole page as one string."""
    toc = "".join(f'<a href="#{_attr(s.id)}">{inline(s.title)}</a>' for s in report.sections)
    findings = "".join(f"<li>{inline(f)}</li>" for f in report.findings)
    glance = (
        f'<div class="glance" id="glance"><h2>At a glance</h2><ul>{findings}</ul></div>'
        if findings
        else ""
    )
    body = "".join(_section(s) for s in report.sections)
    glance_link = '<a href="#glance">At a glance</a>' if findings else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(plain(report.title))}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{inline(report.title)}</h1>'
        f'<div class="sub">{inline(report.subtitle)}</div></header>'
        f'<nav class="toc">{glance_link}{toc}</nav>'
        f"<main>{glance}{body}</main>"
        f"<footer>{inline(report.footer)}</footer>"
        f"<script>{JS}</script></body></html>\n"
    )
