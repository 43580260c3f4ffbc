"""``faceattr index``: walk folders, predict every face once, keep the index current.

A file is recognised as an image by its first bytes (JPEG, PNG, GIF, BMP, WebP, TIFF), or by
an image extension (then an unreadable one is recorded as an error); as a video as ``predict``
recognises one (:func:`faceattr.video.probe.is_video_input`: its container by content, or a
video extension). A video is one entry like a photo, each of its tracks (a person) one face,
with its time span and best crop; it is written in a transaction of its own. Re-running is
incremental: a file whose size and modification time are unchanged is skipped without being
read (unless it failed last time: failed files are retried on every run); one whose time
changed but whose contents hash the same is only touched; a copy of an indexed file takes
its faces without predicting again. ``prune`` drops entries of files that are gone; a
folder or file that cannot be read keeps its entries and is reported (``unreadable``), never
taken as deleted.

Only regular files are read: a FIFO, socket or device (or a link to one) is passed over
with a note (``skipped``), never opened, so the walk and the hash cannot block on one.

Every path is stored in one form (:func:`stored_path`: absolute, the folders' links
resolved), so one file is one entry however its folder was named.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceattr.collection.store import CollectionError, Store, open_store
from faceattr.config import MIN_FACE_SIZE
from faceattr.data.images import IMAGE_EXTENSIONS
from faceattr.errors import UsageError
from faceattr.fileio import sha256_of
from faceattr.inference.results import ImageResult
from faceattr.models.file import ModelFile, ModelRef
from faceattr.progress import NullProgress, Progress
from faceattr.reading import file_kind, open_regular
from faceattr.utils import JsonResult
from faceattr.video.probe import is_video_input

if TYPE_CHECKING:
    from faceattr.inference.detect import Detector
    from faceattr.inference.predictor import Predictor
    from faceattr.video.pipeline import VideoOptions

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*")  # fmt: skip
# A commit after this many seconds or images, whichever comes first: a kill loses at most that.
COMMIT_EVERY, COMMIT_IMAGES = 2.0, 16


@dataclass
class IndexSummary(JsonResult):
    """What one ``index`` run did (``--json``)."""

    db: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    duplicates: int = 0  # new paths whose contents were already indexed (faces copied)
    pruned: int = 0
    faces: int = 0  # faces written in this run
    images_in_index: int = 0
    faces_in_index: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)  # the first few failures
    # Folders and files that could not be read: their entries are kept (path, reason).
    unreadable: list[dict[str, str]] = field(default_factory=list)
    # FIFOs, sockets, devices (or links to them) named or placed like images: never read.
    skipped: list[dict[str, str]] = field(default_factory=list)


# meta key -> value once every stored path is in the form :func:`stored_path` gives (an index
# written before is normalised by its next `index` run: :func:`normalise_stored_paths`).
PATH_FORM_KEY, PATH_FORM = "path_form", "real-folders"


def stored_path(path: str | Path) -> Path:
    """The one form a path takes in an index: absolute, with ``~``, ``.``, ``..`` and the
    symbolic links of its folders resolved, so ``../photos``, ``/abs/photos`` and a link to
    that folder all give the same entries. A folder is resolved whole; a file keeps its own
    name in its resolved folder (a link to a file is indexed under the link's name, as
    inside a walk, where links to folders are not followed)."""
    full = Path(os.path.join(os.getcwd(), os.path.expanduser(os.fspath(path))))
    if full.name in ("", ".", "..") or os.path.isdir(full):
        return Path(os.path.realpath(full))
    return Path(os.path.realpath(full.parent)) / full.name


def normalise_stored_paths(store: Store) -> int:
    """Bring the paths of an index written before :func:`stored_path` into its form (once:
    the meta key ``path_form`` records it). Entries that were the same file under two
    spellings become one (the one already in the normal form, else the newest). Returns
    how many entries were dropped as such doubles."""
    if store.get_meta(PATH_FORM_KEY) == PATH_FORM:
        return 0
    dropped, moved = 0, False
    with store.transaction():  # read again under the write lock: another indexer may be first
        if store.get_meta(PATH_FORM_KEY) == PATH_FORM:
            return 0
        groups: dict[str, list[tuple[int, str, float]]] = {}
        rows = store.conn.execute("SELECT id, path, indexed_at FROM images").fetchall()
        for image_id, path, at in rows:
            # A file that is not here (gone, or on another machine of a shared index): only
            # its "." and ".." are resolved, by name.
            norm = str(stored_path(path)) if os.path.lexists(path) else os.path.normpath(path)
            groups.setdefault(norm, []).append((int(image_id), str(path), float(at or 0.0)))
        for norm, group in groups.items():
            if len(group) == 1 and group[0][1] == norm:
                continue
            keep = next((g for g in group if g[1] == norm), None) or max(group, key=lambda g: g[2])
            for image_id, _, _ in group:
                if image_id != keep[0]:
                    store.conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
                    dropped += 1
            if keep[1] != norm:
                store.conn.execute("UPDATE images SET path = ? WHERE id = ?", (norm, keep[0]))
            moved = True
        if moved:
            store.changed()  # the column store's face ids may name dropped faces
        store.set_meta(PATH_FORM_KEY, PATH_FORM)
    return dropped


def looks_like_image(path: Path) -> bool:
    """An image by content (its first bytes) or by extension. Only a regular file is opened."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open_regular(path) as fh:
            head = fh.read(16)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def indexable(path: Path) -> bool:
    """A video (as ``predict`` decides: :func:`~faceattr.video.probe.is_video_input`) or an
    image (:func:`looks_like_image`)."""
    return is_video_input(path) or looks_like_image(path)


