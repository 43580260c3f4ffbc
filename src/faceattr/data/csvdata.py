"""Custom datasets: a folder of images plus a labels CSV (``--dataset csv``).

The CSV has a header line and one row per image::

    image,split,Smiling,Wearing_Hat,Has_Scar
    people/ann.jpg,train,1,0,
    people/bob.jpg,test,0,1,1

* ``image`` (required; ``image_id``, ``filename``, ``file`` and ``path`` are accepted too): the
  image's path relative to the image folder (``--root``), sub-folders allowed;
* ``split`` (optional): ``train``, ``valid`` (``val``, ``validation``) or ``test``. Without it
  every image is a training image and ``train`` carves a validation split out of them;
* ``identity`` (optional): who is in the picture (any text or number), so that the validation
  carve keeps each person on one side;
* every other column is an attribute, with ``1`` for yes and ``0`` (or ``-1``) for no. A blank
  cell (or ``NA``/``NaN``) is an unknown label: it is left out of the loss and the metrics.

Comma, semicolon and tab separated files are recognised from the header line.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.data.images import note_missing_images
from faceattr.data.splits import resolve_split_name
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError

IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_id", "filename", "file", "path")
SPLIT_COLUMN = "split"
IDENTITY_COLUMN = "identity"
DEFAULT_LABELS_NAME = "labels.csv"  # looked for in --root when --labels is not given

# Cell text (lower-cased, stripped) -> label value; None marks an unknown label.
_VALUES: dict[str, float | None] = {
    "1": 1.0, "1.0": 1.0, "+1": 1.0, "true": 1.0, "yes": 1.0,
    "0": 0.0, "0.0": 0.0, "false": 0.0, "no": 0.0,
    "-1": -1.0, "-1.0": -1.0,
    "": None, "na": None, "nan": None, "n/a": None, "?": None,
}  # fmt: skip

_FORMAT_HINT = (
    "The labels CSV needs a header line naming an `image` column (path relative to the dataset "
    "folder, `root=DIR`), optionally `split` (train/valid/test) and `identity`, then one column "
    "per attribute with 1/0 (or 1/-1); leave a cell blank when the label is unknown."
)


def resolve_labels_path(root: str | Path, labels: str | Path | None) -> Path:
    """The labels CSV to read: ``labels`` as given (or relative to ``root`` when it is not
    found as given), else ``root/labels.csv``. Raises when there is none."""
    root = Path(root).expanduser()
    if labels is None:
        default = root / DEFAULT_LABELS_NAME
        if default.is_file():
            return default
        raise UsageError(
            "The csv dataset needs a labels file: pass `labels=FILE.csv`.",
            f"(When none is given, {default} is used if it exists.) " + _FORMAT_HINT,
        )
    path = Path(labels).expanduser()
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    if not path.exists():
        raise DataError(
            f"Labels file {path} does not exist.",
            "Check the path given as `labels=FILE.csv` (a relative path is also looked for under "
            "the dataset folder).",
        )
    if path.is_dir():
        raise DataError(f"Labels file {path} is a folder; pass the CSV file itself.")
    return path


def _sniff_delimiter(header: str) -> str:
    """``,`` unless the header line only splits on ``;`` or a tab (spreadsheet exports)."""
    if "," in header:
        return ","
    for sep in (";", "\t"):
        if sep in header:
            return sep
    return ","


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """``(header, rows, line numbers)``: cells stripped, blank lines skipped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
            fh.seek(0)
            reader = csv.reader(fh, delimiter=_sniff_delimiter(first))
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue
                cells = [cell.strip() for cell in record]
                if header is None:
                    header = cells
                else:
                    rows.append(cells)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Cannot read labels file {path}: it is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}).",
            "Save the file as UTF-8 CSV (e.g. 'CSV UTF-8' in a spreadsheet program).",
        ) from None
    except csv.Error as exc:
        raise DataError(f"Cannot parse labels file {path}: {exc}.", _FORMAT_HINT) from None
    except OSError as exc:
        raise DataError(f"Cannot read labels file {path}: {exc.strerror or exc}.") from None
    if header is None:
        raise DataError(f"Labels file {path} is empty.", _FORMAT_HINT)
    return header, rows, lines


def _where(path: Path, line: int, column: str | None = None) -> str:
    return f"{path.name} line {line}" + (f", column {column!r}" if column else "")


