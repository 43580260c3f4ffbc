"""CelebA reader: finds the annotation files in any of the common layouts and indexes them.

Three layouts are recognised under ``root`` (tried in this order):

* ``official``: the release as published by the authors, either flat
  (``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``,
  ``identity_CelebA.txt``) or as its Google-Drive folders (``Anno/``, ``Eval/``,
  ``Img/img_align_celeba/``);
* ``kaggle``: ``list_attr_celeba.csv``, ``list_eval_partition.csv`` and
  ``img_align_celeba/img_align_celeba/`` (no identities);
* ``torchvision``: the official files under ``root/celeba/``.

Only file names, splits, identities and labels are read; pixels are decoded elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.data.images import IMAGE_EXTENSIONS, note_missing_images
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError

LAYOUTS: tuple[str, ...] = ("official", "kaggle", "torchvision")

FETCH_HINT = (
    "Download CelebA with `faceattr data fetch celeba --root DIR` (or write a small demo set "
    "with `faceattr data fetch synthetic --root DIR`) and pass that folder as `root=DIR`."
)
_REFETCH_HINT = (
    "The file looks damaged or edited; re-download it with `faceattr data fetch celeba --root DIR`."
)


@dataclass(frozen=True)
class CelebaFiles:
    """Where the pieces of one CelebA copy are. ``identity_file`` is None when absent."""

    layout: str
    attr_file: Path
    partition_file: Path
    identity_file: Path | None
    image_dir: Path


# --------------------------------------------------------------------------- layout detection


@dataclass(frozen=True)
class _Candidate:
    layout: str
    description: str
    attr_file: Path
    partition_file: Path
    identity_file: Path | None
    image_dir: Path


def _candidates(root: Path) -> list[_Candidate]:
    tv = root / "celeba"
    return [
        _Candidate(
            "official",
            "official release",
            root / "list_attr_celeba.txt",
            root / "list_eval_partition.txt",
            root / "identity_CelebA.txt",
            root / "img_align_celeba",
        ),
        _Candidate(
            "official",
            "official release, Google-Drive folders",
            root / "Anno" / "list_attr_celeba.txt",
            root / "Eval" / "list_eval_partition.txt",
            root / "Anno" / "identity_CelebA.txt",
            root / "Img" / "img_align_celeba",
        ),
        _Candidate(
            "kaggle",
            "Kaggle",
            root / "list_attr_celeba.csv",
            root / "list_eval_partition.csv",
            None,
            root / "img_align_celeba",
        ),
        _Candidate(
            "torchvision",
            "torchvision",
            tv / "list_attr_celeba.txt",
            tv / "list_eval_partition.txt",
            tv / "identity_CelebA.txt",
            tv / "img_align_celeba",
        ),
    ]


def _has_image_files(folder: Path) -> bool:
    """True if ``folder`` holds at least one image file (stops at the first one)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    return True
    except OSError:
        return False
    return False


def _resolve_image_dir(folder: Path) -> Path:
    """Step into ``img_align_celeba/img_align_celeba/`` when the zip was extracted in place."""
    nested = folder / folder.name
    if nested.is_dir() and not _has_image_files(folder):
        return nested
    return folder


