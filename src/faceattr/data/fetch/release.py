"""What the CelebA release is: its files, their Google Drive ids and md5s, where it lives.

Also the two things a user may hand over about it: an md5sum file (:func:`read_checksums`)
and, when every source fails, the way to download it by hand (:func:`manual_download_hint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from faceattr.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Where the files live. Base URLs are read at call time: environment variable first, then the
# module constant, so tests (and users behind a proxy or with their own copy) can redirect them.

DRIVE_URL = "https://drive.google.com/uc"  # official files: "<DRIVE_URL>?id=<id>&export=download"
DRIVE_URL_ENV = "FACEATTR_DRIVE_URL"
# No public Hugging Face repository holding the official files (img_align_celeba.zip plus the
# official .txt annotations) could be confirmed, so this source is generic: set it to a base
# URL serving the official names, e.g. "https://huggingface.co/datasets/OWNER/REPO/resolve/main".
# See docs/data-fetch.md.
HF_URL = ""
HF_URL_ENV = "FACEATTR_HF_URL"
DRIVE_FOLDER_URL = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWEZsZE9oNnFzTm8"
KAGGLE_DATASET = "jessicali9530/celeba-dataset"

IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
BBOX_FILE = "list_bbox_celeba.txt"

# Counts of the complete release (the official partition: 0 train, 1 valid, 2 test).
OFFICIAL_COUNTS: dict[str, int] = {
    "images": 202_599,
    "train": 162_770,
    "valid": 19_867,
    "test": 19_962,
}


@dataclass(frozen=True)
class CelebaFile:
    """One file of the release: its Google Drive id and md5 (as listed by torchvision)."""

    name: str
    drive_id: str
    md5: str
    required: bool


# Small required files first, so a source that lacks them fails before the 1.4 GB archive.
CELEBA_FILES: tuple[CelebaFile, ...] = (
    #          name            Google Drive file id                 md5
    CelebaFile(PARTITION_FILE, "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
               "d32c9cbf5e040fd4025c592c306e6668", required=True),
    CelebaFile(ATTR_FILE,      "0B7EVK8r0v71pblRyaVFSWGxPY0U",
               "75e246fa4810816ffd6ee81facbd244c", required=True),
    CelebaFile(IDENTITY_FILE,  "1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS",
               "32bd1bd63d3c78cd57e08160ec5ed1e2", required=False),
    CelebaFile(LANDMARKS_FILE, "0B7EVK8r0v71pd0FJY3Blby1HUTQ",
               "cc24ecafdb5b50baae59b03474781f8c", required=False),
    CelebaFile(BBOX_FILE,      "0B7EVK8r0v71pbThiMVRxWXZ4dU0",
               "00566efa6fedff7a56946cd1c10f1c16", required=False),
    CelebaFile(IMAGE_ZIP,      "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
               "00d2c5bc6d35e252742224ab0c1e8fcb", required=True),
)  # fmt: skip
FILES_BY_NAME: dict[str, CelebaFile] = {f.name: f for f in CELEBA_FILES}
OFFICIAL_MD5: dict[str, str] = {f.name: f.md5 for f in CELEBA_FILES}
REQUIRED_FILES: tuple[str, ...] = tuple(f.name for f in CELEBA_FILES if f.required)
OPTIONAL_FILES: tuple[str, ...] = tuple(f.name for f in CELEBA_FILES if not f.required)
# Kaggle's archive (jessicali9530/celeba-dataset) has these csv versions of the annotations.
KAGGLE_CSV: dict[str, str] = {
    ATTR_FILE: "list_attr_celeba.csv",
    PARTITION_FILE: "list_eval_partition.csv",
    LANDMARKS_FILE: "list_landmarks_align_celeba.csv",
    BBOX_FILE: "list_bbox_celeba.csv",
}


def manual_download_hint() -> str:
    """How to download CelebA by hand and hand it to ``faceattr data fetch celeba --from``."""
    required = f"Img/{IMAGE_ZIP}, Anno/{ATTR_FILE}, Eval/{PARTITION_FILE}"
    optional = f"Anno/{IDENTITY_FILE}, Anno/{LANDMARKS_FILE}, Anno/{BBOX_FILE}"
    return (
        "Download the files by hand, then run "
        "`faceattr data fetch celeba --root DIR --from FOLDER_OR_ZIP`:\n"
        f"  - from the official Google Drive folder ({DRIVE_FOLDER_URL}, linked from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): "
        f"{required} (required) and {optional} (optional);\n"
        f"  - or Kaggle's copy (`kaggle datasets download -d {KAGGLE_DATASET}`): its zip holds "
        f"list_attr_celeba.csv, list_eval_partition.csv and {IMAGE_DIR}/{IMAGE_DIR}/; the zip "
        "or the extracted folder is the FOLDER_OR_ZIP to pass.\n"
        "Or serve the official file names from any web server and pass `mirror=URL` "
        "(with `checksums=FILE` for a copy that is not the official one)."
    )


# ---------------------------------------------------------------------------------------------
# md5sum files


def read_checksums(path: str | Path) -> dict[str, str]:
    """Parse an md5sum file (``<md5>  <name>``, ``<md5> *<name>`` or BSD ``MD5 (name) = md5``).

    Returns name -> lower-case md5. Names of the release's files are reduced to their base
    name (``Anno/list_attr_celeba.txt`` -> ``list_attr_celeba.txt``); image entries become
    ``img_align_celeba/<file>``. Raises :class:`~faceattr.errors.UsageError` on a bad line.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(
            f"Checksums file {path} does not exist.",
            "Pass an md5sum-format file as `checksums=FILE`.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read checksums file {path}: {exc}.") from None
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](.+)", line)
        if match:
            md5, name = match.group(1), match.group(2)
        else:
            match = re.fullmatch(r"MD5 \((.+)\) = ([0-9a-fA-F]{32})", line)
            if not match:
                raise UsageError(
                    f"{path}, line {lineno}: not an md5sum line: {raw!r}.",
                    "Each line must be '<32 hex digits>  <file name>', as written by "
                    "`md5sum FILE...`.",
                )
            name, md5 = match.group(1), match.group(2)
        out[_checksum_key(name.strip())] = md5.lower()
    if not out:
        raise UsageError(
            f"Checksums file {path} lists no files.", "Write it with `md5sum FILE...`."
        )
    return out


def _checksum_key(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return name
    if parts[-1] in FILES_BY_NAME or parts[-1] in KAGGLE_CSV.values():
        return parts[-1]
    if IMAGE_DIR in parts[:-1]:
        return f"{IMAGE_DIR}/{parts[-1]}"
    return "/".join(parts)