def _check_header(path: Path, header: list[str]) -> tuple[int, int | None, int | None, list[int]]:
    """Column positions: ``(image, split or None, identity or None, attribute columns)``."""
    lower = [h.lower() for h in header]
    empty = [i + 1 for i, h in enumerate(header) if not h]
    if empty:
        raise DataError(
            f"Labels file {path}: column {empty[0]} of the header (line 1) has no name.",
            "Give every column a name in the header line.",
        )
    dupes = sorted({h for h in header if lower.count(h.lower()) > 1})
    if dupes:
        raise DataError(
            f"Labels file {path}: column names repeat in the header: {', '.join(dupes)}.",
            "Give every column a distinct name.",
        )
    image_col = next((lower.index(n) for n in IMAGE_COLUMNS if n in lower), None)
    if image_col is None:
        raise DataError(
            f"Labels file {path} has no image column (header: {', '.join(header[:8])}"
            + (" ..." if len(header) > 8 else "")
            + ").",
            "Name the column holding the image paths `image`. " + _FORMAT_HINT,
        )
    split_col = lower.index(SPLIT_COLUMN) if SPLIT_COLUMN in lower else None
    identity_col = lower.index(IDENTITY_COLUMN) if IDENTITY_COLUMN in lower else None
    special = {image_col, split_col, identity_col}
    attr_cols = [i for i in range(len(header)) if i not in special]
    if not attr_cols:
        raise DataError(
            f"Labels file {path} has no attribute columns (only {', '.join(header)}).",
            "Add one column per attribute after the image column. " + _FORMAT_HINT,
        )
    # A model file keeps printable names of up to 200 characters (models.info): say so now,
    # not after training.
    odd = [i for i in attr_cols if not header[i].isprintable() or len(header[i]) > 200]
    if odd:
        raise DataError(
            f"Labels file {path}: the name of column {odd[0] + 1} ({header[odd[0]][:60]!r}) is "
            "not an attribute name a model can keep: it holds a line break or another control "
            "character, or is over 200 characters long.",
            "Rename the column in the header line (any printable characters, up to 200).",
        )
    return image_col, split_col, identity_col, attr_cols


def _parse_labels(
    path: Path, header: list[str], rows: list[list[str]], lines: list[int], attr_cols: list[int]
) -> tuple[np.ndarray, list[str]]:
    """``[N, A]`` float32 labels in {0, 1} with NaN for unknown, and notes."""
    cells = np.array([[row[c] for c in attr_cols] for row in rows], dtype=object)
    # Few distinct texts in millions of cells: map each distinct text once.
    codes, texts = pd.factorize(cells.ravel())
    table = np.array([_VALUES.get(str(t).lower(), 0.5) for t in texts], dtype=object)
    bad = np.array([v == 0.5 for v in table], dtype=bool)
    if bad.any():
        flat = int(np.flatnonzero(bad[codes])[0])
        r, a = divmod(flat, len(attr_cols))
        raise DataError(
            f"Bad label in {_where(path, lines[r], header[attr_cols[a]])}: {cells[r, a]!r}.",
            "Labels are 1 (yes), 0 or -1 (no), or blank (unknown).",
        )
    values = np.array([np.nan if v is None else v for v in table], dtype=np.float32)
    raw = values[codes].reshape(cells.shape) if codes.size else np.zeros(cells.shape, np.float32)
    notes: list[str] = []
    zeros, negs = raw == 0, raw == -1
    if zeros.any() and negs.any():
        # 1/0/-1 together is ambiguous: is 0 "no" or (as in CelebA's files) "unknown"?
        r0, a0 = (int(v[0]) for v in np.nonzero(zeros))
        r1, a1 = (int(v[0]) for v in np.nonzero(negs))
        raise DataError(
            f"Labels file {path} mixes 0 and -1 as labels (0 at "
            f"{_where(path, lines[r0], header[attr_cols[a0]])}; -1 at "
            f"{_where(path, lines[r1], header[attr_cols[a1]])}).",
            "Use 1/0 or 1/-1 throughout, and a blank cell for an unknown label.",
        )
    labels = np.where(np.isnan(raw), np.nan, (raw == 1).astype(np.float32)).astype(np.float32)
    unknown = int(np.isnan(labels).sum())
    if unknown:
        notes.append(
            f"{path.name}: {unknown:,} of {labels.size:,} labels are blank (unknown); they are "
            "left out of the loss and the metrics."
        )
    for a, col in enumerate(attr_cols):
        known = labels[:, a][~np.isnan(labels[:, a])]
        if known.size and (known.min() == known.max()):
            what = "positive" if known[0] == 1 else "negative"
            notes.append(
                f"{path.name}: every known {header[col]} label is {what}; a model cannot "
                "learn that attribute from this data."
            )
    return labels, notes


