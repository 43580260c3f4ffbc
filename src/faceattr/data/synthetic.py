"""Small, learnable datasets in the real formats, for tests and demos.

:func:`write_synthetic_celeba` (`faceattr data fetch synthetic`) writes a CelebA copy in the
official txt, Kaggle csv or torchvision layout, so the readers are exercised exactly as on
real data. Labels follow CelebA's positive rates, with CelebA's dependence on ``Male``, and
every attribute is drawn into the pixels: the central square of each image holds a 10 x 7
grid of cells, and a positive attribute puts a bright marker of its own shape and colour in
its cells, on a noisy skin-toned background with random jitter. Each attribute owns a pair of
cells mirrored about the vertical centre line (or one cell on it), with mirror-symmetric
markers, so a horizontal flip (the default augmentation) keeps every label true. A tiny CNN
at 64 px learns them in a few epochs.

:func:`write_synthetic_wflw` writes a WFLW copy in the release's layout: photos of one to a
few faces, each face's six flags drawn as markers inside its rectangle.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from faceattr.attributes import CELEBA_ATTRIBUTES, WFLW_ATTRIBUTES
from faceattr.config import SYNTHETIC_SIZES as DEMO_SIZES
from faceattr.data.celeba import LAYOUTS, CelebaFiles
from faceattr.data.wflw import (
    ANNOTATION_FILES,
    ANNOTATIONS_DIR,
    IMAGES_DIR,
    LIST_DIR,
    format_wflw_line,
)
from faceattr.errors import command

# Background (CelebA) and face (WFLW) colours.
_SKIN_RGB = ((233, 196, 170), (224, 172, 140), (198, 140, 105), (160, 110, 80), (110, 75, 55))

# ---------------------------------------------------------------------------------------------
# CelebA

# (rate among men, rate among women), measured on the 202,599 official annotations; Male
# itself is 0.417. Drawing each attribute given Male keeps CelebA's main correlations.
_RATES_BY_SEX: dict[str, tuple[float, float]] = {
    "5_o_Clock_Shadow": (0.266, 0.0), "Arched_Eyebrows": (0.053, 0.420),
    "Attractive": (0.279, 0.679), "Bags_Under_Eyes": (0.348, 0.102), "Bald": (0.054, 0.0),
    "Bangs": (0.082, 0.201), "Big_Lips": (0.156, 0.301), "Big_Nose": (0.420, 0.102),
    "Black_Hair": (0.298, 0.197), "Blond_Hair": (0.021, 0.239), "Blurry": (0.057, 0.046),
    "Brown_Hair": (0.151, 0.244), "Bushy_Eyebrows": (0.244, 0.069), "Chubby": (0.121, 0.012),
    "Double_Chin": (0.098, 0.010), "Eyeglasses": (0.124, 0.023), "Goatee": (0.150, 0.0),
    "Gray_Hair": (0.086, 0.011), "Heavy_Makeup": (0.003, 0.661),
    "High_Cheekbones": (0.308, 0.560), "Male": (1.0, 0.0), "Mouth_Slightly_Open": (0.425, 0.526),
    "Mustache": (0.100, 0.0), "Narrow_Eyes": (0.120, 0.111), "No_Beard": (0.606, 0.999),
    "Oval_Face": (0.220, 0.330), "Pale_Skin": (0.024, 0.056), "Pointy_Nose": (0.162, 0.360),
    "Receding_Hairline": (0.117, 0.053), "Rosy_Cheeks": (0.003, 0.111),
    "Sideburns": (0.135, 0.0), "Smiling": (0.400, 0.541), "Straight_Hair": (0.242, 0.184),
    "Wavy_Hair": (0.141, 0.447), "Wearing_Earrings": (0.016, 0.313),
    "Wearing_Hat": (0.081, 0.025), "Wearing_Lipstick": (0.006, 0.806),
    "Wearing_Necklace": (0.018, 0.198), "Wearing_Necktie": (0.174, 0.0),
    "Young": (0.633, 0.874),
}  # fmt: skip
MALE_RATE = 0.417

# Cells of the attribute grid inside the central square: attribute j is in row j // 4, in
# columns (k, GRID_COLS - 1 - k) for k = j % 4 < 3, or in the centre column for k == 3.
GRID_ROWS, GRID_COLS = 10, 7
_SHAPES = ("rectangle", "ellipse", "triangle", "diamond")
_SKIN_TONES = np.array(_SKIN_RGB, dtype=np.float32)


def draw_synthetic_labels(
    n: int, rng: np.random.Generator, *, male: np.ndarray | None = None
) -> np.ndarray:
    """``[n, 40]`` uint8 {0, 1} labels for :data:`CELEBA_ATTRIBUTES` with CelebA-like rates.

    ``male`` ([n] bool) fixes the sex (e.g. per identity); it is drawn when None. A few rules
    keep labels consistent: a goatee or moustache means no No_Beard, one hair colour at most,
    bald heads have no hair colour, bangs or hair texture, hair is not straight and wavy.
    """
    idx = {name: j for j, name in enumerate(CELEBA_ATTRIBUTES)}
    if male is None:
        male = rng.random(n) < MALE_RATE
    male = np.asarray(male, dtype=bool)
    rates = np.array([_RATES_BY_SEX[a] for a in CELEBA_ATTRIBUTES], dtype=np.float64)  # [A, 2]
    p = np.where(male[:, None], rates[:, 0], rates[:, 1])  # [n, A]
    y = (rng.random(p.shape) < p).astype(np.uint8)
    y[:, idx["Male"]] = male

    beard = (y[:, idx["Goatee"]] == 1) | (y[:, idx["Mustache"]] == 1)
    # Men without goatee or moustache are beardless at 0.79, so that No_Beard stays at
    # CelebA's 0.606 among men once bearded ones are forced to 0.
    shaven = male & ~beard
    y[shaven, idx["No_Beard"]] = rng.random(int(shaven.sum())) < 0.79
    y[beard, idx["No_Beard"]] = 0
    colours = [idx[a] for a in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]
    for i in np.flatnonzero(y[:, colours].sum(axis=1) > 1):
        on = [c for c in colours if y[i, c]]
        keep = on[int(rng.integers(len(on)))]
        y[i, colours] = 0
        y[i, keep] = 1
    bald = y[:, idx["Bald"]] == 1
    for name in ("Bangs", "Straight_Hair", "Wavy_Hair"):
        y[bald, idx[name]] = 0
    y[np.ix_(bald, colours)] = 0
    both = (y[:, idx["Straight_Hair"]] == 1) & (y[:, idx["Wavy_Hair"]] == 1)
    drop = np.where(rng.random(n) < 0.5, idx["Straight_Hair"], idx["Wavy_Hair"])
    y[np.flatnonzero(both), drop[both]] = 0
    return y


def _marker_colour(j: int) -> tuple[int, int, int]:
    """A saturated colour per attribute: hues spread out, neighbours far apart on the wheel."""
    hue = (j * 7 % 40) / 40.0
    r, g, b = colorsys.hsv_to_rgb(hue, 1.0, 1.0 if j % 2 == 0 else 0.8)
    return int(r * 255), int(g * 255), int(b * 255)


def attribute_cells(j: int, image_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """``(left, top, width, height)`` of attribute ``j``'s cells inside the central square:
    two mirrored about the vertical centre line, or one on it."""
    width, height = image_size
    side = min(width, height)
    margin = 0.04 * side  # keeps markers clear of the square's edges (crops, resampling)
    x0 = (width - side) / 2 + margin
    y0 = (height - side) / 2 + margin
    cell_w = (side - 2 * margin) / GRID_COLS
    cell_h = (side - 2 * margin) / GRID_ROWS
    row, k = divmod(j, 4)
    columns = [k, GRID_COLS - 1 - k] if k < 3 else [GRID_COLS // 2]
    return [(x0 + c * cell_w, y0 + row * cell_h, cell_w, cell_h) for c in columns]


def render_synthetic_face(
    labels: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int] = (178, 218),
    skin: Sequence[float] | np.ndarray | None = None,
    noise: np.ndarray | None = None,
) -> Image.Image:
    """Draw one image (``image_size`` is ``(width, height)``) encoding ``labels`` [40] {0, 1}.

    ``skin`` is the background RGB (an identity's skin tone; random when None). ``noise``, a
    float32 array at least ``[height, width, 3]``, is a bank to crop noise from (faster than
    drawing fresh noise per image).
    """
    width, height = image_size
    if skin is None:
        skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    base = np.asarray(skin, dtype=np.float32) * rng.uniform(0.9, 1.1)
    # a soft vertical light gradient, so the background is not a flat colour
    shade = np.linspace(1.05, 0.9, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(base, (height, width, 3)) * shade
    if noise is None:
        noise = rng.normal(0.0, 12.0, size=(height, width, 3)).astype(np.float32)
    oy = int(rng.integers(noise.shape[0] - height + 1))
    ox = int(rng.integers(noise.shape[1] - width + 1))
    pixels = pixels + noise[oy : oy + height, ox : ox + width]
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")

    draw = ImageDraw.Draw(img)
    for j in np.flatnonzero(np.asarray(labels) == 1):
        cells = attribute_cells(int(j), image_size)
        scale = rng.uniform(0.75, 0.95)
        jitter_x, jitter_y = rng.uniform(-0.5, 0.5, size=2)
        gain = rng.uniform(0.85, 1.0)
        colour = tuple(int(c * gain) for c in _marker_colour(int(j)))
        shape = _SHAPES[int(j) % len(_SHAPES)]
        for i, (left, top, cw, ch) in enumerate(cells):
            w, h = cw * scale, ch * scale
            # The second cell's marker mirrors the first's offset: a flip swaps the two.
            cx = left + cw / 2 + (jitter_x if i == 0 else -jitter_x) * (cw - w)
            cy = top + ch / 2 + jitter_y * (ch - h)
            _draw_marker(draw, shape, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), colour)
    return img


def _draw_marker(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...],
                 colour: tuple[int, ...]) -> None:  # fmt: skip
    """A marker whose mirror image about its vertical axis is itself."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)


def celeba_layout_files(root: str | Path, layout: str = "official") -> CelebaFiles:
    """Where a CelebA copy in ``layout`` (official, kaggle, torchvision) keeps its files."""
    root = Path(root)
    if layout == "official":
        base = root
    elif layout == "torchvision":
        base = root / "celeba"
    elif layout == "kaggle":
        return CelebaFiles(
            layout="kaggle",
            attr_file=root / "list_attr_celeba.csv",
            partition_file=root / "list_eval_partition.csv",
            identity_file=None,
            image_dir=root / "img_align_celeba" / "img_align_celeba",
        )
    else:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return CelebaFiles(
        layout=layout,
        attr_file=base / "list_attr_celeba.txt",
        partition_file=base / "list_eval_partition.txt",
        identity_file=base / "identity_CelebA.txt",
        image_dir=base / "img_align_celeba",
    )


def write_celeba_annotations(
    root: str | Path,
    image_names: Sequence[str],
    labels: np.ndarray,
    partitions: Sequence[int] | np.ndarray,
    identities: Sequence[int] | np.ndarray | None = None,
    *,
    layout: str = "official",
    attributes: Sequence[str] = CELEBA_ATTRIBUTES,
    crlf: bool | None = None,
) -> CelebaFiles:
    """Write the annotation files of a CelebA copy in ``layout``'s real format; no images.

    ``labels`` is ``[N, A]`` in {0, 1} (written as -1/1), ``partitions`` [N] in {0, 1, 2}.
    ``crlf`` None uses the release's own line endings (CRLF in the official txt files, LF in
    Kaggle's csv files). The image folder is created empty. Returns the files' locations.
    """
    files = celeba_layout_files(root, layout)
    files.image_dir.mkdir(parents=True, exist_ok=True)
    files.attr_file.parent.mkdir(parents=True, exist_ok=True)
    values = np.where(np.asarray(labels) > 0, 1, -1)
    names = [str(n) for n in image_names]
    parts = [int(p) for p in partitions]
    if layout == "kaggle":
        eol = "\r\n" if crlf else "\n"
        rows = [",".join(["image_id", *attributes])]
        rows += [",".join([n, *map(str, v)]) for n, v in zip(names, values.tolist(), strict=True)]
        _write_lines(files.attr_file, rows, eol)
        rows = ["image_id,partition"] + [f"{n},{p}" for n, p in zip(names, parts, strict=True)]
        _write_lines(files.partition_file, rows, eol)
        return files

    eol = "\n" if crlf is False else "\r\n"
    # The official header: the count, then the names with a trailing space; each value is
    # right-aligned in two characters after a space, hence the double spaces before "1".
    rows = [str(len(names)), " ".join(attributes) + " "]
    rows += [
        n + "".join(f" {x:2d}" for x in v) for n, v in zip(names, values.tolist(), strict=True)
    ]
    _write_lines(files.attr_file, rows, eol)
    _write_lines(files.partition_file, [f"{n} {p}" for n, p in zip(names, parts, strict=True)], eol)
    if identities is not None and files.identity_file is not None:
        ids = [int(i) for i in identities]
        rows = [f"{n} {i}" for n, i in zip(names, ids, strict=True)]
        _write_lines(files.identity_file, rows, eol)
    return files


def _write_lines(path: Path, lines: list[str], eol: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(eol.join(lines) + eol)


def write_synthetic_celeba(
    root: str | Path,
    *,
    n_train: int = DEMO_SIZES[0],
    n_valid: int = DEMO_SIZES[1],
    n_test: int = DEMO_SIZES[2],
    seed: int = 0,
    layout: str = "official",
    image_size: tuple[int, int] = (178, 218),
    identities_per_split: int | None = None,
) -> Path:
    """Write a synthetic CelebA copy under ``root`` in ``layout``; returns ``root``.

    Images are ``000001.jpg`` ... (train first, then valid, then test, as in the release),
    ``image_size`` is ``(width, height)``. Each split has its own identities (about four
    images each unless ``identities_per_split`` is given); sex and skin tone belong to the
    identity. Deterministic given ``seed``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    counts = (n_train, n_valid, n_test)
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"split sizes must be >= 0 and not all 0, got {counts}")
    root = Path(root)
    rng = np.random.default_rng(seed)

    partitions = np.concatenate([np.full(n, p, dtype=np.int64) for p, n in enumerate(counts)])
    id_counts = [
        0 if n == 0 else min(n, identities_per_split or max(1, round(n / 4))) for n in counts
    ]
    # identity numbers are shuffled (not one block per split) but never shared across splits
    id_pool = rng.permutation(sum(id_counts)) + 1
    identities = np.empty(len(partitions), dtype=np.int64)
    start = 0
    for p, (n, k) in enumerate(zip(counts, id_counts, strict=True)):
        if n == 0:
            continue
        own = id_pool[start : start + k]
        start += k
        # every identity gets at least one image, the rest are spread at random
        pick = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])
        identities[partitions == p] = own[rng.permutation(pick)]

    people = np.unique(identities)
    person_male = dict(
        zip(people.tolist(), (rng.random(len(people)) < MALE_RATE).tolist(), strict=True)
    )
    person_skin = dict(
        zip(people.tolist(), rng.integers(len(_SKIN_TONES), size=len(people)).tolist(), strict=True)
    )
    male = np.array([person_male[i] for i in identities.tolist()], dtype=bool)
    labels = draw_synthetic_labels(len(partitions), rng, male=male)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]

    files = write_celeba_annotations(
        root, names, labels, partitions, identities, layout=layout, attributes=CELEBA_ATTRIBUTES
    )
    width, height = image_size
    noise = rng.normal(0.0, 12.0, size=(height + 24, width + 24, 3)).astype(np.float32)
    for name, y, person in zip(names, labels, identities.tolist(), strict=True):
        img = render_synthetic_face(
            y, rng, image_size=image_size, skin=_SKIN_TONES[person_skin[person]], noise=noise
        )
        img.save(files.image_dir / name, format="JPEG", quality=90)
    return root


@dataclass
class SyntheticDataset:
    """What :func:`fetch_synthetic` wrote: ``faceattr data fetch synthetic --json``."""

    root: Path
    splits: dict[str, int]  # images per split
    seed: int

    @property
    def next_command(self) -> str:
        """The command that trains a small model on it, in seconds."""
        train = "`faceattr train --root {root} --arch celebnet --epochs 3`"
        return command(train, root=self.root).strip("`")

    def to_json(self) -> dict[str, Any]:
        return {"dataset": "synthetic", "root": str(self.root), "images": sum(self.splits.values()),
                "splits": self.splits, "seed": self.seed, "next": self.next_command}  # fmt: skip


def fetch_synthetic(
    root: str | Path,
    *,
    n_train: int = DEMO_SIZES[0],
    n_valid: int = DEMO_SIZES[1],
    n_test: int = DEMO_SIZES[2],
    seed: int = 0,
) -> SyntheticDataset:
    """``faceattr data fetch synthetic``: :func:`write_synthetic_celeba` in the official layout."""
    path = write_synthetic_celeba(root, n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed)
    return SyntheticDataset(path, {"train": n_train, "valid": n_valid, "test": n_test}, seed)


# ---------------------------------------------------------------------------------------------
# WFLW

# Share of faces with each flag in the official test list (largepose 326, expression 314,
# illumination 698, make-up 206, occlusion 736, blur 773 of 2,500 faces).
SYNTHETIC_RATES: dict[str, float] = {
    "Pose": 0.13, "Expression": 0.126, "Illumination": 0.279, "Make_Up": 0.082,
    "Occlusion": 0.294, "Blur": 0.309,
}  # fmt: skip
_EVENTS = ("0--Parade", "12--Group", "20--Family_Group", "51--Dresses")
_FLAG_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 235), (235, 60, 220), (250, 220, 30),
                 (30, 220, 230))  # fmt: skip


def _synthetic_landmarks(box: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """98 plausible points: a jaw line (33) along the lower half of the face ellipse, the
    rest scattered over the inner face."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    t = np.linspace(np.pi, 0, 33)
    jaw = np.stack([cx + rx * 0.95 * np.cos(t), cy + ry * 0.95 * np.sin(t)], axis=1)
    inner = np.stack(
        [
            rng.uniform(x0 + 0.2 * rx, x1 - 0.2 * rx, 65),
            rng.uniform(y0 + 0.2 * ry, cy + 0.6 * ry, 65),
        ],
        axis=1,
    )
    return np.concatenate([jaw, inner]).astype(np.float32)


def _draw_face(
    img: Image.Image, box: tuple[int, ...], flags: np.ndarray, rng: np.random.Generator
) -> None:
    """A skin-coloured face in ``box`` with one marker per raised flag (3 x 2 grid of cells),
    plus the flag's effect where it is easy to draw: illumination darkens, blur blurs."""
    x0, y0, x1, y1 = box
    draw = ImageDraw.Draw(img)
    skin = _SKIN_RGB[int(rng.integers(len(_SKIN_RGB)))]
    draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c * rng.uniform(0.9, 1.05)) for c in skin))
    w, h = x1 - x0, y1 - y0
    cw, ch = 0.8 * w / 3, 0.8 * h / 2
    for j in np.flatnonzero(flags):
        row, col = divmod(int(j), 3)
        left, top = x0 + 0.1 * w + col * cw, y0 + 0.1 * h + row * ch
        s = rng.uniform(0.7, 0.9)
        mx, my = left + cw * (1 - s) / 2, top + ch * (1 - s) / 2
        shape = (mx, my, mx + cw * s, my + ch * s)
        colour = _FLAG_COLOURS[int(j)]
        if j % 2:
            draw.ellipse(shape, fill=colour)
        else:
            draw.rectangle(shape, fill=colour)
    region = (x0, y0, x1, y1)
    names = list(WFLW_ATTRIBUTES)
    if flags[names.index("Illumination")]:
        patch = img.crop(region).point(lambda v: int(v * 0.6))
        img.paste(patch, region)
    if flags[names.index("Blur")]:
        img.paste(img.crop(region).filter(ImageFilter.GaussianBlur(1.2)), region)


