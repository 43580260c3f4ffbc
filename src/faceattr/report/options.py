"""What a report includes, and the caps that keep building it fast on a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faceattr.subgroups import SubgroupSpec

MAX_GALLERY = 48  # images in the error gallery, at most
MAX_GRADCAM_IMAGES = 12
MAX_GRADCAM_ATTRIBUTES = 4


@dataclass(frozen=True)
class ReportOptions:
    """What to include and the caps that keep report generation fast on a CPU."""

    groups: tuple[str, ...] = ("Male", "Young")  # subgroup attributes
    gap_threshold: float = 0.05  # flag subgroup accuracy gaps of this size (fraction)
    min_group_count: int = 20  # ... when each side has at least this many labels
    gallery: int = 12  # images in the error gallery (0 = none; at most MAX_GALLERY)
    gradcam_images: int = 6  # images with Grad-CAM maps (0 = none; at most MAX_GRADCAM_IMAGES)
    gradcam_attributes: tuple[str, ...] | None = None  # None = picked automatically
    device: str = "cpu"  # where Grad-CAM runs
    subgroups: tuple[SubgroupSpec, ...] = ()  # --subgroups: a target's accuracy within groups
