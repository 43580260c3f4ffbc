"""CelebA files already on this machine: in ``root`` itself, or handed over with ``--from``.

``--from`` takes a folder or a zip of files downloaded by hand: the official names, the
Google Drive folders ``Anno/ Eval/ Img/``, or Kaggle's archive (csv annotations, a doubled
``img_align_celeba/img_align_celeba/``). :func:`find_layout` locates the pieces and
:func:`take_from_layout` copies, converts or extracts them into ``root``, verified.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from faceattr.data.archives import ArchiveError, copy_file, count_images, extract_zip, open_zip
from faceattr.data.download import disk_error, looks_like_html, md5_file
from faceattr.data.fetch.annotations import convert_kaggle_csv
from faceattr.data.fetch.imagedir import extract_images, take_image_dir, take_image_zip
from faceattr.data.fetch.release import (
    ATTR_FILE,
    CELEBA_FILES,
    FILES_BY_NAME,
    IMAGE_DIR,
    IMAGE_ZIP,
    KAGGLE_CSV,
    PARTITION_FILE,
)
from faceattr.data.fetch.run import ChecksumError, FetchRun, SourceError
from faceattr.errors import DataError

# Names that mark a zip as a whole layout (annotations inside), not just the image archive.
_ANNOTATION_NAMES = {f.name for f in CELEBA_FILES if f.name != IMAGE_ZIP} | set(KAGGLE_CSV.values())


# ---------------------------------------------------------------------------------------------
# Files already in root


def adopt_local_files(run: FetchRun) -> None:
    """Verify files already in ``root`` but not in the manifest (placed by hand, or a kept
    archive), so that they are not downloaded again; extract a verified archive."""
    for f in CELEBA_FILES:
        path = run.root / f.name
        if not path.is_file() or (f.name == IMAGE_ZIP and run.images_ok()):
            continue
        if run.file_ok(f.name):
            if f.name == IMAGE_ZIP:  # a kept archive whose folder went missing
                _extract_local_archive(run, path)
            continue
        md5 = md5_file(path, run.progress, f"verify {f.name}")
        if md5 == run.expected[f.name] or run.normalise_line_ends(f.name, path):
            run.record(f.name, run.expected[f.name], f"found in {run.root}")
            if f.name == IMAGE_ZIP:
                _extract_local_archive(run, path)
        elif _is_html_file(path):  # a quota page an older downloader saved as data
            bad = path.with_name(path.name + ".corrupt")
            os.replace(path, bad)
            run.warnings.append(f"{path} was a web page, not data; renamed to {bad.name}.")
        else:  # perhaps a deliberate subset: leave it unless a verified copy replaces it
            run.warnings.append(
                f"{path} does not match its expected md5 ({md5} instead of "
                f"{run.expected[f.name]}); it is replaced if a verified copy can be "
                "fetched (if it is a deliberate subset, pass a checksums file listing its md5)."
            )


def _extract_local_archive(run: FetchRun, path: Path) -> None:
    try:
        extract_images(run, path, origin=str(path), strict=False)
    except (SourceError, ArchiveError) as exc:
        run.warnings.append(f"{path} could not be extracted ({exc}); fetching it again.")
        run.forget_file(IMAGE_ZIP, delete=False)


def _is_html_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(512), "")


def refuse_web_page(path: Path, name: str) -> None:
    """A SourceError when a file handed over with --from is a saved web page (a download
    site's error or quota page saved under the file's name), not the data."""
    if _is_html_file(path):
        raise SourceError(
            f"{path} is a web page (HTML), not {name}: it was probably saved from the download "
            "site's error or confirmation page. Download the file itself again."
        )


# ---------------------------------------------------------------------------------------------
# --from: finding the pieces


@dataclass
class Layout:
    """Where the pieces are in a folder of hand-downloaded files."""

    files: dict[str, Path] = field(default_factory=dict)  # official name -> .txt or Kaggle .csv
    image_zip: Path | None = None
    image_dir: Path | None = None


class FromSource:
    """Files downloaded by hand: a folder (official, Drive folders, Kaggle) or one zip."""

    kind = "from"
    title = "the local files"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def fetch(self, run: FetchRun, needed: list[str]) -> None:
        """Take what ``needed`` lists from the folder or zip; a :class:`SourceError` if it
        lacks a required file."""
        path = self.path
        temp: Path | None = None
        try:
            if path.is_file():
                if not zipfile.is_zipfile(path):
                    refuse_web_page(path, "a zip archive")
                    raise SourceError(f"{path} is neither a folder nor a zip archive")
                with open_zip(path) as archive:
                    names = {PurePosixPath(n).name for n in archive.namelist()}
                if names & _ANNOTATION_NAMES:  # an archive of a whole layout: unpack it first
                    temp = run.root / f".faceattr-from-{os.getpid()}"
                    extract_zip(path, temp, run.progress)
                    layout = find_layout(temp)
                else:  # only images: the annotations are looked for beside the zip
                    layout = find_layout(path.parent)
                    layout.image_zip, layout.image_dir = path, None
            elif path.is_dir():
                layout = find_layout(path)
            else:
                raise SourceError(f"{path} does not exist")
            take_from_layout(run, layout, needed, self.location, owned=temp)
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)


def find_layout(base: Path, max_depth: int = 3) -> Layout:
    """Locate the release's files under ``base`` (official names, Anno/Eval/Img, Kaggle csv).

    The shallowest match wins; an official ``.txt`` beats a Kaggle ``.csv``. Image folders are
    not descended into (they may hold 200k files), except to step into Kaggle's doubled
    ``img_align_celeba/img_align_celeba/``.
    """
    found: dict[str, tuple[int, int, Path]] = {}  # name -> (is_csv, depth, path)
    zips: list[tuple[int, Path]] = []
    dirs: list[tuple[int, Path]] = []
    csv_to_name = {v: k for k, v in KAGGLE_CSV.items()}
    base_depth = len(base.parts)
    for folder, subdirs, filenames in os.walk(base):
        here = Path(folder)
        depth = len(here.parts) - base_depth
        keep = []
        for d in subdirs:
            if d.startswith(".") or d == "__MACOSX":
                continue
            if d == IMAGE_DIR:
                dirs.append((depth + 1, here / d))
                continue
            if depth + 1 <= max_depth:
                keep.append(d)
        subdirs[:] = sorted(keep)
        for name in filenames:
            if name in FILES_BY_NAME and name != IMAGE_ZIP:
                key = (0, depth, here / name)
                official = name
            elif name in csv_to_name:
                key = (1, depth, here / name)
                official = csv_to_name[name]
            elif name == IMAGE_ZIP:
                zips.append((depth, here / name))
                continue
            else:
                continue
            if official not in found or key[:2] < found[official][:2]:
                found[official] = key
    layout = Layout(files={name: entry[2] for name, entry in found.items()})
    if zips:
        layout.image_zip = min(zips)[1]
    for _, image_dir in sorted(dirs):
        candidate = _step_into_nested(image_dir)
        if count_images(candidate):
            layout.image_dir = candidate
            break
    return layout


def _step_into_nested(folder: Path) -> Path:
    """Kaggle's archive doubles the folder: ``img_align_celeba/img_align_celeba/*.jpg``."""
    nested = folder / folder.name
    if nested.is_dir() and not count_images(folder, stop_at=1):
        return nested
    return folder


