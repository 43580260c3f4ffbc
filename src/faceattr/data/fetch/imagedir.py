"""The image folder ``root/img_align_celeba``: from the archive, or from an extracted folder.

Either way the new folder is assembled beside the old one and swapped in once complete, and
the images that a ``--checksums`` file lists are verified before they are placed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from faceattr.data.archives import (
    count_images,
    extract_zip,
    is_within,
    largest_image_dir,
    link_or_copy_tree,
)
from faceattr.data.download import disk_error, md5_file
from faceattr.data.fetch.release import IMAGE_DIR, IMAGE_ZIP, OFFICIAL_COUNTS
from faceattr.data.fetch.run import ChecksumError, FetchRun, SourceError


def extract_images(run: FetchRun, archive: Path, *, origin: str, strict: bool) -> None:
    """Extract the image archive into ``root/img_align_celeba`` (via a temporary folder).

    ``strict`` demands the complete release's image count.
    """
    temp = run.root / f".{IMAGE_DIR}.extract-{os.getpid()}"
    try:
        extract_zip(archive, temp, run.progress)
        source_dir = largest_image_dir(temp)
        if source_dir is None:
            raise SourceError(f"{archive.name} holds no images")
        if strict and count_images(source_dir) != OFFICIAL_COUNTS["images"]:
            raise SourceError(
                f"{archive.name} holds {count_images(source_dir):,} images, not the "
                f"release's {OFFICIAL_COUNTS['images']:,}; nothing was extracted"
            )
        count = _place(run, source_dir, move=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    run.manifest.set_images(count, run.expected[IMAGE_ZIP], origin)


def take_image_zip(run: FetchRun, archive: Path) -> None:
    """Verify a user's image archive, then extract it (the archive itself is left alone)."""
    md5 = md5_file(archive, run.progress, f"verify {archive.name}")
    if md5 != run.expected[IMAGE_ZIP]:
        raise ChecksumError(
            IMAGE_ZIP, run.expected[IMAGE_ZIP], md5, str(archive),
            "Nothing was extracted; your file was left untouched.",
        )  # fmt: skip
    extract_images(run, archive, origin=str(archive), strict=False)


def take_image_dir(run: FetchRun, folder: Path, owned: Path | None) -> None:
    """Make a user's extracted image folder the image folder. It is moved when it is ours
    (``owned``: a temporary extraction) or already under root, else linked or copied."""
    move = owned is not None or is_within(folder, run.root)
    count = _place(run, folder, move=move)
    listed = " (those listed in the checksums file were)." if run.listed_images() else "."
    run.warnings.append(
        f"{IMAGE_DIR}/ was taken from the extracted folder {folder} ({count:,} images): "
        f"individual images cannot be checked against the md5 of {IMAGE_ZIP}" + listed
    )
    run.manifest.set_images(count, None, str(folder))


def _place(run: FetchRun, source_dir: Path, *, move: bool) -> int:
    """Make ``source_dir`` the image folder ``root/img_align_celeba``; the number of images.

    Images listed in the checksums file are checked first. ``move`` renames the folder (our
    own temporary files, or files already under root); otherwise each image is hard-linked,
    or copied where links are impossible. The old folder is replaced once the new one is
    complete.
    """
    final = run.root / IMAGE_DIR
    pid = os.getpid()
    in_place = source_dir.resolve() == final.resolve()
    _verify_listed_images(run, source_dir, quarantine=in_place)
    if in_place:
        return count_images(final)
    staging = run.root / f".{IMAGE_DIR}.new-{pid}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if move:
            os.rename(source_dir, staging)
        else:
            link_or_copy_tree(source_dir, staging, run.progress, recursive=False)
        if final.exists() or final.is_symlink():
            old = run.root / f".{IMAGE_DIR}.old-{pid}"
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    except BaseException as exc:
        if move and staging.exists():  # put a moved folder back where it came from
            with contextlib.suppress(OSError):
                os.rename(staging, source_dir)
        shutil.rmtree(staging, ignore_errors=True)  # a half-made copy
        if isinstance(exc, OSError):
            raise disk_error(final, exc) from None
        raise
    return count_images(final)


def _verify_listed_images(run: FetchRun, folder: Path, *, quarantine: bool) -> None:
    """Check the images that the user's checksums file lists, before they are placed.

    A mismatch fails the source; with ``quarantine`` (images already in root) each bad
    image is renamed to ``<name>.corrupt`` so that no reader takes it for data.
    """
    bad, absent = [], []
    for name, expected in sorted(run.listed_images().items()):
        path = folder / name
        if not path.is_file():
            absent.append(name)
            continue
        actual = hashlib.md5(path.read_bytes()).hexdigest()
        if actual != expected:
            if quarantine:
                os.replace(path, path.with_name(path.name + ".corrupt"))
            bad.append(f"{name} (expected md5 {expected}, got {actual})")
    if absent:
        run.warnings.append(
            f"{len(absent)} image(s) listed in the checksums file are absent: "
            + ", ".join(absent[:5])
            + (" ..." if len(absent) > 5 else "")
        )
    if bad:
        fate = "renamed to *.corrupt" if quarantine else "not used"
        raise SourceError(
            f"{len(bad)} image(s) failed verification ({fate}): " + "; ".join(bad[:5])
        )
