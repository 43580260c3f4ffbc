"""Fetching datasets (`faceattr data fetch NAME`): CelebA here, WFLW in :mod:`.wflw`.

:func:`fetch_celeba` fetches CelebA (aligned and cropped) into the official layout, every
file verified. It writes, under ``root``::

    img_align_celeba/                   extracted from img_align_celeba.zip   (required)
    list_attr_celeba.txt                40 attributes, official format        (required)
    list_eval_partition.txt             official train/valid/test partition   (required)
    identity_CelebA.txt                 identities                            (optional)
    list_landmarks_align_celeba.txt     5 landmarks of the aligned images     (optional)
    list_bbox_celeba.txt                face boxes in the in-the-wild images  (optional)
    .faceattr-fetch.json                what was verified (size, mtime, md5) and where from

from the first source that works: the official Google Drive files, a Hugging Face mirror, any
mirror URL serving the official file names, or files downloaded by hand (official names, the
Drive folders ``Anno/ Eval/ Img/``, Kaggle's csv archive, or a zip of any of these).

Every file is checked against the official md5 (or a user's md5sum file). Downloads go to
``<name>.part``, resume with HTTP Range, and only a verified file gets its final name; a file
that fails its checksum is deleted. A second run trusts files whose size and mtime match the
manifest, so it costs no network and no re-hashing. Progress goes to a callback and the outcome
is returned as a :class:`FetchResult`: nothing is printed.

The pieces: :mod:`.release` (the files, ids and md5s; md5sum files), :mod:`.celeba` (the
order of sources and the outcome), :mod:`.remote` (Google Drive and HTTP mirrors),
:mod:`.local` (files already in ``root`` or given with ``--from``), :mod:`.imagedir` (the
image folder), :mod:`.run` (verifying and placing a file), :mod:`.manifest` and
:mod:`.annotations` (scanning and converting the annotation files). The synthetic set is
written by :mod:`faceattr.data.synthetic`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The datasets `faceattr data fetch NAME` can fetch (synthetic: written, not downloaded).
FETCHABLE: tuple[str, ...] = ("celeba", "wflw", "synthetic")
# Where CelebA can come from (`--source`), in the order they are tried.
FETCH_SOURCES: tuple[str, ...] = ("drive", "hf", "mirror", "from")

if TYPE_CHECKING:
    from faceattr.data.fetch.celeba import FetchResult, fetch_celeba
    from faceattr.data.fetch.wflw import WflwFetchResult, fetch_wflw

# The library API, imported on first use: importing this package stays light (the CLI reads
# the two lists above at start-up; the fetchers bring the network and archive modules).
_PUBLIC = {
    "fetch_celeba": "celeba",
    "FetchResult": "celeba",
    "fetch_wflw": "wflw",
    "WflwFetchResult": "wflw",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FETCHABLE",
    "FETCH_SOURCES",
    "FetchResult",
    "WflwFetchResult",
    "fetch_celeba",
    "fetch_wflw",
]
