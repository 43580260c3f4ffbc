"""One CelebA fetch under way: the folder being filled, what each file must be, how one lands.

A :class:`FetchRun` knows the md5 every file must have (the official one, or the user's from
``--checksums``), which files under ``root`` are verified already (through the
:class:`~faceattr.data.fetch.manifest.Manifest`), and how a downloaded or copied file is
verified and moved into place. The sources (:mod:`.remote`, :mod:`.local`) and the image
folder (:mod:`.imagedir`) work through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.archives import count_images
from faceattr.data.download import disk_error
from faceattr.data.fetch.annotations import scan_attr_file, scan_partition_file
from faceattr.data.fetch.manifest import Manifest
from faceattr.data.fetch.release import (
    ATTR_FILE,
    CELEBA_FILES,
    IMAGE_DIR,
    IMAGE_ZIP,
    OFFICIAL_COUNTS,
    OFFICIAL_MD5,
    PARTITION_FILE,
    REQUIRED_FILES,
)
from faceattr.errors import DataError, DownloadError
from faceattr.progress import Progress


class ChecksumError(DownloadError):
    """A file's md5 differs from the expected one (the file has been deleted or set aside)."""

    def __init__(self, name: str, expected: str, actual: str, origin: str, fate: str) -> None:
        super().__init__(
            f"{name} from {origin} failed verification: expected md5 {expected}, "
            f"got {actual}. {fate}",
            "The copy is damaged or is not the official file. Download it again or use another "
            "source; for a deliberate subset or another release, pass `checksums=FILE` with "
            "its md5 (md5sum format).",
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class SourceError(Exception):
    """One source cannot provide the required files; the next one is tried."""


class FetchRun:
    """State of one :func:`~faceattr.data.fetch.fetch_celeba` call.

    ``user_md5`` is the parsed ``--checksums`` file (names as :func:`read_checksums` gives
    them); ``fetched`` (file -> where it came from) and ``warnings`` are the run's outcome.
    """

    def __init__(
        self,
        root: Path,
        user_md5: dict[str, str],
        progress: Progress,
        timeout: float,
        keep_archive: bool,
    ) -> None:
        self.root = root
        self.user_md5 = user_md5
        self.progress = progress
        self.timeout = timeout
        self.keep_archive = keep_archive
        self.manifest = Manifest(root)
        # --checksums given once hold for later runs on the same root (a subset or a mirror
        # stays verified without passing the file again); given again, they win.
        given = {k: v for k, v in user_md5.items() if k in OFFICIAL_MD5}
        if given:
            self.manifest.set_checksums(given)
        elif self.manifest.checksums:
            progress.log(f"Verifying against the checksums an earlier run was given "
                         f"(`checksums=FILE`), recorded in {self.manifest.path.name}.")  # fmt: skip
        self.expected = {**OFFICIAL_MD5, **(given or self.manifest.checksums)}
        self.fetched: dict[str, str] = {}
        self.warnings: list[str] = []

    # ---- what is there

    def file_ok(self, name: str) -> bool:
        """True when ``root/name`` is verified: recorded with this size, mtime and md5."""
        entry = self.manifest.unchanged(name)
        if entry is None:
            return False
        if entry.get("unverified"):  # a converted file: only a checksum given now can refute it
            return name not in self.user_md5 or entry.get("md5") == self.user_md5[name]
        return entry.get("md5") == self.expected[name]

    def images_ok(self) -> bool:
        """True when the image folder holds the images the manifest counted, from an archive
        with the expected md5 (or from a folder taken as it was)."""
        entry = self.manifest.images
        folder = self.root / IMAGE_DIR
        if not entry or not folder.is_dir():
            return False
        if entry.get("archive_md5") not in (None, self.expected[IMAGE_ZIP]):
            return False
        return count_images(folder) == entry.get("count")

    def _have(self, name: str) -> bool:
        return self.images_ok() if name == IMAGE_ZIP else self.file_ok(name)

    def missing_required(self) -> list[str]:
        return [name for name in REQUIRED_FILES if not self._have(name)]

    def needed(self, locations: list[str]) -> list[str]:
        """Files still to fetch, in download order. An optional file that one of
        ``locations`` already lacked is not asked for again from there."""
        out = []
        for f in CELEBA_FILES:
            if self._have(f.name):
                continue
            skipped_at = self.manifest.skipped_at(f.name)
            if not f.required and any(loc in skipped_at for loc in locations):
                continue
            out.append(f.name)
        return out

    def listed_images(self) -> dict[str, str]:
        """Image name -> md5 for the images that the user's checksums file lists."""
        prefix = IMAGE_DIR + "/"
        return {k[len(prefix) :]: v for k, v in self.user_md5.items() if k.startswith(prefix)}

    # ---- putting files in place

    def record(self, name: str, md5: str, origin: str, *, unverified: bool = False) -> None:
        self.manifest.record(name, md5, origin, unverified=unverified)

    def forget_file(self, name: str, *, delete: bool) -> None:
        if delete:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        self.manifest.forget(name)

    def install(self, name: str, part: Path, md5: str, origin: str) -> None:
        """Verify ``part`` and move it to ``root/name``; a mismatch deletes it."""
        expected = self.expected[name]
        if md5 != expected and not self.normalise_line_ends(name, part):
            with contextlib.suppress(OSError):
                part.unlink()
            raise ChecksumError(name, expected, md5, origin, "The file was deleted.")
        try:
            os.replace(part, self.root / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise disk_error(self.root / name, exc) from None
        self.record(name, expected, origin)

    def normalise_line_ends(self, name: str, path: Path) -> bool:
        """Accept an annotation file that only differs from the expected one by LF line ends
        (some re-uploads strip the CRs): rewrite it with CRLF if that gives the right md5."""
        if not name.endswith(".txt") or path.stat().st_size > (256 << 20):
            return False
        data = path.read_bytes()
        if b"\r\n" in data:
            return False
        converted = data.replace(b"\n", b"\r\n")
        if hashlib.md5(converted).hexdigest() != self.expected[name]:
            return False
        tmp = path.with_name(path.name + ".crlf")
        try:
            tmp.write_bytes(converted)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise disk_error(path, exc) from None
        self.warnings.append(f"{name}: converted LF line endings to CRLF (the official bytes).")
        return True

    def skip_optional(self, name: str, location: str, why: str) -> None:
        """Note that ``location`` lacks the optional file ``name`` (not asked there again)."""
        self.warnings.append(f"{name} (optional) was skipped: {why}.")
        self.progress.log(f"{name} (optional) skipped: {why}")
        self.manifest.skip(name, location)

    def check_annotation(self, name: str, *, strict: bool) -> None:
        """Refuse an attribute/partition file that is not CelebA's (or, when ``strict``, not
        the complete release); the refused file is removed."""
        problem = None
        try:
            if name == ATTR_FILE:
                n, names = scan_attr_file(self.root / name)
                if names != list(CELEBA_ATTRIBUTES):
                    problem = "its header does not list the 40 CelebA attributes in order"
                elif strict and n != OFFICIAL_COUNTS["images"]:
                    problem = (
                        f"it lists {n:,} images, not the release's {OFFICIAL_COUNTS['images']:,}"
                    )
            else:
                counts = scan_partition_file(self.root / name)
                official = {k: OFFICIAL_COUNTS[k] for k in ("train", "valid", "test")}
                if strict and counts != official:
                    problem = (
                        f"its split counts {counts} are not the official partition's {official}"
                    )
        except DataError as exc:
            problem = exc.message
        if problem:
            self.forget_file(name, delete=True)
            raise SourceError(f"{name}: {problem}; the file was removed")

    # ---- summary

    def finish_checks(self) -> None:
        """Warn about counts that do not add up (a subset may be deliberate)."""
        n_attr, _ = scan_attr_file(self.root / ATTR_FILE)
        splits = scan_partition_file(self.root / PARTITION_FILE)
        n_part = sum(splits.values())
        n_images = self.manifest.images.get("count", 0)
        if n_attr != n_part:
            self.warnings.append(
                f"{ATTR_FILE} lists {n_attr:,} images but {PARTITION_FILE} lists {n_part:,}."
            )
        if n_images != n_part:
            self.warnings.append(
                f"{IMAGE_DIR}/ holds {n_images:,} images but {PARTITION_FILE} lists {n_part:,}."
            )

    def verified(self) -> dict[str, str]:
        """Each file now verified under ``root`` -> its md5 (``img_align_celeba.zip`` stands
        for the extracted images when they came from the archive)."""
        out = {
            name: entry["md5"]
            for name, entry in self.manifest.files.items()
            if name != IMAGE_ZIP and self.file_ok(name)
        }
        archive_md5 = self.manifest.images.get("archive_md5")
        if archive_md5:
            out[IMAGE_ZIP] = archive_md5
        return out