@dataclass
class WalkNotes:
    """What a :func:`walk` could not read (entries kept) and what it passed over."""

    unreadable: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def cannot_read(self, path: str | Path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self.unreadable.append({"path": str(path), "reason": reason})

    def keeps(self, path: str) -> bool:
        """Whether the entry ``path`` lies in (or is) something that could not be read."""
        return any(
            path == u["path"] or path.startswith(u["path"].rstrip(os.sep) + os.sep)
            for u in self.unreadable
        )


def _regular(path: Path, notes: WalkNotes) -> os.stat_result | None:
    """``path``'s stat when it is a regular file; else None, with a note saying why."""
    try:
        st = os.stat(path)
    except FileNotFoundError:  # gone since the listing, or a broken link
        if os.path.islink(path):
            notes.skipped.append({"path": str(path), "reason": "a link to a missing file"})
        return None
    except OSError as exc:  # no permission, a name too long; a loop of links is no file
        if exc.errno == errno.ELOOP:
            notes.skipped.append({"path": str(path), "reason": "a loop of symbolic links"})
        else:
            notes.cannot_read(path, exc)
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = f"{file_kind(st.st_mode)}, not a regular file"
        notes.skipped.append({"path": str(path), "reason": kind})
        return None
    return st


def walk(
    paths: Sequence[str | Path], skip: set[Path], notes: WalkNotes | None = None
) -> Iterator[tuple[Path, os.stat_result]]:
    """Image and video files under ``paths`` (recursively, sorted, hidden folders skipped),
    each with its stat. A folder or file that cannot be read goes to ``notes.unreadable``, a FIFO,
    socket or device to ``notes.skipped``; neither stops the walk."""
    notes = notes if notes is not None else WalkNotes()
    for p in paths:
        root = stored_path(p)
        try:
            is_dir = stat.S_ISDIR(os.stat(root).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.islink(root):
                hint = "Pass folders or image files to index."
                raise UsageError(f"{p} does not exist.", hint) from None
            is_dir = False
        except OSError as exc:  # no permission on a parent, a name too long
            notes.cannot_read(root, exc)
            continue
        if not is_dir:
            st = _regular(root, notes) if root not in skip else None
            if st is not None and indexable(root):
                yield root, st
            continue
        for folder, dirs, files in os.walk(
            root, onerror=lambda e: notes.cannot_read(e.filename, e)
        ):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for d in dirs:  # os.walk does not go into them: say so
                if os.path.islink(os.path.join(folder, d)):
                    notes.skipped.append({"path": os.path.join(folder, d), "reason": "a link to "
                                          "a folder, not followed (name it as a PATH to index "
                                          "it)"})  # fmt: skip
            for name in sorted(files):
                path = Path(folder) / name
                if path in skip or name.startswith("."):
                    continue
                st = _regular(path, notes)
                if st is not None and indexable(path):
                    yield path, st


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("sha256", "attributes", "thresholds")
    return all(a.get(k) == b.get(k) for k in keys)


def index_folders(
    paths: Sequence[str | Path],
    db: str | Path,
    *,
    model: ModelRef = "default",
    no_detect: bool = False,
    detector: str | None = None,
    min_score: float | None = None,
    min_face_size: float = MIN_FACE_SIZE,
    max_faces: int | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    reindex: bool = False,
    prune: bool = False,
    every: int = 1,
    fps: float | None = None,
    progress: Progress | None = None,
) -> IndexSummary:
    """Index the images and videos under ``paths`` into the database ``db`` (see the module
    docstring). ``no_detect``: each whole image (a video: each whole frame) is an aligned face
    crop (as ``predict`` takes it), for the files this run predicts. ``every``, ``fps``: how
    the videos this run reads are read (as ``predict`` reads them)."""
    from faceattr.config import PREDICT_BATCH_SIZE
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions
    from faceattr.video.pipeline import VideoOptions

    video_options = VideoOptions(every=every, fps=fps, crops=True)
    video_options.check()

    progress = progress or NullProgress()
    started = time.perf_counter()
    model_file = ModelFile.for_backend(model)  # the file predict would run
    identity = model_file.identity()
    store = open_store(db, create=True)
    summary = IndexSummary(db=store.location)
    try:
        existing = store.model
        if existing is None:
            store.initialise(identity)
        elif not _same_model(existing, identity):
            if not reindex:
                raise CollectionError(
                    f"{store.location} was indexed with another model ({existing['name']}, "
                    f"{existing['sha256'][:12]}) than {identity['name']} "
                    f"({identity['sha256'][:12]}); its faces would not be comparable.",
                    "Re-run with `reindex=True` to predict everything again with this model, "
                    "or index into another database (`db=OTHER.db`).",
                )
            progress.log(f"Reindexing: clearing {store.location} (made with "
                         f"{existing['name']}).")  # fmt: skip
            store.clear(identity)
        doubles = normalise_stored_paths(store)
        if doubles:
            progress.log(f"{store.location}: {doubles} entries were the same files under "
                         "another spelling of their path; kept one of each.")  # fmt: skip
        skip = {stored_path(f"{store.location}{end}") for end in ("", "-wal", "-shm")}
        todo: list[tuple[Path, os.stat_result, int | None]] = []
        seen = set()
        notes = WalkNotes()
        progress.start("scanning", total=None, unit="files")
        for path, st in walk(paths, skip, notes):
            seen.add(str(path))
            row = store.image(str(path))
            same = row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns)
            if row is not None and same and row.status != "error":
                summary.unchanged += 1
            else:  # new, changed, or failed last time (retried: it may be readable now)
                todo.append((path, st, row.id if row else None))
            progress.advance(1)
        progress.finish()
        summary.unreadable, summary.skipped = notes.unreadable, notes.skipped
        if prune:
            roots = [str(stored_path(p)) for p in paths]
            gone = [p for p in store.images_under(roots) if p not in seen and not notes.keeps(p)]
            with store.transaction():
                summary.pruned = store.delete(gone)

        predictor = face_finder = None  # loaded once something needs predicting
        while todo:  # a second round takes the copies of files first seen in the first
            to_predict, todo = _resolve_copies(store, todo, summary)
            if not to_predict:
                continue
            if predictor is None:
                predictor = Predictor(model_file, batch_size=batch_size or PREDICT_BATCH_SIZE)
                face_finder = None if no_detect else create_detector(
                    detector, min_score=min_score, min_face_size=min_face_size, max_faces=max_faces
                )  # fmt: skip
            is_video = [is_video_input(p) for p, *_ in to_predict]
            videos = [item for item, v in zip(to_predict, is_video, strict=True) if v]
            photos = [item for item, v in zip(to_predict, is_video, strict=True) if not v]
            stats = {p: (st, known, sha) for p, st, known, sha in to_predict}
            if photos:
                results = iter_predictions(
                    [str(p) for p, *_ in photos], predictor, detector=face_finder,
                    progress=progress, total=len(photos), workers=workers,
                )  # fmt: skip
                _write_results(store, results, stats, summary)
            for path, *_ in videos:
                _index_video(store, path, stats[path], predictor, face_finder, video_options,
                             workers, progress, summary)  # fmt: skip
        store.columns()  # the column store searches read, built now rather than at the first
        counts = store.counts()
        summary.faces_in_index = counts.pop("faces")
        summary.images_in_index = sum(counts.values())
    finally:
        store.close()
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _resolve_copies(
    store: Store, todo: list[tuple[Path, os.stat_result, int | None]], summary: IndexSummary
) -> tuple[list[tuple[Path, os.stat_result, int | None, str | None]], list[Any]]:
    """Files whose contents are already indexed (touched, or copies) are settled here. The
    rest are returned with their hash, to predict, and apart from them the copies of those
    (settled once the originals are indexed)."""
    out = []
    later = []
    first: set[str] = set()
    for path, st, known in todo:
        try:
            sha = sha256_of(path)
        except OSError:
            sha = None
        row = store.image(str(path)) if known is not None else None
        if row is not None and sha is not None and row.sha256 == sha and row.status != "error":
            with store.transaction():
                store.touch(row.id, st.st_size, st.st_mtime_ns)
            summary.unchanged += 1
            continue
        if sha is not None and sha in first:
            later.append((path, st, known))
            continue
        copy = store.faces_of_content(sha) if sha is not None else None
        if copy is not None:
            image, faces = copy
            with store.transaction():
                store.put_image(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha,
                                faces=faces, **image)  # fmt: skip
            summary.duplicates += 1
            summary.faces += len(faces)
            if known is None:
                summary.added += 1
            else:
                summary.changed += 1
            continue
        if sha is not None:
            first.add(sha)
        out.append((path, st, known, sha))
    return out, later


def _write_results(
    store: Store,
    results: Iterator[ImageResult],
    stats: dict[Path, tuple[os.stat_result, int | None, str | None]],
    summary: IndexSummary,
) -> None:
    """Store each prediction; commit every COMMIT_EVERY seconds or COMMIT_IMAGES images."""
    last, pending = time.monotonic(), 0
    with store.batch() as commit:
        for r in results:
            path = Path(r.image)
            st, known, sha = stats[path]
            faces = [{"box": f.box, "score": f.score, "landmarks": f.landmarks,
                      "probabilities": f.probability_array} for f in r.faces]  # fmt: skip
            status = "error" if r.error else ("ok" if faces else "noface")
            with store.image_write():
                store.put_image(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha,
                                status=status, error=r.error, width=r.width, height=r.height,
                                faces=faces)  # fmt: skip
            _count(summary, path, r.error, known, len(faces))
            pending += 1
            if pending >= COMMIT_IMAGES or time.monotonic() - last > COMMIT_EVERY:
                commit()
                last, pending = time.monotonic(), 0


def _count(
    summary: IndexSummary, path: Path, error: str | None, known: int | None, faces: int
) -> None:
    """One file predicted and written: failed, added or changed, and its faces."""
    if error:
        summary.failed += 1
        if len(summary.errors) < 10:
            summary.errors.append({"image": str(path), "error": error})
    elif known is None:
        summary.added += 1
    else:
        summary.changed += 1
    summary.faces += faces


def _index_video(
    store: Store,
    path: Path,
    stat_of: tuple[os.stat_result, int | None, str | None],
    predictor: Predictor,
    detector: Detector | None,
    options: VideoOptions,
    workers: int | None,
    progress: Progress,
    summary: IndexSummary,
) -> None:
    """Predict one video's tracks and write it, whole, in a transaction of its own (a kill
    loses at most this video's work). Each track is a face: the box of its best frame, its
    aggregated probabilities, its time span and its best crop as JPEG. A video that cannot be
    read (or without the video extra) is an error entry, retried by the next run."""
    from faceattr.collection.pictures import jpeg_bytes
    from faceattr.errors import FaceAttrError
    from faceattr.video.pipeline import predict_video

    st, known, sha = stat_of
    try:
        r = predict_video(path, predictor, detector=detector, options=options, workers=workers,
                          progress=progress)  # fmt: skip
        error, width, height, tracks = r.error, r.width, r.height, r.tracks
    except FaceAttrError as exc:
        error, width, height, tracks = exc.message, None, None, []
    faces = [] if error else [
        {"box": t.box, "score": None, "landmarks": None, "probabilities": t.probability_array,
         "start": t.start, "end": t.end, "crop": None if t.crop is None else jpeg_bytes(t.crop, 90)}
        for t in tracks
    ]  # fmt: skip
    status = "error" if error else ("ok" if faces else "noface")
    with store.transaction():
        store.put_image(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha,
                        status=status, error=error, width=width, height=height,
                        faces=faces)  # fmt: skip
    _count(summary, path, error, known, len(faces))
