"""What a model file says about itself: :class:`ModelInfo`, read without importing torch.

Both model formats carry the same JSON under the key ``"faceattr"``: a ``.safetensors`` file
in its header metadata, an ``.onnx`` file (from `faceattr export`) in its ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from faceattr import __version__
from faceattr.config import TTA_MODES
from faceattr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceattr.errors import ModelError

METADATA_KEY = "faceattr"
# Bumped only when a reader of the old layout would misread the new one.
FORMAT_VERSION = 1


def check_tta(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`, else a UsageError listing them."""
    if mode not in TTA_MODES:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("test-time augmentation", str(mode), TTA_MODES)
    return mode


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelInfo:
    """Everything besides the weights that a model file needs to rebuild and use the model.

    ``crop`` is (left, top, right, bottom) as fractions of the image width/height, applied
    before resizing to ``img_size``; ``mean``/``std`` normalise RGB in [0, 1].
    ``thresholds`` are per-attribute decision thresholds on probabilities (None: 0.5).
    """

    arch: str
    attributes: list[str]
    num_features: int = 512
    dropout: float = 0.2
    img_size: int = 224
    crop: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 1.0])
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    thresholds: list[float] | None = None
    tta: str = "none"  # test-time augmentation in eval mode: none | flip
    train_positive_rates: list[float] | None = None
    dataset: str = "unknown"
    license: str | None = None
    faceattr_version: str = __version__
    created: str = field(default_factory=_now)
    extra: dict[str, Any] = field(default_factory=dict)
    # arch "ensemble" only: each member's settings (faceattr.models.ensemble.MEMBER_FIELDS)
    # and its source file's name and digest, in input order.
    members: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # Normalise tuples / numpy values so the JSON round trip is exact.
        self.attributes = [str(a) for a in self.attributes]
        self.crop = [float(v) for v in self.crop]
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        if self.thresholds is not None:
            self.thresholds = [float(v) for v in self.thresholds]
        if self.train_positive_rates is not None:
            self.train_positive_rates = [float(v) for v in self.train_positive_rates]

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def validate(self) -> None:
        """ModelError when the fields contradict each other."""
        a = len(self.attributes)
        problems = []
        if a == 0:
            problems.append("no attributes")
        if len(self.crop) != 4:
            problems.append(f"crop has {len(self.crop)} values, expected 4")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean/std need 3 values (RGB)")
        if self.tta not in TTA_MODES:
            problems.append(f"tta is {self.tta!r}, expected one of {TTA_MODES}")
        for name in ("thresholds", "train_positive_rates"):
            values = getattr(self, name)
            if values is not None and len(values) != a:
                problems.append(f"{name} has {len(values)} values for {a} attributes")
        problems += self._member_problems()
        if problems:
            raise ModelError(f"Invalid model info for arch {self.arch!r}: {'; '.join(problems)}.")

    def _member_problems(self) -> list[str]:
        if self.arch != "ensemble":
            return [] if self.members is None else ["members are set but arch is not 'ensemble'"]
        members = self.members
        if not isinstance(members, list) or len(members) < 2:
            return ["an ensemble needs a list of two or more members"]
        problems = []
        for k, m in enumerate(members):
            if not isinstance(m, dict):
                problems.append(f"member {k} is not an object")
                continue
            lacking = [f for f in ("arch", "img_size", "mean", "std") if f not in m]
            if lacking:
                problems.append(f"member {k} lacks {', '.join(lacking)}")
            elif m["arch"] == "ensemble":
                problems.append(f"member {k} is itself an ensemble")
            elif not (isinstance(m["img_size"], int) and m["img_size"] > 0):
                problems.append(f"member {k} has img_size {m['img_size']!r}")
            elif not all(
                isinstance(m[k], list) and len(m[k]) == 3 and all(_is_number(v) for v in m[k])
                for k in ("mean", "std")
            ):
                problems.append(f"member {k}: mean/std need 3 values (RGB)")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from a dict, ignoring unknown keys (files from newer versions) and filling
        defaults for missing ones (files from older versions)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("arch", "attributes") if k not in kwargs]
        if missing:
            raise ModelError(f"Model info lacks required field(s): {', '.join(missing)}.")
        return cls(**kwargs)


def info_from_metadata(metadata: dict[str, str], path: Path, kind: str) -> ModelInfo:
    """The validated :class:`ModelInfo` in a model file's string metadata (``kind`` names the
    format in messages: "a safetensors file", "an ONNX file")."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        how = (
            "Export one with `faceattr export RUN --format onnx`"
            if kind.endswith("ONNX file")
            else "Train one with `faceattr train`"
        )
        raise ModelError(
            f"{path} is {kind} but not a faceattr model file (no {METADATA_KEY!r} metadata).",
            f"{how}, or use the bundled model (`default`). To start training from a backbone's "
            "weights file, pass it as `model.weights=FILE` instead.",
        )
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ModelError(f"{path}: the faceattr metadata is not valid JSON ({e}).") from e
    info = ModelInfo.from_dict(data)
    info.validate()
    return info
