"""``root/.faceattr-fetch.json``: what a CelebA fetch verified, so a second run costs nothing.

It records each file placed under ``root`` (size, mtime, md5, where it came from), the image
folder (its image count, the md5 of the archive it came from), per optional file the sources
that lacked it, and the md5s a ``--checksums`` file gave (they hold for later runs). A file
whose size and mtime still match is trusted without hashing it again. The manifest is saved
after every change, so an interrupted run keeps its work.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from faceattr.data.download import disk_error

MANIFEST_NAME = ".faceattr-fetch.json"
MANIFEST_VERSION = 1


class Manifest:
    """The manifest of ``root``, loaded (an unreadable or older one counts as empty)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST_NAME
        self.data = self._load()

    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "files": {},
            "images": None,
            "skipped": {},
        }
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return empty
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return empty
        for key, value in empty.items():
            data.setdefault(key, value)
        return data

    def save(self) -> None:
        tmp = self.path.with_name(MANIFEST_NAME + ".tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise disk_error(self.path, exc) from None

    # ---- files

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Official name -> its entry (``size``, ``mtime_ns``, ``md5``, ``source``, ...)."""
        return self.data["files"]

    def unchanged(self, name: str) -> dict[str, Any] | None:
        """The entry of ``root/name`` when the file is there with its recorded size and mtime."""
        entry = self.files.get(name)
        path = self.root / name
        if entry is None or not path.is_file():
            return None
        st = path.stat()
        if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return None
        return entry

    def record(self, name: str, md5: str, origin: str, *, unverified: bool = False) -> None:
        """Record ``root/name`` as it is now on disk, with its md5 and origin."""
        st = (self.root / name).stat()
        self.files[name] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "md5": md5,
            "source": origin,
            "unverified": unverified,  # accepted without a checksum to compare with
        }
        self.data["skipped"].pop(name, None)
        self.save()

    def forget(self, name: str) -> None:
        self.files.pop(name, None)
        self.save()

    # ---- the --checksums a run was given (official file names only)

    @property
    def checksums(self) -> dict[str, str]:
        return dict(self.data.get("checksums") or {})

    def set_checksums(self, md5s: dict[str, str]) -> None:
        if self.data.get("checksums") != md5s:
            self.data["checksums"] = dict(md5s)
            self.save()

    # ---- optional files a source lacked

    def skipped_at(self, name: str) -> list[str]:
        """The source locations that lacked the optional file ``name``."""
        return self.data["skipped"].get(name, [])

    def skip(self, name: str, location: str) -> None:
        places = self.data["skipped"].setdefault(name, [])
        if location not in places:
            places.append(location)
        self.save()

    # ---- the image folder

    @property
    def images(self) -> dict[str, Any]:
        """``count``, ``archive_md5`` (None for a folder taken as it was) and ``source`` of the
        image folder; empty when there is none yet."""
        return self.data.get("images") or {}

    def set_images(self, count: int, archive_md5: str | None, source: str) -> None:
        self.data["images"] = {"count": count, "archive_md5": archive_md5, "source": source}
        self.save()
