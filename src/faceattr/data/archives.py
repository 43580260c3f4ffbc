"""Archives and folders of downloaded datasets: safe extraction, link-or-copy, image files.

Both fetchers (:mod:`faceattr.data.fetch` for CelebA, :mod:`faceattr.data.fetch.wflw`) unpack
archives from the network or from a user's downloads, so nothing in one may write outside
its target folder: absolute member paths, drive letters and ``..`` are refused (zip-slip), and
so are links and special members of a tar. Every format is bounded by what it unpacks to,
counted while extracting, never by its own size (:class:`UnpackLimit`: at most
``UNPACK_RATIO`` times the archive's size, at least ``UNPACK_FLOOR``, at most
``UNPACK_MAX_BYTES`` and the free space, in at most ``UNPACK_MAX_FILES`` files), so a
decompression bomb stops with an :class:`ArchiveError` instead of filling the disk. An
extraction that fails removes its target folder, so a refused or damaged archive leaves
nothing that could pass for data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from faceattr.data.download import CHUNK_SIZE, check_free_space, disk_error, format_bytes
from faceattr.errors import DownloadError
from faceattr.progress import Progress

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
# What an archive may unpack to. Dataset photos are JPEGs, which do not compress (CelebA's
# image zip unpacks to 1.0x its size, WFLW's tar.gz to 1.0x, annotation text to ~5x): a
# hundredfold is a decompression bomb. The floor lets small archives of text through.
UNPACK_RATIO = 100
UNPACK_FLOOR = 256 * 1024 * 1024
UNPACK_MAX_BYTES = 64 * 1000**3  # no dataset faceattr fetches comes near
UNPACK_MAX_FILES = 1_000_000  # CelebA: 202,599 images
_PROGRESS_STEP = 256  # files per progress update: 200k single updates cost time
# What reading a damaged archive raises (gzip's BadGzipFile is an OSError without errno).
_DAMAGE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    OSError,
)


class ArchiveError(DownloadError):
    """An archive is damaged, malformed, or holds a member that would land outside its folder."""


# ---------------------------------------------------------------------------------------------
# Extraction


@contextlib.contextmanager
def open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The zip archive at ``path``; an :class:`ArchiveError` when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path} is not a readable zip archive ({exc}).") from None


def member_parts(name: str, kind: str = "zip") -> tuple[str, ...]:
    """The relative path parts of the archive member ``name`` (``kind`` names the archive in
    the error); an :class:`ArchiveError` for an absolute path, a drive letter or ``..``."""
    clean = name.replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or ".." in parts:
        raise ArchiveError(
            f"Refusing to extract the {kind} member {name!r}: its path leaves the target folder.",
            "The archive is malformed or malicious; get it again from a trusted source.",
        )
    return parts


def _macos_metadata(parts: tuple[str, ...]) -> bool:
    """Finder's extras: a ``__MACOSX/`` folder (zips) or ``._name`` resource forks (tars)."""
    return parts[0] == "__MACOSX" or parts[-1].startswith("._")


class UnpackLimit:
    """The bytes and files an extraction of ``archive`` may write, counted as they are
    written (a member's declared size is checked before it, its real bytes while copying)."""

    def __init__(self, archive: Path, dest_parent: Path) -> None:
        self.archive = archive
        self.size = size = archive.stat().st_size
        self.max_bytes = min(UNPACK_MAX_BYTES, max(UNPACK_FLOOR, UNPACK_RATIO * size))
        self.why = f"{UNPACK_RATIO} times its size, at least {format_bytes(UNPACK_FLOOR)}"
        if self.max_bytes == UNPACK_MAX_BYTES:
            self.why = "the most faceattr unpacks"
        self.hint = _BOMB_HINT
        try:
            free = shutil.disk_usage(dest_parent).free
        except OSError:
            free = None
        if free is not None and free < self.max_bytes:
            self.max_bytes, self.why = free, f"the free space in {dest_parent}"
            self.hint = (
                "Free some space or choose another dataset folder (`root=DIR`); nothing was kept."
            )
        self.bytes = self.files = 0

    def add_file(self, declared: int = 0) -> None:
        """One more file, ``declared`` bytes long (checked before it is written)."""
        self.files += 1
        self.check_files(self.files)
        self.check(self.bytes + declared)

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self.check(self.bytes)

    def check_files(self, count: int) -> None:
        if count > UNPACK_MAX_FILES:
            raise ArchiveError(
                f"Refusing to extract {self.archive.name}: it holds more than "
                f"{UNPACK_MAX_FILES:,} files, more than any dataset faceattr fetches.",
                _BOMB_HINT,
            )

    def check(self, total: int) -> None:
        if total > self.max_bytes:
            raise ArchiveError(
                f"Refusing to extract {self.archive.name}: it unpacks to more than "
                f"{format_bytes(self.max_bytes)} ({self.why}); the archive is "
                f"{format_bytes(self.size)}.",
                self.hint,
            )


