"""Preprocessing and augmentation.

Preprocessing (per image, PIL): cut the model's crop box out of the image and resize it to a
square of ``img_size`` pixels, as uint8. Everything after that runs on whole batches of uint8
tensors ``[B, 3, S, S]`` on the training device: augmentation (one affine warp for flip, crop,
shift and rotation; colour jitter; random erasing) and normalisation. The same batched path
serves JPEG decoding and the prepared cache, so both train identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faceattr.config import AugmentConfig

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
    """RGB PIL image -> ``[3, S, S]`` uint8 array: the crop box, resized to ``img_size``."""
    box = crop_box(image.width, image.height, crop)
    # reducing_gap lets PIL decimate large images cheaply before the final filter.
    out = image.resize((img_size, img_size), Image.BILINEAR, box=box, reducing_gap=2.0)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0,1] float) ``[B, 3, H, W]`` -> normalised float32."""
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


class BatchAugment:
    """Random augmentation of a float ``[B, 3, H, W]`` batch in [0, 1], on its own device.

    Randomness comes from ``generator`` (a CPU ``torch.Generator``) so a run is reproducible
    and resumable whatever the device.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
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

    def _affine(self, x: torch.Tensor, rand) -> torch.Tensor:
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

    def _jitter(self, x: torch.Tensor, rand) -> torch.Tensor:
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

    def _erase(self, x: torch.Tensor, rand) -> torch.Tensor:
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