def find_celeba(root: str | Path) -> CelebaFiles:
    """Locate a CelebA copy under ``root`` in the official, Kaggle or torchvision layout.

    Raises :class:`~faceattr.errors.DataError` listing every layout looked for and what of it
    is missing when none is complete.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"CelebA folder {root} does not exist.", FETCH_HINT)
    if not root.is_dir():
        raise DataError(f"CelebA root {root} is a file; pass the folder that holds it.", FETCH_HINT)
    lines = []
    for cand in _candidates(root):
        missing = []
        for path in (cand.attr_file, cand.partition_file):
            if not path.is_file():
                missing.append(path.relative_to(root).as_posix())
        if not cand.image_dir.is_dir():
            label = cand.image_dir.relative_to(root).as_posix() + "/"
            if cand.image_dir.with_suffix(".zip").is_file():
                label += f" ({cand.image_dir.name}.zip is there: extract it)"
            missing.append(label)
        if not missing:
            identity = cand.identity_file
            return CelebaFiles(
                layout=cand.layout,
                attr_file=cand.attr_file,
                partition_file=cand.partition_file,
                identity_file=identity if identity is not None and identity.is_file() else None,
                image_dir=_resolve_image_dir(cand.image_dir),
            )
        wanted = [
            cand.attr_file.relative_to(root).as_posix(),
            cand.partition_file.relative_to(root).as_posix(),
            cand.image_dir.relative_to(root).as_posix() + "/",
        ]
        status = "none found" if len(missing) == len(wanted) else f"missing {', '.join(missing)}"
        lines.append(f"  {cand.description}: {', '.join(wanted)} ({status})")
    raise DataError(
        f"No CelebA dataset found in {root}. Looked for these layouts:\n" + "\n".join(lines),
        FETCH_HINT,
    )


# --------------------------------------------------------------------------- file parsing


def _read_head(path: Path, n: int) -> list[tuple[int, str]]:
    """The first ``n`` non-blank lines of a text file as ``(line_number, text)``."""
    out: list[tuple[int, str]] = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                out.append((number, line.rstrip("\r\n")))
                if len(out) == n:
                    break
    return out


def _split_fields(line: str, csv: bool) -> list[str]:
    return [f.strip() for f in line.split(",")] if csv else line.split()


def _diagnose(
    path: Path,
    *,
    csv: bool,
    skip: int,
    columns: list[str],
    allowed: tuple[int, ...] | None,
) -> DataError:
    """Scan ``path`` line by line for the first malformed lines (the slow, exact path).

    Only run after the fast pandas read failed, to name the file and line numbers.
    """
    n_fields = len(columns)
    allowed_set = set(allowed) if allowed is not None else None
    problems: list[str] = []
    n_bad = 0
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if number <= skip or not line.strip():
                continue
            fields = _split_fields(line, csv)
            problem = None
            if len(fields) != n_fields:
                problem = (
                    f"line {number}: expected {n_fields} fields ({columns[0]} and "
                    f"{n_fields - 1} value{'s' if n_fields > 2 else ''}), found {len(fields)}"
                )
            else:
                for name, text in zip(columns[1:], fields[1:], strict=True):
                    try:
                        value = int(text)
                    except ValueError:
                        value = None
                    if value is None or (allowed_set is not None and value not in allowed_set):
                        want = "an integer"
                        if allowed is not None:
                            *rest, last = (str(a) for a in allowed)
                            want = f"{', '.join(rest)} or {last}" if rest else last
                        problem = f"line {number}: {name} is {text!r}, expected {want}"
                        break
            if problem is not None:
                n_bad += 1
                if len(problems) < 3:
                    snippet = line.strip()
                    snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
                    problems.append(f"{problem}: {snippet!r}")
    if not problems:
        return DataError(f"Cannot parse {path}: its format is not recognised.", _REFETCH_HINT)
    extra = n_bad - len(problems)
    more = f" (and {extra} more bad line{'s' if extra > 1 else ''})" if extra else ""
    return DataError(
        f"Malformed {path.name} ({path}): " + "; ".join(problems) + more + ".", _REFETCH_HINT
    )


def _read_columns(
    path: Path,
    *,
    csv: bool,
    skip: int,
    columns: list[str],
    allowed: tuple[int, ...] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``image value value ...`` rows fast with pandas; ``(names [N] object, values [N, K])``.

    ``skip`` header lines are ignored; every row must have ``len(columns)`` fields and integer
    values in ``allowed`` (any integer when None). Any violation is reported with line numbers.
    """

    def fail() -> DataError:
        return _diagnose(path, csv=csv, skip=skip, columns=columns, allowed=allowed)

    try:
        frame = pd.read_csv(
            path,
            sep="," if csv else r"\s+",
            header=None,
            skiprows=skip,
            dtype={0: str},
            engine="c",
            encoding="utf-8",
            encoding_errors="replace",
            skipinitialspace=csv,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} has no data rows.", _REFETCH_HINT) from None
    except (pd.errors.ParserError, ValueError):
        raise fail() from None
    if frame.shape[1] != len(columns):
        raise fail()
    values_frame = frame.iloc[:, 1:]
    if not all(dtype.kind in "iu" for dtype in values_frame.dtypes):
        raise fail()  # a non-integer or a missing (NaN) value somewhere
    values = values_frame.to_numpy(dtype=np.int64)
    if allowed is not None and values.size:
        lo, hi = min(allowed), max(allowed)
        # min/max is much cheaper than isin on 8 million values, and exact for a range
        contiguous = set(allowed) == set(range(lo, hi + 1))
        if (
            values.min() < lo
            or values.max() > hi
            or not (contiguous or np.isin(values, allowed).all())
        ):
            raise fail()
    names = frame.iloc[:, 0].to_numpy(dtype=object)
    duplicated = pd.Index(names).duplicated()
    if duplicated.any():
        first = names[np.flatnonzero(duplicated)[0]]
        raise DataError(
            f"Malformed {path.name} ({path}): image {first!r} is listed more than once "
            f"({int(duplicated.sum()):,} repeated rows).",
            _REFETCH_HINT,
        )
    return names, values