# ---------------------------------------------------------------------------------------------
# --from: taking the pieces


def take_from_layout(
    run: FetchRun, layout: Layout, needed: list[str], location: str, owned: Path | None
) -> None:
    """Copy (or convert, or extract) what ``needed`` lists from a hand-made layout.

    ``owned`` is our temporary extraction of a ``--from`` zip: what is in it may be moved.
    """
    has_images = layout.image_zip is not None or layout.image_dir is not None
    missing = [
        n
        for n in needed
        if FILES_BY_NAME[n].required
        and (not has_images if n == IMAGE_ZIP else n not in layout.files)
    ]
    if missing:
        want = [
            f"{IMAGE_ZIP} (or its extracted {IMAGE_DIR}/)" if n == IMAGE_ZIP else n for n in missing
        ]
        raise SourceError(
            f"{location} has no {', '.join(want)} (looked for the official names, the "
            "Google Drive folders Anno/ Eval/ Img/, and Kaggle's .csv files with "
            f"{IMAGE_DIR}/{IMAGE_DIR}/)"
        )
    for name in needed:
        if name == IMAGE_ZIP:
            continue
        src = layout.files.get(name)
        if src is None:
            run.skip_optional(name, location, f"not in {location}")
            continue
        refuse_web_page(src, name)
        if src.suffix == ".csv":
            _take_kaggle_csv(run, name, src)
        else:
            _take_text_file(run, name, src)
        run.fetched[name] = str(src)
        if name in (ATTR_FILE, PARTITION_FILE):
            run.check_annotation(name, strict=False)
    if IMAGE_ZIP in needed:
        if layout.image_zip is not None:
            refuse_web_page(layout.image_zip, IMAGE_ZIP)
            take_image_zip(run, layout.image_zip)
            run.fetched[IMAGE_ZIP] = str(layout.image_zip)
        else:
            assert layout.image_dir is not None  # has_images
            take_image_dir(run, layout.image_dir, owned)
            run.fetched[IMAGE_DIR] = str(layout.image_dir)


