"""Split names, carving a validation split out of train, and selecting the rows a command uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from faceattr.attributes import resolve_attributes
from faceattr.data.table import SPLITS, AttributeTable
from faceattr.errors import DataError, UsageError, unknown_name_error

SPLIT_CHOICES: tuple[str, ...] = (*SPLITS, "all")

_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
    "all": "all",
}


def resolve_split_name(name: str) -> str:
    """``"val"``/``"validation"`` -> ``"valid"`` etc.; one of train, valid, test, all.

    Unknown names raise :class:`~faceattr.errors.UsageError` listing the choices.
    """
    found = _ALIASES.get(str(name).strip().lower())
    if found is None:
        raise unknown_name_error("split", str(name), SPLIT_CHOICES)
    return found


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n:,}" for split, n in counts.items())


def ensure_validation(
    table: AttributeTable, *, fraction: float = 0.1, seed: int = 0
) -> AttributeTable:
    """Give ``table`` a "valid" split when it has none, carved out of "train".

    When identities are known the carve is by identity, so no person appears on both sides;
    ``fraction`` is then met approximately, in images. Without identities it is by image.
    The result depends only on ``seed`` and the set of train images, not on row order.
    A table that already has validation rows (or no train rows) is returned unchanged.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(
            f"The validation fraction must be between 0 and 1 (exclusive), got {fraction}."
        )
    split = table.frame["split"].to_numpy(dtype=object)
    if (split == "valid").any():
        return table
    train_rows = np.flatnonzero(split == "train")
    n_train = len(train_rows)
    if n_train < 2:
        return table
    target = max(1, round(fraction * n_train))
    rng = np.random.default_rng(seed)

    identity = table.frame["identity"].iloc[train_rows]
    known = identity.notna().to_numpy()
    images = table.frame["image"].iloc[train_rows].to_numpy(dtype=object).astype(str)
    # Rank images by name: used instead of row positions so the carve ignores row order.
    name_rank = np.empty(n_train, dtype=np.int64)
    name_rank[np.argsort(images, kind="stable")] = np.arange(n_train)
    if known.any():
        # One group per identity; an image whose identity is unknown is a group of its own
        # (negative keys never collide with identities, which are >= 0 in every dataset).
        ids = identity.to_numpy(dtype=np.float64, na_value=np.nan)
        keys = np.where(known, np.nan_to_num(ids), -1.0 - name_rank).astype(np.int64)
        uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if len(uniq) < 2:
            return table  # one person only: nothing can be held out without leaking
        order = rng.permutation(len(uniq))
        cum = np.cumsum(counts[order])
        # the shortest prefix of shuffled groups whose image count is closest to the target,
        # always leaving at least one group in train
        k = int(np.argmin(np.abs(cum[:-1] - target))) + 1
        chosen = np.zeros(len(uniq), dtype=bool)
        chosen[order[:k]] = True
        to_valid = chosen[inverse]
        n_people = int((uniq[order[:k]] >= 0).sum())
        n_loose = k - n_people
        how = "by identity"
        if n_loose:
            how += f"; {n_loose:,} images without an identity carved one by one"
        what = f"{int(to_valid.sum()):,} images of {n_people:,} identities"
    else:
        to_valid = np.zeros(n_train, dtype=bool)
        to_valid[rng.permutation(n_train)[:target]] = True
        to_valid = to_valid[name_rank]  # position in name order -> row
        how = "by image, identities unknown"
        what = f"{int(to_valid.sum()):,} images"

    new_split = split.copy()
    new_split[train_rows[to_valid]] = "valid"
    frame = table.frame.copy()
    frame["split"] = new_split
    source = "the partition file" if table.dataset == "celeba" else f"{table.dataset}'s splits"
    note = (
        f"No validation images in {source}: carved {what} out of train "
        f"as validation ({how}, seed {seed}); {n_train - int(to_valid.sum()):,} train images "
        "remain."
    )
    return replace(table, frame=frame, notes=[*table.notes, note])


def select_split(
    table: AttributeTable,
    split: str,
    *,
    sample: int | None = None,
    seed: int = 0,
    attributes: Sequence[str] | None = None,
    valid_fraction: float = 0.1,
    valid_seed: int = 0,
) -> AttributeTable:
    """The rows (and attribute columns) one command works on.

    Carves a validation split if needed (:func:`ensure_validation` with ``valid_seed``, kept
    apart from ``seed`` so training runs with different seeds, and ``eval``, see the same
    validation images), keeps ``split`` ("all" keeps every row), draws a seeded random subset
    of ``sample`` rows, then keeps ``attributes`` (case-insensitive names, None = all).
    """
    split = resolve_split_name(split)
    names = resolve_attributes(attributes, table.attributes)  # fail early on a bad name
    table = ensure_validation(table, fraction=valid_fraction, seed=valid_seed)
    counts = table.split_counts()
    if split == "all":
        chosen = table
    else:
        chosen = table.subset(table.frame["split"].to_numpy(dtype=object) == split)
    if len(chosen) == 0:
        if len(table) == 0:
            raise DataError(f"The {table.dataset} dataset has no images.")
        non_empty = [s for s, n in counts.items() if n > 0]
        raise DataError(
            f"The {split} split of {table.dataset} has no images (images per split: "
            f"{_fmt_counts(counts)}).",
            f'Use `split="{non_empty[-1]}"` instead (non-empty splits: {", ".join(non_empty)}).',
        )
    if sample is not None:
        if sample <= 0:
            raise UsageError(f"`sample={sample}` is not a positive number of images.")
        available = len(chosen)
        if sample >= available:
            note = (
                f"A sample of {sample:,} images is not smaller than the {available:,} {split} "
                "images; using all of them."
            )
            chosen = replace(chosen, notes=[*chosen.notes, note])
        else:
            # Draw from the images in name order so the subset does not depend on row order;
            # keep the table's own order afterwards.
            by_name = np.argsort(chosen.frame["image"].to_numpy(dtype=object).astype(str))
            rng = np.random.default_rng(seed)
            picked = np.sort(by_name[rng.choice(available, size=sample, replace=False)])
            chosen = chosen.subset(picked)
            chosen.notes.append(
                f"Sampled {sample:,} of {available:,} {split} images at random (seed {seed})."
            )
    if names != list(chosen.attributes):
        chosen = chosen.select_attributes(names)
    return chosen
