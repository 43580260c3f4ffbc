"""``faceattr search --html``: the faces of a search as one self-contained HTML page (a
gallery rendered like the report's, see :mod:`faceattr.report.html`). A video's face (a
track) shows its best crop, stored in the index, and its time span."""

from __future__ import annotations

from pathlib import Path

from faceattr.collection.pictures import crop_thumbnail, face_thumbnail
from faceattr.collection.search import Match, SearchResult
from faceattr.report.document import Card, Gallery, Paragraph, Report, Section, literal
from faceattr.report.html import render_html

SHOWN_PROBABILITIES = 6  # per face: a --like result has all 40


def span(m: Match) -> str:
    """A video face's time span as shown (``12.3-15.0 s``); empty for a photo's face."""
    return f"{m.start:.1f}-{m.end:.1f} s" if m.video and m.start is not None else ""


def _crops(found: SearchResult, db: str | Path | None) -> dict[int, bytes]:
    """The stored crops of the video faces among the results (by face id)."""
    ids = [m.id for m in found.results if m.video]
    if not ids or db is None:
        return {}
    from faceattr.collection.store import open_store

    store = open_store(db, create=False)
    try:
        crops = {i: store.face_crop(i) for i in ids}
    finally:
        store.close()
    return {i: c for i, c in crops.items() if c is not None}


def contact_sheet(found: SearchResult, title: str, db: str | Path | None = None) -> str:
    """The page: one card per face (thumbnail, score, file, probabilities), best first. ``db``
    (the index searched) gives video faces their stored crops."""
    crops = _crops(found, db)
    cards = [
        Card(
            title=f"{m.match:.3f}  {Path(m.image).name} #{m.face}  {span(m)}".rstrip(),
            image=crop_thumbnail(crops[m.id]) if m.id in crops else face_thumbnail(m.image, m.box),
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
