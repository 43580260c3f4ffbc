"""What a model file says about itself: :class:`ModelInfo`, read without importing torch.

Both model formats carry the same JSON under the key ``"faceattr"``: a ``.safetensors`` file
in its header metadata, an ``.onnx`` file (from `faceattr export`) in its ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from faceattr import __version__
from faceattr.config import LIMITS, TTA_MODES, Limit
from faceattr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceattr.errors import ModelError

METADATA_KEY = "faceattr"
# Bumped only when a reader of the old layout would misread the new one.
FORMAT_VERSION = 1
# The most a model file may ask for before anything is built from it: more is no model
# faceattr writes, and building it could take all of the machine's memory.
MAX_ATTRIBUTES = 10_000
MAX_MEMBERS = 64


def check_tta(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`, else a UsageError listing them."""
    if mode not in TTA_MODES:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("test-time augmentation", str(mode), TTA_MODES)
    return mode


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
        """ModelError naming every field of the wrong type or outside its range, or that
        contradicts another (:func:`metadata_problems`)."""
        problems = metadata_problems(self.to_dict())
        if problems:
            raise invalid_metadata(problems, written=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from a dict, ignoring unknown keys (files from newer versions) and filling
        defaults for missing ones (files from older versions)."""
        if not isinstance(data, Mapping):
            raise invalid_metadata([f"it is a JSON {type(data).__name__}, not an object"])
        problems = metadata_problems(data)  # before any field is used
        if problems:
            raise invalid_metadata(problems)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    except (ValueError, RecursionError) as e:
        raise invalid_metadata([f"it is not a JSON object ({_short(str(e))})"], path) from e
    problems = metadata_problems(data)
    if problems:
        raise invalid_metadata(problems, path)
    return ModelInfo.from_dict(data)


def invalid_metadata(
    problems: list[str], path: Path | None = None, *, written: bool = False
) -> ModelError:
    """The error for metadata that breaks the schema: every problem, in one message (a file
    read, or with ``written`` an info about to be written)."""
    where = f"{path}: the" if path is not None else "The"
    return ModelError(
        f"{where} model's metadata is invalid: {'; '.join(problems)}.",
        None
        if written
        else "The file was not written by faceattr, or was edited since: use a model file "
        "`faceattr train` or `faceattr export` wrote, or the bundled model (`default`).",
    )


# --- the schema of the metadata -------------------------------------------------------------
# Every field's type and range, checked on the JSON as stored, before anything reads a field:
# a file's metadata is untrusted input (docs/formats.md lists the rules).

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,199}")  # an architecture, as timm spells it
_MAX_TEXT = 10_000  # characters of a free-text field (dataset, licence, version, date)
_FRACTION = Limit(0, 1)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _show(value: Any) -> str:
    """``value`` for a message: its repr, cut short (a hostile file may hold megabytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a number with more than 30 digits"
    if isinstance(value, (dict, list)):
        try:
            text = repr(value) if len(value) <= 8 else ""
        except RecursionError:
            text = ""
        if text and len(text) <= 60:
            return text
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)}"
    return _short(repr(value))


def _number_problem(name: str, value: Any, limit: Limit, *, whole: bool = False) -> str | None:
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        return f"{name} must be {kind} {limit.describe()}, got {_show(value)}"
    try:
        ok = limit.allows(value)
    except OverflowError:
        ok = False
    return None if ok else f"{name} must be {limit.describe()}, got {_show(value)}"


def _numbers_problem(
    name: str, value: Any, n: int, limit: Limit, *, nan_ok: bool = False
) -> str | None:
    """Why ``value`` is not a list of ``n`` numbers within ``limit`` (None: it is)."""
    if not isinstance(value, list) or len(value) != n:
        return f"{name} must be a list of {n} numbers, got {_show(value)}"
    for k, v in enumerate(value):
        if nan_ok and isinstance(v, float) and math.isnan(v):
            continue
        problem = _number_problem(f"{name}[{k}]", v, limit)
        if problem:
            return problem
    return None


def _text_problem(name: str, value: Any, *, optional: bool = False) -> str | None:
    if (value is None and optional) or (isinstance(value, str) and len(value) <= _MAX_TEXT):
        return None
    return f"{name} must be {'a text or null' if optional else 'a text'}, got {_show(value)}"


def _arch_problem(name: str, value: Any) -> str | None:
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return f"{name} must be an architecture name (letters, digits, _.:/+-), got {_show(value)}"