_BOMB_HINT = (
    "The archive is malformed or malicious (a decompression bomb); get it again from the "
    "official source. Nothing was kept."
)


def extract_zip(archive: Path, dest: Path, progress: Progress) -> int:
    """Extract the files of the zip ``archive`` into ``dest`` (made afresh); how many.

    Every member path is checked, and the free space and :class:`UnpackLimit` by the
    declared sizes too, before anything is written; the bytes are counted again as they
    are written.
    """
    shutil.rmtree(dest, ignore_errors=True)
    with open_zip(archive) as zf:
        members = []
        for info in zf.infolist():
            parts = member_parts(info.filename, "zip")
            if not info.is_dir() and parts and not _macos_metadata(parts):
                members.append((parts, info))
        declared = sum(i.file_size for _, i in members)
        check_free_space(dest.parent, declared, archive.name)
        limit = UnpackLimit(archive, dest.parent)
        limit.check_files(len(members))
        limit.check(declared)
        with _writing(archive, dest, progress, len(members), _zip_damaged, limit) as out:
            for parts, info in members:
                out.write(parts, zf.open(info), info.file_size)
    return out.count


def extract_archive(archive: Path, dest: Path, progress: Progress) -> int:
    """Extract a zip or a tar (any compression) into ``dest`` (made afresh); how many files.

    A tar is read in one streaming pass (a ``.tar.gz`` cannot seek back cheaply), so its
    members are checked one by one as they come; links and special files are refused.
    """
    if zipfile.is_zipfile(archive):
        return extract_zip(archive, dest, progress)
    shutil.rmtree(dest, ignore_errors=True)
    # Dataset photos are JPEGs, which do not compress: the archive's size estimates the need.
    check_free_space(dest.parent, archive.stat().st_size, archive.name)
    limit = UnpackLimit(archive, dest.parent)  # what it really unpacks to, counted
    # Opened inside the writer's block, so a file that is no tar at all counts as damaged.
    with (
        _writing(archive, dest, progress, None, _tar_damaged, limit) as out,
        tarfile.open(archive, "r|*") as tf,
    ):
        for info in tf:
            if info.isdir():
                continue
            if not info.isfile():
                raise ArchiveError(
                    f"Refusing to extract {archive.name}: member {info.name!r} is a link or "
                    "special file, which dataset archives do not contain.",
                    "Get the archive again from the official source.",
                )
            parts = member_parts(info.name, "archive")
            src = tf.extractfile(info)
            if parts and not _macos_metadata(parts) and src is not None:
                out.write(parts, src, info.size)
    return out.count


