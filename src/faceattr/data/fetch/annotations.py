"""CelebA's annotation files: counting what an official file holds, converting Kaggle's csv.

The scans check a file is CelebA's (the official header, ``NNNNNN.jpg 0|1|2`` lines) without
reading it into a table; the conversion writes Kaggle's csv as the official bytes.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.download import disk_error
from faceattr.data.fetch.release import (
    ATTR_FILE,
    BBOX_FILE,
    KAGGLE_CSV,
    LANDMARKS_FILE,
    PARTITION_FILE,
)
from faceattr.errors import DataError

_SPLIT_CODES = {"0": "train", "1": "valid", "2": "test"}


def scan_attr_file(path: Path) -> tuple[int, list[str]]:
    """``(number of image lines, attribute names)`` of an official-format attribute file."""
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("ascii", "replace").strip()
            names = f.readline().decode("ascii", "replace").split()
            rows = sum(1 for line in f if line.strip())
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    if not first.isdigit():
        raise DataError(
            f"{path.name} does not start with the image count line (found {first[:40]!r})."
        )
    if int(first) != rows:
        raise DataError(f"{path.name} announces {int(first):,} images but holds {rows:,} lines.")
    return rows, names


def scan_partition_file(path: Path) -> dict[str, int]:
    """Images per split of an official-format partition file (``NNNNNN.jpg 0|1|2``)."""
    counts = {"train": 0, "valid": 0, "test": 0}
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                fields = raw.split()
                if not fields:
                    continue
                split = _SPLIT_CODES.get(fields[-1].decode("ascii", "replace"))
                if len(fields) != 2 or split is None:
                    raise DataError(
                        f"{path.name}, line {lineno}: expected 'NNNNNN.jpg 0|1|2', found "
                        f"{raw.decode('utf-8', 'replace').strip()[:60]!r}."
                    )
                counts[split] += 1
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    return counts


def convert_kaggle_csv(csv_path: Path, txt_path: Path) -> None:
    """Write Kaggle's ``list_*.csv`` as the official whitespace-separated ``.txt`` (CRLF).

    The kind is taken from the csv's file name. Attribute values become ``-1``/`` 1`` (a ``0``
    is read as ``-1``); the attribute and partition files reproduce the official bytes.
    Raises :class:`~faceattr.errors.DataError` for a malformed csv.
    """
    kind = csv_path.name
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {csv_path}: {exc}.") from None
    rows = [r for r in rows if r]
    if not rows:
        raise DataError(f"{csv_path} is empty.")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{csv_path}, line {i}: {len(row)} columns where the header has {len(header)}."
            )
    lines: list[str] = []
    try:
        if kind == KAGGLE_CSV[ATTR_FILE]:
            if header[1:] != list(CELEBA_ATTRIBUTES):
                raise DataError(
                    f"{csv_path} does not have the 40 CelebA attribute columns in official order "
                    f"(found {', '.join(header[1:6])}, ...)."
                )
            lines.append(str(len(body)))
            lines.append(" ".join(CELEBA_ATTRIBUTES) + " ")
            for row in body:
                # Official spacing: "000007.jpg 1 -1  1 ...": the first value unpadded, the
                # others right-aligned in two characters.
                values = [1 if int(v) > 0 else -1 for v in row[1:]]
                lines.append(
                    f"{row[0].strip()} {values[0]}" + "".join(f" {v:2d}" for v in values[1:])
                )
        elif kind == KAGGLE_CSV[PARTITION_FILE]:
            for row in body:
                lines.append(f"{row[0].strip()} {int(row[1])}")
        elif kind in (KAGGLE_CSV[LANDMARKS_FILE], KAGGLE_CSV[BBOX_FILE]):
            lines.append(str(len(body)))
            # The official landmark header omits the image column; the box header names it.
            # Column widths as in the official files: "000001.jpg    95  71 226 313" and
            # "000001.jpg 69  109  106  113   77  142   73  152  108  154".
            landmarks = kind == KAGGLE_CSV[LANDMARKS_FILE]
            lines.append(" ".join(header[1:] if landmarks else header) + " ")
            first, rest = (3, 5) if landmarks else (6, 4)
            for row in body:
                values = [int(v) for v in row[1:]]
                text = f"{values[0]:{first}d}" + "".join(f"{v:{rest}d}" for v in values[1:])
                lines.append(row[0].strip() + text)
        else:
            raise DataError(f"{csv_path.name} is not one of Kaggle's CelebA csv files.")
    except ValueError as exc:
        raise DataError(f"{csv_path} holds a value that is not an integer ({exc}).") from None
    try:
        with open(txt_path, "w", encoding="ascii", newline="") as out:
            out.write("".join(line + "\r\n" for line in lines))
    except OSError as exc:
        with contextlib.suppress(OSError):
            txt_path.unlink()
        raise disk_error(txt_path, exc) from None
