"""`faceattr index` and `faceattr search`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, print_json
from faceattr.cli.options import (
    DetectorOption,
    JsonOption,
    MaxFacesOption,
    MinFaceSizeOption,
    MinScoreOption,
    NoDetectOption,
    OverwriteOption,
    WorkersOption,
)
from faceattr.cli.settings import EveryOption, FpsOption
from faceattr.config import MIN_FACE_SIZE

if TYPE_CHECKING:
    from faceattr.collection.search import SearchResult

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        help="The index: an SQLite file (created by index), or a postgresql://USER@HOST/DB "
        'URL for an index shared by several machines (pip install "faceattr\\[postgres]").',
    ),
]


@handle_errors
def index_command(
    paths: Annotated[
        list[Path], typer.Argument(help="Folders (searched recursively), images or videos.")
    ],
    db: DbOption = "library.db",
    model: Annotated[
        str, typer.Option(help="A run directory, a .safetensors or .onnx model file, or 'default'.")
    ] = "default",
    no_detect: NoDetectOption = False,
    detector: DetectorOption = None,
    min_score: MinScoreOption = None,
    min_face_size: MinFaceSizeOption = MIN_FACE_SIZE,
    max_faces: MaxFacesOption = None,
    workers: WorkersOption = None,
    reindex: Annotated[
        bool,
        typer.Option(
            "--reindex",
            help="Predict everything again when the index was made with "
            "another model (otherwise that is an error).",
        ),
    ] = False,  # fmt: skip
    prune: Annotated[
        bool, typer.Option("--prune", help="Drop entries of files under PATHS that are gone.")
    ] = False,
    every: EveryOption = 1,
    fps: FpsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Index the faces in a collection of photos and videos, to search them by attribute.

    Every image under PATHS (recognised by its contents) is read once: each face is found,
    aligned and predicted, and its 40 probabilities are stored in the --db index with the
    image's path, size, time and content hash. In a video (the video extra) each person's
    face is followed through the frames: each track is one face, with its time span and best
    crop (docs/search.md). Re-running indexes only new and changed files
    (a copy of an indexed file takes its faces without predicting); --prune drops files that
    are gone. An index made with another model is refused unless --reindex. Interrupted runs
    (Ctrl-C, kill -9) keep every image finished so far; run the same command again.

    \b
    Examples:
      faceattr index ~/Pictures --db library.db
      faceattr index ~/Pictures --db library.db --prune
      faceattr index ~/Videos --db library.db --every 3
      faceattr index img_align_celeba/ --no-detect --db crops.db
    """
    from faceattr.collection.indexer import index_folders

    summary = index_folders(
        paths, db, model=model, no_detect=no_detect, detector=detector, min_score=min_score,
        min_face_size=min_face_size, max_faces=max_faces, workers=workers, reindex=reindex,
        prune=prune, every=every, fps=fps, progress=RichProgress(),
    )  # fmt: skip
    if json_out:
        print_json(summary.to_json())
        return
    s = summary
    err.print(
        f"Indexed into {literal(s.db)} in {s.seconds:.1f} s: {s.added} added, {s.changed} changed, "
        f"{s.unchanged} unchanged, {s.failed} failed, {s.pruned} pruned; {s.faces} face(s) "
        f"written ({s.duplicates} copied from identical files). The index holds "
        f"{s.images_in_index} image(s), {s.faces_in_index} face(s).",
        highlight=False,
    )
    for e in s.errors:
        err.print(f"[yellow]{literal(e['image'])}[/]: {literal(e['error'])}", highlight=False)
    _notes("Cannot read (its entries are kept)", s.unreadable)
    _notes("Skipped", s.skipped)


def _notes(what: str, notes: list[dict[str, str]], shown: int = 10) -> None:
    for n in notes[:shown]:
        err.print(f"[yellow]{what}:[/] {literal(n['path'])}: {literal(n['reason'])}",
                  highlight=False)  # fmt: skip
    if len(notes) > shown:
        err.print(f"[yellow]{what}:[/] ... and {len(notes) - shown} more (see --json).")