def _is_label_value(field: str) -> bool:
    return field.lstrip("+-").isdigit()


def _read_attr_file(
    path: Path, csv: bool, notes: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(attribute names, image names [N], raw values [N, A] int64)`` from an attribute file.

    The official txt starts with a count line then a names line; a csv has one header line.
    Any attribute names work, in file order.
    """
    head = _read_head(path, 3)
    if len(head) < 2:
        raise DataError(f"{path} is empty or has no data rows.", _REFETCH_HINT)
    count: int | None = None
    idx = 0
    first = _split_fields(head[0][1], csv)
    if not csv and len(first) == 1 and first[0].isdigit():
        count = int(first[0])  # the official count line
        idx = 1
    if idx >= len(head) - 1:
        raise DataError(f"{path} has a header but no data rows.", _REFETCH_HINT)
    header_line, header = head[idx][0], _split_fields(head[idx][1], csv)
    data_line, data = head[idx + 1][0], _split_fields(head[idx + 1][1], csv)
    if len(header) == len(data):  # the header names the image column too (csv: image_id)
        header = header[1:]
    elif len(header) != len(data) - 1:
        raise DataError(
            f"Malformed {path.name} ({path}): line {header_line} names {len(header)} "
            f"attributes but line {data_line} has {len(data) - 1} values after the image name.",
            _REFETCH_HINT,
        )
    if not header:
        raise DataError(f"Malformed {path.name} ({path}): no attribute names.", _REFETCH_HINT)
    if all(_is_label_value(h) for h in header):
        raise DataError(
            f"Malformed {path.name} ({path}): line {header_line} holds label values "
            f"({' '.join(header[:6])} ...), not the attribute names the file must start with.",
            "The header line is missing: the official file starts with the image count, then "
            "a line of the 40 attribute names (5_o_Clock_Shadow Arched_Eyebrows ...). Restore "
            "it, or fetch the file again (`faceattr data fetch celeba`).",
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(
            f"Malformed {path.name} ({path}): attribute names repeat on line {header_line}: "
            f"{', '.join(dupes)}.",
            _REFETCH_HINT,
        )
    names, values = _read_columns(
        path, csv=csv, skip=header_line, columns=["image", *header], allowed=(-1, 0, 1)
    )
    if count is not None and count != len(names):
        notes.append(
            f"{path.name} says {count:,} images on its first line but lists {len(names):,}; "
            f"using the {len(names):,} listed."
        )
    return header, names, values


def _labels_from_values(values: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Map file values to ``[N, A]`` float32 {0, 1} with NaN for unknown.

    Official files use -1/1; a 0 there means "not annotated". A file with no -1 at all is a
    0/1 re-encoding, where 0 means negative.
    """
    labels = (values == 1).astype(np.float32)
    if (values == -1).any():
        zeros = values == 0
        if zeros.any():
            labels[zeros] = np.nan
            notes.append(
                f"{path.name} has {int(zeros.sum()):,} labels of 0 among its -1/1 labels; "
                "they are treated as unknown and ignored by losses and metrics."
            )
    elif (values == 0).any():
        notes.append(f"{path.name} uses 0/1 labels instead of the official -1/1; 0 = negative.")
    return labels


def _header_lines(path: Path, csv: bool) -> int:
    """1 if the first line of a two-column file is a header such as ``image_id,partition``."""
    head = _read_head(path, 1)
    if not head:
        raise DataError(f"{path} is empty.", _REFETCH_HINT)
    number, line = head[0]
    fields = _split_fields(line, csv)
    return 0 if fields and fields[-1].lstrip("-").isdigit() else number


def _examples(names: np.ndarray, k: int = 3) -> str:
    return ", ".join(str(n) for n in names[:k])


def read_celeba(root: str | Path | CelebaFiles, *, check_images: bool = True) -> AttributeTable:
    """Read a CelebA copy (any layout, see :func:`find_celeba`) into an :class:`AttributeTable`.

    Labels -1/1 become 0/1; partitions 0/1/2 become train/valid/test; identities come from
    ``identity_CelebA.txt`` when present (``<NA>`` otherwise). Images listed in the attribute
    file but absent from the partition file or from the image folder are dropped with a note.
    ``check_images=False`` skips listing the image folder.
    """
    files = root if isinstance(root, CelebaFiles) else find_celeba(root)
    notes: list[str] = []
    attr_csv = files.attr_file.suffix.lower() == ".csv"
    attributes, images, values = _read_attr_file(files.attr_file, attr_csv, notes)
    labels = _labels_from_values(values, files.attr_file, notes)
    total = len(images)

    part_csv = files.partition_file.suffix.lower() == ".csv"
    part_skip = _header_lines(files.partition_file, part_csv)
    part_images, part_values = _read_columns(
        files.partition_file,
        csv=part_csv,
        skip=part_skip,
        columns=["image", "partition"],
        allowed=(0, 1, 2),
    )
    where = pd.Index(part_images).get_indexer(images)
    unlisted = where < 0
    if unlisted.all():
        raise DataError(
            f"None of the {total:,} images in {files.attr_file.name} is listed in "
            f"{files.partition_file} (e.g. {_examples(images)}).",
            "The two files come from different datasets or versions; re-download them with "
            "`faceattr data fetch celeba --root DIR`.",
        )
    if unlisted.any():
        notes.append(
            f"{int(unlisted.sum()):,} of {total:,} images in {files.attr_file.name} are not in "
            f"{files.partition_file.name} (e.g. {_examples(images[unlisted])}); dropped them."
        )
    keep = ~unlisted
    splits = np.asarray(SPLITS, dtype=object)[part_values[where[keep], 0]]
    images, labels = images[keep], labels[keep]

    identity = pd.array(np.full(len(images), pd.NA), dtype="Int64")
    if files.identity_file is not None:
        id_images, id_values = _read_columns(
            files.identity_file,
            csv=False,
            skip=_header_lines(files.identity_file, False),
            columns=["image", "identity"],
            allowed=None,
        )
        id_where = pd.Index(id_images).get_indexer(images)
        found = id_where >= 0
        identity = pd.array(
            np.where(found, id_values[np.maximum(id_where, 0), 0], 0), dtype="Int64"
        )
        identity[~found] = pd.NA
        if not found.all():
            notes.append(
                f"{int((~found).sum()):,} images have no identity in "
                f"{files.identity_file.name}; their identity is unknown."
            )

    if check_images:
        try:
            present = set(os.listdir(files.image_dir))  # one listing, not one stat per image
        except OSError as exc:
            raise DataError(
                f"Cannot list the CelebA image folder {files.image_dir}: {exc}"
            ) from None
        on_disk = np.fromiter((name in present for name in images), dtype=bool, count=len(images))
        note = note_missing_images(
            images, on_disk, listed_in=files.attr_file.name, folder=files.image_dir,
            hint="Extract img_align_celeba.zip there, or fetch the data again with "
            "`faceattr data fetch celeba --root DIR`.",
        )  # fmt: skip
        if note is not None:
            notes.append(note)
            images, labels, splits = images[on_disk], labels[on_disk], splits[on_disk]
            identity = identity[on_disk]

    frame = pd.DataFrame(
        {
            "image": pd.Series(images, dtype=object),
            "split": pd.Series(splits, dtype=object),
            "identity": pd.Series(identity, dtype="Int64"),
        }
    )
    return AttributeTable(
        image_dir=files.image_dir,
        frame=frame,
        labels=np.ascontiguousarray(labels, dtype=np.float32),
        attributes=list(attributes),
        dataset="celeba",
        notes=notes,
    )