def _take_text_file(run: FetchRun, name: str, src: Path) -> None:
    dest = run.root / name
    if src.resolve() == dest.resolve():  # already in place: verify, set aside if bad
        md5 = md5_file(src)
        if md5 != run.expected[name] and not run.normalise_line_ends(name, src):
            bad = dest.with_name(dest.name + ".corrupt")
            os.replace(dest, bad)
            raise ChecksumError(
                name, run.expected[name], md5, str(src), f"It was renamed to {bad.name}."
            )
        run.record(name, run.expected[name], str(src))
        return
    part = run.root / f"{name}.part"
    copy_file(src, part)
    run.install(name, part, md5_file(part), str(src))


def _take_kaggle_csv(run: FetchRun, name: str, src: Path) -> None:
    """Convert Kaggle's csv to the official text file, then verify the result.

    The attribute and partition files come out byte-identical to the official ones, so the
    official md5 applies. The landmark/box files follow the official column widths as far
    as they are known; when their md5 does not match they are accepted unverified, with a
    warning (their values are what the csv holds).
    """
    csv_verified = False
    if src.name in run.user_md5:
        md5 = md5_file(src)
        if md5 != run.user_md5[src.name]:
            raise ChecksumError(
                src.name, run.user_md5[src.name], md5, str(src), "Nothing was converted."
            )
        csv_verified = True
    part = run.root / f"{name}.part"
    try:
        convert_kaggle_csv(src, part)
    except DataError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise SourceError(exc.message) from None
    md5 = md5_file(part)
    exact = name in (ATTR_FILE, PARTITION_FILE)  # conversions that give the official bytes
    if md5 == run.expected[name] or (exact and not csv_verified):
        run.install(name, part, md5, f"{src} (converted)")  # or ChecksumError
        return
    why = (
        f"the csv matched {src.name}'s checksum"
        if csv_verified
        else "its spacing may differ from the official file's, so no checksum applies"
    )
    run.warnings.append(f"{name}: converted from {src.name}, accepted because {why}.")
    try:
        os.replace(part, run.root / name)
    except OSError as exc:
        raise disk_error(run.root / name, exc) from None
    run.record(name, md5, f"{src} (converted)", unverified=True)