def _attribute_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ATTRIBUTES:
        return f"attributes must be a list of 1 to {MAX_ATTRIBUTES} names, got {_show(value)}"
    seen: set[str] = set()
    for k, name in enumerate(value):
        if not isinstance(name, str) or not 0 < len(name) <= 200 or not name.isprintable():
            return f"attributes[{k}] must be a printable name of 1-200 characters, got " + _show(
                name
            )
        if name in seen:
            return f"attributes must not repeat a name ({_short(name)!r} is there twice)"
        seen.add(name)
    return None


def _crop_problem(value: Any) -> str | None:
    problem = _numbers_problem("crop", value, 4, _FRACTION)
    if problem is None and not (value[0] < value[2] and value[1] < value[3]):
        return f"crop (left, top, right, bottom) needs left < right and top < bottom, got {value}"
    return problem


# What a setting of the model (top level or an ensemble member's) must be, by field.
_SETTINGS: dict[str, Callable[[str, Any], str | None]] = {
    "arch": _arch_problem,
    "num_features": lambda n, v: _number_problem(n, v, LIMITS["model.num_features"], whole=True),
    "dropout": lambda n, v: _number_problem(n, v, LIMITS["model.dropout"]),
    "img_size": lambda n, v: _number_problem(n, v, LIMITS["data.img_size"], whole=True),
    "mean": lambda n, v: _numbers_problem(n, v, 3, Limit()),
    "std": lambda n, v: _numbers_problem(n, v, 3, Limit(0, low_open=True)),
    "tta": lambda n, v: (
        None if v in TTA_MODES else f"{n} must be one of {', '.join(TTA_MODES)}, got {_show(v)}"
    ),
    "dataset": _text_problem,
    "faceattr_version": _text_problem,
    "created": _text_problem,
}


def metadata_problems(data: Mapping[str, Any]) -> list[str]:
    """Every way the metadata ``data`` (a model file's ``"faceattr"`` JSON, as stored) breaks
    the schema: a field of the wrong type or outside its range (:data:`faceattr.config.LIMITS`
    where a setting has one), or lists that disagree with the attributes. Unknown keys are
    allowed (files of newer versions); missing ones other than ``arch`` and ``attributes``
    take their defaults."""
    problems: list[str | None] = [
        f"{k} is missing" for k in ("arch", "attributes") if k not in data
    ]
    for name, check in _SETTINGS.items():
        if name in data:
            problems.append(check(name, data[name]))
    attributes = data.get("attributes")
    if "attributes" in data:
        problems.append(_attribute_problem(attributes))
    a = len(attributes) if isinstance(attributes, list) else 0
    if "crop" in data:
        problems.append(_crop_problem(data["crop"]))
    if data.get("thresholds") is not None:
        problems.append(_numbers_problem("thresholds", data["thresholds"], a, _FRACTION))
    if data.get("train_positive_rates") is not None:
        problems.append(_numbers_problem("train_positive_rates", data["train_positive_rates"],
                                         a, _FRACTION, nan_ok=True))  # fmt: skip
    problems.append(_text_problem("license", data.get("license"), optional=True))
    if not isinstance(data.get("extra", {}), dict):
        problems.append(f"extra must be an object, got {_show(data['extra'])}")
    problems += _member_problems(data.get("arch"), data.get("members"))
    return [p for p in problems if p]


def _member_problems(arch: Any, members: Any) -> list[str]:
    if arch != "ensemble":
        return [] if members is None else ["members are set but arch is not 'ensemble'"]
    if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
        return [f"an ensemble needs a list of two or more members (at most {MAX_MEMBERS})"]
    problems: list[str | None] = []
    for k, m in enumerate(members):
        if not isinstance(m, dict):
            problems.append(f"member {k} is not an object")
            continue
        lacking = [f for f in ("arch", "img_size", "mean", "std") if f not in m]
        if lacking:
            problems.append(f"member {k} lacks {', '.join(lacking)}")
        elif m["arch"] == "ensemble":
            problems.append(f"member {k} is itself an ensemble")
        problems += [check(f"member {k} {name}", m[name]) for name, check in _SETTINGS.items()
                     if name in m]  # fmt: skip
        if not isinstance(m.get("source", {}), dict):
            problems.append(f"member {k} source must be an object, got {_show(m['source'])}")
    return [p for p in problems if p]
