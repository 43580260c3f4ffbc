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

from faceattr.data.archives import ArchiveError
from faceattr.data.fetch.annotations import convert_kaggle_csv
from faceattr.data.fetch.celeba import FETCH_SOURCES, FetchResult, SourceAttempt, fetch_celeba
from faceattr.data.fetch.manifest import MANIFEST_NAME, MANIFEST_VERSION
from faceattr.data.fetch.release import (
    ATTR_FILE,
    BBOX_FILE,
    CELEBA_FILES,
    DRIVE_FOLDER_URL,
    DRIVE_URL,
    DRIVE_URL_ENV,
    FILES_BY_NAME,
    HF_URL,
    HF_URL_ENV,
    IDENTITY_FILE,
    IMAGE_DIR,
    IMAGE_ZIP,
    KAGGLE_CSV,
    KAGGLE_DATASET,
    LANDMARKS_FILE,
    OFFICIAL_COUNTS,
    OFFICIAL_MD5,
    OPTIONAL_FILES,
    PARTITION_FILE,
    REQUIRED_FILES,
    CelebaFile,
    manual_download_hint,
    read_checksums,
)
from faceattr.data.fetch.remote import MAX_DRIVE_HOPS
from faceattr.data.fetch.run import ChecksumError

# The datasets `faceattr data fetch NAME` can fetch (synthetic: written, not downloaded).
FETCHABLE: tuple[str, ...] = ("celeba", "wflw", "synthetic")

__all__ = [
    "ATTR_FILE",
    "BBOX_FILE",
    "CELEBA_FILES",
    "DRIVE_FOLDER_URL",
    "DRIVE_URL",
    "DRIVE_URL_ENV",
    "FETCHABLE",
    "FETCH_SOURCES",
    "FILES_BY_NAME",
    "HF_URL",
    "HF_URL_ENV",
    "IDENTITY_FILE",
    "IMAGE_DIR",
    "IMAGE_ZIP",
    "KAGGLE_CSV",
    "KAGGLE_DATASET",
    "LANDMARKS_FILE",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MAX_DRIVE_HOPS",
    "OFFICIAL_COUNTS",
    "OFFICIAL_MD5",
    "OPTIONAL_FILES",
    "PARTITION_FILE",
    "REQUIRED_FILES",
    "ArchiveError",
    "CelebaFile",
    "ChecksumError",
    "FetchResult",
    "SourceAttempt",
    "convert_kaggle_csv",
    "fetch_celeba",
    "manual_download_hint",
    "read_checksums",
]
