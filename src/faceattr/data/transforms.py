"""Preprocessing and augmentation.

Preprocessing (per image, PIL; :class:`Preprocessing` is the one entry point): cut a face box
out of the photo when the dataset has one, cut the model's crop out of that and resize it to
a square of ``img_size`` pixels, as uint8. Everything after that runs on whole batches
``[B, 3, S, S]`` on the training device: augmentation (one affine warp for flip, crop, shift
and rotation; colour jitter; random erasing) and normalisation. The same batched path serves
JPEG decoding and the prepared cache, so both train identically.

Importing this module does not import torch (torch is imported where a torch tensor is
handled), so an inference path without torch can use :class:`Preprocessing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload

import numpy as np
from PIL import Image

from faceattr.config import FULL_IMAGE, AugmentConfig
from faceattr.data import cut_box

if TYPE_CHECKING:
    import torch

# The normalisation of ImageNet-trained backbones (and of faceattr's own CNN).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_box(width: int, height: int, crop: Sequence[float]) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of the fractional ``crop`` in a WxH image."""
    left, top, right, bottom = crop
    box = (
        round(left * width),
        round(top * height),
        round(right * width),
        round(bottom * height),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"empty crop {crop} for a {width}x{height} image")
    return box


def preprocess(image: Image.Image, img_size: int, crop: Sequence[float]) -> np.ndarray:
    """RGB PIL image -> ``[3, S, S]`` uint8 array: the crop box, resized to ``img_size``.

    The low-level step behind :meth:`Preprocessing.pixels` (which also cuts a face box out
    first); use that unless you have no :class:`Preprocessing` at hand.
    """
    box = crop_box(image.width, image.height, crop)
    # reducing_gap lets PIL decimate large images cheaply before the final filter.
    out = image.resize((img_size, img_size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0,1] float) ``[B, 3, H, W]`` -> normalised float32."""
    import torch

    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def normalize_array(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """numpy twin of :func:`normalize`: uint8 (or [0,1] float) ``[B, 3, H, W]`` -> float32."""
    x = batch.astype(np.float32)
    if batch.dtype == np.uint8:
        x /= 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


class PreprocessingSettings(Protocol):
    """What :meth:`Preprocessing.from_info` reads: a :class:`~faceattr.models.ModelInfo`, or
    anything else with these fields (e.g. the metadata of an exported model)."""

    @property
    def img_size(self) -> int: ...
    @property
    def crop(self) -> Sequence[float]: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


def _floats(name: str, values: Sequence[float], n: int) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"Preprocessing {name} must be {n} finite numbers, got {list(values)}.")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """A model's input pipeline: photo (+ face box) -> uint8 pixels -> normalised batch.

    ``crop`` is (left, top, right, bottom) as fractions of the (cut-out) image, applied
    before resizing to ``img_size``; ``mean``/``std`` normalise RGB in [0, 1]. Build it from
    a model file's settings with :meth:`from_info` so training, evaluation, prediction and
    Grad-CAM all feed a model what it was trained on.
    """

    img_size: int
    crop: tuple[float, ...] = FULL_IMAGE  # 4 numbers
    mean: tuple[float, ...] = IMAGENET_MEAN  # 3 numbers (R, G, B)
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Checked here, not at the first image, so a bad model file fails on loading.
        if int(self.img_size) != self.img_size or self.img_size < 1:
            raise ValueError(
                f"Preprocessing img_size must be a positive whole number, got {self.img_size!r}."
            )
        left, top, right, bottom = crop = _floats("crop", self.crop, 4)
        if not (left < right and top < bottom):
            raise ValueError(
                f"Preprocessing crop (left, top, right, bottom) is empty: {list(crop)}; give "
                "fractions with left < right and top < bottom, e.g. (0, 0, 1, 1)."
            )
        std = _floats("std", self.std, 3)
        if min(std) <= 0:
            raise ValueError(f"Preprocessing std must be positive, got {list(std)}.")
        # Plain int and float tuples, however the settings were given: hashable, comparable.
        object.__setattr__(self, "img_size", int(self.img_size))
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "mean", _floats("mean", self.mean, 3))
        object.__setattr__(self, "std", std)

    @classmethod
    def from_info(cls, info: PreprocessingSettings) -> Preprocessing:
        """The preprocessing a model was trained with (``info``: its ``ModelInfo``)."""
        return cls(info.img_size, tuple(info.crop), tuple(info.mean), tuple(info.std))

    @staticmethod
    def region(image: Image.Image, box: Sequence[float] | None = None) -> Image.Image:
        """The part of ``image`` the pipeline starts from: the face ``box`` (left, top, right,
        bottom in pixels; parts outside the photo are grey) or, with None, the whole image."""
        return image if box is None else cut_box(image, box)

    def pixels(self, image: Image.Image, box: Sequence[float] | None = None) -> np.ndarray:
        """RGB PIL image -> ``[3, S, S]`` uint8: the face ``box`` cut out (None: the whole
        image), then the model's crop, resized to ``img_size``."""
        return preprocess(self.region(image, box), self.img_size, self.crop)

    def batch(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Sequence[float] | None] | None = None,
    ) -> np.ndarray:
        """:meth:`pixels` of each image (with its box) stacked: uint8 ``[B, 3, S, S]``."""
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} face boxes.")
        out = np.empty((len(images), 3, self.img_size, self.img_size), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = self.pixels(image, None if boxes is None else boxes[i])
        return out

    @overload
    def normalize(self, batch: np.ndarray) -> np.ndarray: ...
    @overload
    def normalize(self, batch: torch.Tensor) -> torch.Tensor: ...
    def normalize(self, batch: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """uint8 (or [0, 1] float) ``[B, 3, S, S]`` -> normalised float32, as the model wants.

        A numpy array gives a numpy array (no torch needed); a torch tensor gives a tensor on
        its own device.
        """
        if isinstance(batch, np.ndarray):
            return normalize_array(batch, self.mean, self.std)
        return normalize(batch, self.mean, self.std)


# A uniform [0, 1) sampler: rand(*shape) -> tensor on the batch's device.
_Rand = Callable[..., "torch.Tensor"]


class BatchAugment:
    """Random augmentation of a float ``[B, 3, H, W]`` batch in [0, 1], on its own device.

    Randomness comes from ``generator`` (a CPU ``torch.Generator``) so a run is reproducible
    and resumable whatever the device.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        cfg = self.cfg
        if not cfg.enabled:
            return x

        def rand(*shape: int) -> torch.Tensor:  # uniform [0, 1) on the CPU generator
            return torch.rand(*shape, generator=generator).to(x.device)

        if cfg.hflip or cfg.crop_scale or cfg.shift or cfg.rotation:
            x = self._affine(x, rand)
        if cfg.brightness:
            x = self._jitter(x, rand)
        if cfg.erasing:
            x = self._erase(x, rand)
        return x

    def _affine(self, x: torch.Tensor, rand: _Rand) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        cfg, b = self.cfg, x.shape[0]
        # -1 mirrors the sampling grid horizontally (a flip), +1 keeps it.
        flip = (rand(b) < 0.5).float() * 2 - 1 if cfg.hflip else torch.ones(b, device=x.device)
        zoom = 1.0 - rand(b) * cfg.crop_scale  # < 1 samples a smaller window = zoom in
        angle = (rand(b) * 2 - 1) * math.radians(cfg.rotation)
        tx = (rand(b) * 2 - 1) * cfg.shift * 2  # grid coordinates span 2 units
        ty = (rand(b) * 2 - 1) * cfg.shift * 2
        # The crop may also move within the slack the zoom leaves.
        tx = tx + (rand(b) * 2 - 1) * (1 - zoom)
        ty = ty + (rand(b) * 2 - 1) * (1 - zoom)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, tx], dim=1),
                torch.stack([sin * flip, cos, ty], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # 'border' repeats edge pixels instead of painting black corners on rotation.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor, rand: _Rand) -> torch.Tensor:
        s, b = self.cfg.brightness, x.shape[0]
        bright = 1 + (rand(b, 1, 1, 1) * 2 - 1) * s
        contrast = 1 + (rand(b, 1, 1, 1) * 2 - 1) * s
        saturation = 1 + (rand(b, 1, 1, 1) * 2 - 1) * s
        x = x * bright
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(
            dim=(2, 3), keepdim=True
        )
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - gray) * saturation + gray
        return x.clamp(0, 1)

    def _erase(self, x: torch.Tensor, rand: _Rand) -> torch.Tensor:
        import torch

        b, _, h, w = x.shape
        apply = rand(b) < self.cfg.erasing
        area = 0.02 + rand(b) * 0.2  # 2-22% of the image, as in random erasing
        aspect = torch.exp((rand(b) * 2 - 1) * math.log(3))
        eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
        ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
        y0 = rand(b) * (h - eh)
        x0 = rand(b) * (w - ew)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (
            (ys >= y0.view(b, 1, 1))
            & (ys < (y0 + eh).view(b, 1, 1))
            & (xs >= x0.view(b, 1, 1))
            & (xs < (x0 + ew).view(b, 1, 1))
            & apply.view(b, 1, 1)
        )
        noise = rand(b, 3, 1, 1)  # a flat random colour, like an occluding object
        return torch.where(inside.unsqueeze(1), noise.expand_as(x), x)