def _zip_damaged(archive: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(f"{archive} is damaged: {exc}.")


def _tar_damaged(archive: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{archive} is not a readable archive or is damaged ({exc}).",
        "Download it again; a partial download cannot be extracted.",
    )


class _MemberWriter:
    """Writes members under ``dest``, counting them (within ``limit``) and reporting
    progress."""

    def __init__(self, dest: Path, progress: Progress, limit: UnpackLimit) -> None:
        self.dest = dest
        self.progress = progress
        self.limit = limit
        self.count = 0
        self.target = dest  # the file being written, for error messages
        self._made: set[Path] = set()

    def write(self, parts: tuple[str, ...], src: IO[bytes], declared: int = 0) -> None:
        self.limit.add_file(declared)
        self.target = target = self.dest.joinpath(*parts)
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        with src, open(target, "wb") as out:
            while block := src.read(CHUNK_SIZE):
                self.limit.add_bytes(len(block))
                out.write(block)
        self.count += 1
        if self.count % _PROGRESS_STEP == 0:
            self.progress.advance(_PROGRESS_STEP)


@contextlib.contextmanager
def _writing(
    archive: Path,
    dest: Path,
    progress: Progress,
    total: int | None,
    damaged: Callable[[Path, BaseException], ArchiveError],
    limit: UnpackLimit,
) -> Iterator[_MemberWriter]:
    """A writer into a new ``dest``; any failure in the block removes ``dest`` and becomes a
    disk error (disk full, no permission), ``damaged(archive, exc)``, or is re-raised."""
    out = _MemberWriter(dest, progress, limit)
    try:
        dest.mkdir(parents=True)
        progress.start(f"extract {archive.name}", total, unit="files")
        try:
            yield out
            progress.advance(out.count % _PROGRESS_STEP)
        finally:
            progress.finish()
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise disk_error(out.target, exc) from None
        if isinstance(exc, _DAMAGE):
            raise damaged(archive, exc) from None
        raise


# ---------------------------------------------------------------------------------------------
# Copies and folders


def copy_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest``; a failure removes ``dest`` and says which side failed."""
    try:
        shutil.copyfile(src, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise _copy_error(src, dest, exc) from None


def _copy_error(src: Path, dest: Path, exc: OSError) -> DownloadError:
    if exc.filename is not None and Path(exc.filename) == src:
        return DownloadError(f"Cannot read {src}: {exc.strerror}.")
    return disk_error(dest, exc)


def link_or_copy_tree(src: Path, dest: Path, progress: Progress, *, recursive: bool = True) -> int:
    """Recreate the files of ``src`` under ``dest`` as hard links, copies where links fail
    (another file system, or links not allowed); how many. ``recursive=False`` takes only
    the files directly in ``src``. Folders are made as files need them."""
    if recursive:
        files = sorted(Path(d, n).relative_to(src) for d, _, names in os.walk(src) for n in names)
    else:
        files = sorted(Path(e.name) for e in os.scandir(src) if e.is_file())
    progress.start(f"copy {src.name}", len(files), unit="files")
    made: set[Path] = set()
    link = True
    source, target = src, dest
    try:
        for i, rel in enumerate(files, start=1):
            source, target = src / rel, dest / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            if link:
                try:
                    os.link(source, target)
                except OSError:
                    link = False
            if not link:
                shutil.copy2(source, target)
            if i % _PROGRESS_STEP == 0:
                progress.advance(_PROGRESS_STEP)
        progress.advance(len(files) % _PROGRESS_STEP)
    except OSError as exc:
        raise _copy_error(source, target, exc) from None
    finally:
        progress.finish()
    return len(files)


def unwrap_folder(folder: Path) -> Path:
    """``X/X/`` when an archive was extracted into a folder of its own name, else ``X``."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def iter_images(folder: Path) -> Iterator[Path]:
    """The image files (by suffix) anywhere under ``folder``."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath) / name


def count_images(folder: Path, stop_at: int | None = None) -> int:
    """How many image files lie directly in ``folder`` (counting stops at ``stop_at``); 0 for
    a folder that cannot be read."""
    n = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    n += 1
                    if stop_at is not None and n >= stop_at:
                        break
    except OSError:
        return 0
    return n


def largest_image_dir(base: Path) -> Path | None:
    """The folder under ``base`` that directly holds the most image files."""
    best: tuple[int, Path] | None = None
    for folder, _, names in os.walk(base):
        n = sum(1 for name in names if name.lower().endswith(IMAGE_SUFFIXES))
        if n and (best is None or n > best[0]):
            best = (n, Path(folder))
    return best[1] if best else None


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or inside it (links resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