@handle_errors
def search_command(
    query: Annotated[
        str | None,
        typer.Argument(
            help="e.g. 'Eyeglasses and not Male', '(Blond_Hair or Gray_Hair) and "
            "Smiling > 0.9'. Not with --like."
        ),
    ] = None,  # fmt: skip
    db: DbOption = "library.db",
    like: Annotated[
        Path | None,
        typer.Option(help="Faces whose attributes are most like the face in this image."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many faces (0: all).")] = 20,
    json_out: JsonOption = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write the results to this CSV file.")
    ] = None,
    html_file: Annotated[
        Path | None,
        typer.Option("--html", help="Write a contact sheet of the faces (one HTML file)."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Find faces in an index by their attributes.

    A bare attribute name means present at the model's threshold (as predict says); a
    comparison (>, >=, <, <=) uses the probability. Join them with and, or, not and
    parentheses; names are case-insensitive. Results are ranked by the query's combined
    probability (and: product, or: the larger, not: 1 - p). See docs/search.md.

    \b
    Examples:
      faceattr search 'Eyeglasses and Mustache' --db library.db
      faceattr search '(Blond_Hair or Gray_Hair) and Smiling > 0.9' --html blond.html
      faceattr search --like me.jpg --limit 50 --json
    """
    from faceattr.collection.search import like_image, search_index
    from faceattr.errors import UsageError
    from faceattr.fileio import Inputs, atomic_open, atomic_write_text, check_output
    from faceattr.report.contact_sheet import contact_sheet

    if (query is None) == (like is None):
        raise UsageError(
            "Pass a QUERY or --like IMAGE (one of them).",
            "e.g. faceattr search 'Eyeglasses and not Male' --db library.db",
        )
    # The index (and --like's photo) are inputs: never written over; checked before searching.
    sources = Inputs([db, f"{db}-wal", f"{db}-shm", *([like] if like is not None else [])])
    for file, what in ((html_file, "contact sheet"), (csv_file, "results CSV")):
        if file is not None:
            check_output(file, what=what, inputs=sources, overwrite=overwrite)
    n = limit or None
    if like is not None:
        found = like_image(like, db, limit=n)
    else:
        assert query is not None
        found = search_index(query, db, limit=n)
    title = f"faceattr search: like {like}" if like is not None else f"faceattr search: {query}"
    if html_file is not None:
        atomic_write_text(html_file, contact_sheet(found, title, db), what="contact sheet",
                          overwrite=overwrite, inputs=sources)  # fmt: skip
        err.print(f"Wrote {literal(html_file)}", highlight=False)
    if csv_file is not None:
        import csv

        results = found.results
        names = list(results[0].probabilities) if results else []  # the same in every row
        with atomic_open(csv_file, "w", newline="", encoding="utf-8", what="results CSV",
                         overwrite=overwrite, inputs=sources) as fh:  # fmt: skip
            w = csv.writer(fh)
            w.writerow(["image", "face", "x", "y", "w", "h", "match", *names])
            for r in results:
                w.writerow([r.image, r.face, *r.box, r.match,
                            *[r.probabilities[k] for k in names]])  # fmt: skip
        err.print(f"Wrote {literal(csv_file)}", highlight=False)
    if json_out:
        print_json(found.to_json())
    elif html_file is None and csv_file is None:
        _table(found)


def _table(found: SearchResult) -> None:
    from faceattr.report.contact_sheet import span

    results = found.results
    if not results:
        out.print("No face matches.")
        return
    # A query's attributes; for --like (all 40 of them) the table keeps to the similarity.
    names = [] if found.like is not None else list(results[0].probabilities)
    table = Table(title=f"{len(results)} face(s)", title_justify="left")
    table.add_column("match", justify="right")
    table.add_column("image")
    table.add_column("face", justify="right")
    videos = any(r.video for r in results)
    if videos:  # a video's face is a person's track: when they are seen
        table.add_column("time")
    for name in names:
        table.add_column(literal(name), justify="right")
    for r in results:
        when = [span(r)] if videos else []
        table.add_row(f"{r.match:.3f}", literal(r.image), str(r.face), *when,
                      *[f"{r.probabilities[k]:.3f}" for k in names])  # fmt: skip
    out.print(table)
