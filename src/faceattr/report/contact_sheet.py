"""``faceattr search --html``: the faces of a search as one self-contained HTML page (a
gallery rendered like the report's, see :mod:`faceattr.report.html`)."""

from __future__ import annotations

from pathlib import Path

from faceattr.collection.pictures import face_thumbnail
from faceattr.collection.search import SearchResult
from faceattr.report.document import Card, Gallery, Paragraph, Report, Section, literal
from faceattr.report.html import render_html

SHOWN_PROBABILITIES = 6  # per face: a --like result has all 40


def contact_sheet(found: SearchResult, title: str) -> str:
    """The page: one card per face (thumbnail, score, file, probabilities), best first."""
    cards = [
        Card(
            title=f"{m.match:.3f}  {Path(m.image).name} #{m.face}",
            image=face_thumbnail(m.image, m.box),
            subtitle=literal(m.image),
            lines=[
                f"{literal(k)} **{v:.3f}**"
                for k, v in list(m.probabilities.items())[:SHOWN_PROBABILITIES]
            ],
        )  # fmt: skip
        for m in found.results
    ]
    missing = sum(c.image is None for c in cards)
    score = "the query's combined probability" if found.like is None else (
        "the cosine similarity of the attribute profiles")  # fmt: skip
    lead = f"Best first; the number is {score}." + (
        f" {missing} image(s) are no longer on disk." if missing else ""
    )
    body = Gallery(cards) if cards else Paragraph("No face matches.")
    section = Section("faces", "Faces", [body], lead=lead)
    subtitle = f"{len(cards)} face(s) from {literal(found.db)}"
    page = Report(title=literal(title), subtitle=subtitle, findings=[], sections=[section])
    return render_html(page)  # the title (the query) is the user's text: shown as it is