def _parse_splits(
    path: Path, rows: list[list[str]], lines: list[int], col: int | None, name: str
) -> np.ndarray:
    if col is None:
        return np.full(len(rows), "train", dtype=object)
    out = np.empty(len(rows), dtype=object)
    for r, (cells, line) in enumerate(zip(rows, lines, strict=True)):
        text = cells[col]
        found = None
        if text:
            try:
                found = resolve_split_name(text)
            except UsageError:
                found = None
        if found is None or found == "all":
            raise DataError(
                f"Bad split in {_where(path, line, name)}: {text!r}.",
                f"Use one of {', '.join(SPLITS)} (or val/validation), or drop the split column "
                "to train on every image (a validation split is then carved automatically).",
            )
        out[r] = found
    return out


def _parse_identities(rows: list[list[str]], col: int | None) -> pd.Series:
    """Identities as ``Int64`` codes: any text works, a blank cell is unknown."""
    if col is None:
        return pd.Series(pd.array([pd.NA] * len(rows), dtype="Int64"))
    texts = pd.Series([cells[col] or None for cells in rows], dtype=object)
    # Codes by sorted value (not row order), so the validation carve ignores row order.
    codes, _ = pd.factorize(texts, sort=True)
    ids = pd.array(codes, dtype="Int64")
    ids[codes < 0] = pd.NA
    return pd.Series(ids)


def existing_images(image_dir: str | Path, names: np.ndarray) -> np.ndarray:
    """``[N]`` bool: which of ``names`` (paths relative to ``image_dir``) exist; one folder
    listing per folder rather than one ``stat`` per file."""
    listings: dict[str, set[str] | None] = {}
    found = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        full = os.path.join(image_dir, name)
        folder, base = os.path.split(full)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = None
        entries = listings[folder]
        found[i] = entries is not None and base in entries
    return found


def read_csv_dataset(
    root: str | Path, labels: str | Path | None = None, *, check_images: bool = True
) -> AttributeTable:
    """Read images under ``root`` labelled by the CSV ``labels`` (see the module docstring).

    Rows whose image is missing are dropped with a note (an error when all are missing);
    ``check_images=False`` skips looking at the image folder. Raises
    :class:`~faceattr.errors.DataError` naming the file, line and column of a bad value.
    """
    root = Path(root).expanduser()
    path = resolve_labels_path(root, labels)
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} does not exist." if not root.exists() else f"{root} is a file.",
            "Pass the folder the `image` paths of the labels file are relative to as `root=DIR`.",
        )
    header, rows, lines = _read_rows(path)
    if not rows:
        raise DataError(f"Labels file {path} has a header but no rows.", _FORMAT_HINT)
    for cells, line in zip(rows, lines, strict=True):
        if len(cells) != len(header):
            raise DataError(
                f"Malformed row in {_where(path, line)}: {len(cells)} cells, but the header "
                f"has {len(header)} columns.",
                "Every row needs one cell per header column (an empty cell is fine). Quote "
                "cells that contain the separator.",
            )
    image_col, split_col, identity_col, attr_cols = _check_header(path, header)

    images = np.array([cells[image_col].replace("\\", "/") for cells in rows], dtype=object)
    blank = np.flatnonzero(images == "")
    if blank.size:
        raise DataError(
            f"Empty image path in {_where(path, lines[blank[0]], header[image_col])}.",
            "Every row needs the path of its image.",
        )
    repeated = pd.Index(images).duplicated()
    if repeated.any():
        i = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero(images == images[i])[0])
        raise DataError(
            f"Image {images[i]!r} is listed twice in {path.name} (lines {lines[first]} and "
            f"{lines[i]}).",
            "List each image once.",
        )
    splits = _parse_splits(path, rows, lines, split_col, header[split_col or 0])
    label_values, notes = _parse_labels(path, header, rows, lines, attr_cols)
    identity = _parse_identities(rows, identity_col)
    attributes = [header[c] for c in attr_cols]

    if check_images:
        on_disk = existing_images(root, images)
        note = note_missing_images(
            images, on_disk, listed_in=path.name, folder=root,
            hint="The dataset folder (`root=DIR`) must be the folder the image paths in the "
            "labels file are relative to.",
        )  # fmt: skip
        if note is not None:
            notes.append(note)
            images, splits, label_values = images[on_disk], splits[on_disk], label_values[on_disk]
            identity = identity[on_disk].reset_index(drop=True)

    frame = pd.DataFrame(
        {
            "image": pd.Series(images, dtype=object),
            "split": pd.Series(splits, dtype=object),
            "identity": pd.Series(identity.array, dtype="Int64"),
        }
    )
    return AttributeTable(
        image_dir=root,
        frame=frame,
        labels=np.ascontiguousarray(label_values, dtype=np.float32),
        attributes=attributes,
        dataset="csv",
        notes=notes,
    )
