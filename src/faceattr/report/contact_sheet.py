"""``faceattr search --html``: the faces of a search as one self-contained HTML page (a
gallery rendered like the report's, see :mod:`faceattr.report.html`)."""

from __future__ import annotations

import io
from pathlib import Path

from faceattr.collection.search import SearchResult
from faceattr.report.document import Card, Gallery, Paragraph, Report, Section, literal
from faceattr.report.html import render_html

THUMBNAIL_PIXELS = 128
SHOWN_PROBABILITIES = 6  # per face: a --like result has all 40


def thumbnail(path: str, box: list[float], size: int = THUMBNAIL_PIXELS) -> bytes | None:
    """A JPEG of the face (its box with a margin), or None when the image is gone."""
    from faceattr.data.images import load_image
    from faceattr.errors import FaceAttrError

    try:
        image = load_image(path)
    except FaceAttrError:
        return None
    x, y, w, h = box
    m = 0.25 * max(w, h)
    crop = image.crop((int(x - m), int(y - m), int(x + w + m), int(y + h + m)))
    crop.thumbnail((size, size))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def contact_sheet(found: SearchResult, title: str) -> str:
    """The page: one card per face (thumbnail, score, file, probabilities), best first."""
    cards = [
        Card(
            title=f"{m.match:.3f}  {Path(m.image).name} #{m.face}",
            image=thumbnail(m.image, m.box),
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