def write_synthetic_wflw(
    root: str | Path,
    *,
    n_train: int = 60,
    n_test: int = 20,
    max_faces: int = 3,
    seed: int = 0,
    image_size: tuple[int, int] = (240, 160),
    rates: dict[str, float] | None = None,
) -> Path:
    """Write a synthetic WFLW copy under ``root`` in the official layout; returns ``root``.

    ``n_train``/``n_test`` photos (``image_size`` is ``(width, height)``) with 1 to
    ``max_faces`` faces each, side by side. Every face's six flags are drawn into its pixels
    (a coloured marker per raised flag inside the face rectangle), so a tiny model can learn
    them from the face crops. Annotation lines are in the release's exact format.
    Deterministic given ``seed``.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"photo counts must be >= 0 and not both 0, got {n_train}, {n_test}")
    if max_faces < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    p = np.array([(rates or SYNTHETIC_RATES)[a] for a in WFLW_ATTRIBUTES])
    ann_dir = root / ANNOTATIONS_DIR / LIST_DIR
    ann_dir.mkdir(parents=True, exist_ok=True)
    width, height = image_size
    slot = width / max_faces
    photo = 0
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for _ in range(n):
            photo += 1
            event = _EVENTS[photo % len(_EVENTS)]
            name = f"{event}/{event.split('--')[1]}_synthetic_{photo}.jpg"
            base = np.array(_SKIN_RGB[int(rng.integers(len(_SKIN_RGB)))], np.float32) * 0.5 + 60
            shade = np.linspace(1.1, 0.85, height, dtype=np.float32)[:, None, None]
            noise = rng.normal(0, 10, (height, width, 3)).astype(np.float32)
            pixels = np.clip(base * shade + noise, 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels, mode="RGB")
            n_faces = int(rng.integers(1, max_faces + 1))
            for k in sorted(rng.choice(max_faces, size=n_faces, replace=False).tolist()):
                side = rng.uniform(0.6, 0.85) * min(slot, height / 1.25)
                fw, fh = side, side * rng.uniform(1.0, 1.2)
                x0 = k * slot + rng.uniform(0, slot - fw)
                y0 = rng.uniform(0, height - fh)
                box = (int(round(x0)), int(round(y0)), int(round(x0 + fw)), int(round(y0 + fh)))
                flags = (rng.random(len(WFLW_ATTRIBUTES)) < p).astype(np.uint8)
                _draw_face(img, box, flags, rng)
                landmarks = _synthetic_landmarks(box, rng)
                lines.append(format_wflw_line(landmarks, box, flags, name))
            (root / IMAGES_DIR / event).mkdir(parents=True, exist_ok=True)
            img.save(root / IMAGES_DIR / name, format="JPEG", quality=92)
        with open(ann_dir / ANNOTATION_FILES[split], "w", encoding="utf-8", newline="") as out:
            out.write("".join(line + "\n" for line in lines))
    return root
