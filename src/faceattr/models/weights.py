"""Import backbone weights from a local file (``--weights FILE``), e.g. offline ImageNet weights.

Accepted: torchvision ``.pth`` files, timm / Hugging Face ``pytorch_model.bin`` or
``model.safetensors`` files, checkpoints wrapping a state dict under ``state_dict`` / ``model``
/ ``model_state_dict``, and faceattr model files (their ``backbone.*`` part). Names are
matched after stripping wrapper prefixes, and at most :data:`MAX_MISSING_SHARE` of the
backbone may be missing from the file. Tensors are mapped by position instead of by name only
for a file made by another library for the same network, recognised by its names' layout
(EfficientNet-PyTorch -> timm, torchvision <-> timm) and an identical ordered list of shapes,
or when the caller asks for it (``by_order=True``, ``--weights-by-order``). Nothing is
unpickled beyond tensors (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from faceattr.errors import ModelError
from faceattr.models.head import AttributeModel

# Wrapper prefixes added by DataParallel/DDP, Lightning-style modules, torch.compile, faceattr.
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
# Top-level names of source classifiers (timm, torchvision, EfficientNet-PyTorch, Cadene);
# their tensors are dropped unless the backbone itself has a tensor of that name.
CLASSIFIER_ROOTS = frozenset(
    {"fc", "_fc", "classifier", "head", "heads", "head_dist", "last_linear", "logits",
     "AuxLogits", "aux1", "aux2"}
)  # fmt: skip
# Checkpoint keys whose value is the actual state dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# At most this share of the backbone's tensors (num_batches_tracked counters aside) may be
# missing from a file matched by name. The files faceattr is used with (torchvision's
# mobilenet_v2-b0353104.pth, timm / Hugging Face files, faceattr model files) miss none,
# while a file for a shallower variant of the same network misses far more: efficientnet_lite0
# into efficientnet_lite1 23%, efficientnet_b0 into efficientnet_b1 29%, resnet101 into
# resnet152 33%, resnet50 into resnet101 49%. 5% leaves room for a few tensors that another
# version of a library did not save, and fails every one of those.
MAX_MISSING_SHARE = 0.05

# Name layouts (see _layout) and the pairs that map in order: another library's build of the
# same network, whose tensors come in the same order as the target's.
EFFNET_PYTORCH, TIMM, TORCHVISION = "efficientnet-pytorch", "timm", "torchvision"
_EFFNET_PYTORCH_ROOTS = frozenset({"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1"})
_TIMM_EFFNET_ROOTS = frozenset({"conv_stem", "bn1", "blocks", "conv_head", "bn2"})
_TORCHVISION_ROOTS = frozenset({"features", "layers"})  # layers: MNASNet
ORDER_METHODS: dict[tuple[str | None, str | None], str] = {
    (EFFNET_PYTORCH, TIMM): f"order:{EFFNET_PYTORCH}->{TIMM}",
    (TORCHVISION, TIMM): f"order:{TORCHVISION}->{TIMM}",
    (TIMM, TORCHVISION): f"order:{TIMM}->{TORCHVISION}",
}
ORDER_REQUESTED = "order:requested"


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did; names are the backbone's own tensor names."""

    path: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    dropped: list[str] = field(default_factory=list)  # source classifier tensors, by design
    # "name": matched by name; "order:SOURCE->TARGET": a recognised layout of another library
    # mapped in order (a value of ORDER_METHODS); "order:requested": mapped in order because
    # the caller asked for it (by_order=True).
    method: str = "name"

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing)
        if self.method == "name":
            how = "by name"
        elif self.method == ORDER_REQUESTED:
            how = "in order as requested (names differ, shapes match)"
        else:
            layouts = self.method.split(":", 1)[1].replace("->", " layout to ")
            how = f"in order ({layouts}; names differ, shapes match)"
        return (
            f"Loaded {len(self.loaded)}/{total} backbone tensors from {Path(self.path).name} "
            f"{how}; {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.dropped)} classifier tensors dropped."
        )


def _is_safetensors(path: Path) -> bool:
    """Sniff the format: 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    for _ in range(4):  # nested wrappers such as {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt/.bin or .safetensors weight file (name -> tensor, in order)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(
            f"Weights file not found: {p}",
            "Pass an existing .pth/.pt/.bin or .safetensors file as `model.weights=FILE`.",
        )
    if _is_safetensors(p):
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:
            raise ModelError(f"Cannot read safetensors file {p}: {e}") from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Unsupported global" in text:  # a pickled class, function, numpy array...
            raise ModelError(
                f"{p} holds Python objects besides tensors; faceattr does not unpickle them.",
                "Re-save just the weights, e.g. torch.save(model.state_dict(), 'w.pth'), or "
                "use a .safetensors file.",
            ) from e
        raise ModelError(
            f"{p} is not a PyTorch weights file or a safetensors file: {e}",
            "Pass a .pth/.pt/.bin file saved by torch.save or a .safetensors file.",
        ) from e
    tensors = _unwrap(obj)
    if not tensors:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ModelError(
            f"No tensors found in {p} (top level: {keys}).",
            f"Expected a state dict, or one wrapped under one of: {', '.join(WRAPPER_KEYS)}.",
        )
    return tensors


def _nbt(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def _layout(names: list[str]) -> str | None:
    """The library layout that tensor names (classifier dropped) follow, where recognised.

    EfficientNet-PyTorch: ``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn0``, ...;
    timm's EfficientNet/MobileNet family: ``conv_stem``, ``blocks.N.M...``, ``bn1``, ...;
    torchvision's single Sequential stack: ``features.N...`` (MNASNet: ``layers.N...``).
    """
    roots = {n.split(".", 1)[0] for n in names}
    if roots <= _EFFNET_PYTORCH_ROOTS and {"_conv_stem", "_blocks"} <= roots:
        return EFFNET_PYTORCH
    if roots <= _TIMM_EFFNET_ROOTS and {"conv_stem", "blocks"} <= roots:
        return TIMM
    numbered = all(len(parts) > 2 and parts[1].isdigit() for parts in (n.split(".") for n in names))
    if len(roots) == 1 and roots <= _TORCHVISION_ROOTS and numbered:
        return TORCHVISION
    return None


def _normalise_names(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes from each name until it is one of the target's names (or none
    is left to strip). First occurrence wins when two names collapse to one."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        key = name
        while key not in target:
            prefix = next((p for p in STRIP_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                break
            key = key[len(prefix) :]
        out.setdefault(key, tensor)
    return out


def _shape_error(
    path: Path, arch: str, bad: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
) -> ModelError:
    listed = "; ".join(f"{n}: file {fs}, model {ms}" for n, fs, ms in bad[:3])
    return ModelError(
        f"{len(bad)} tensors in {path.name} have other shapes than the {arch} backbone: {listed}.",
        "The file is for a different architecture or variant; set `model.arch=ARCH` to the one "
        "it was made for (e.g. mobilenet_v2 for torchvision's mobilenet_v2-b0353104.pth).",
    )


def _missing_error(
    path: Path,
    arch: str,
    loaded: int,
    missing: list[str],
    source_names: list[str],
    *,
    same_order: bool,
    by_order: bool,
) -> ModelError:
    """Too few of the backbone's tensors are in the file (none, or more than allowed)."""
    total = loaded + len(missing)
    if loaded == 0:
        msg = (
            f"None of the {len(source_names)} tensors in {path.name} match the {arch} backbone "
            f"({total} tensors). File names look like {', '.join(source_names[:3]) or '-'}; "
            f"the backbone expects {', '.join(missing[:3])}."
        )
        cause = "The file is probably for another architecture"
    else:
        msg = (
            f"Only {loaded}/{total} tensors of the {arch} backbone are in {path.name}: "
            f"{len(missing)} missing ({len(missing) / total:.0%}, more than the "
            f"{MAX_MISSING_SHARE:.0%} allowed), e.g. {', '.join(missing[:3])}."
        )
        cause = (
            "The file is probably for another variant of the network (e.g. a resnet50 file "
            'with `model.arch="resnet101"`)'
        )
    if same_order:  # only reached when the layout is unrecognised and by_order is off
        hint = (
            f"The file's {len(source_names)} tensors line up with the backbone's in order, "
            "under names in a layout faceattr does not recognise. If it is a file for this "
            "very network, map it by position with `model.weights_by_order=True`; otherwise "
            "set `model.arch=ARCH` to the one it was made for."
        )
    else:
        hint = f"{cause}: set `model.arch=ARCH` to the one it was made for."
        if by_order:
            hint += (
                " Mapping by position (`model.weights_by_order=True`) is not possible either: the "
                f"file's {len(source_names)} tensors do not line up with the backbone's "
                f"{total} by shape."
            )
    return ModelError(msg, hint)


def load_backbone_weights(
    model: AttributeModel, path: str | os.PathLike[str], *, by_order: bool = False
) -> LoadReport:
    """Copy the tensors of a weight file into ``model.backbone``; the head is untouched.

    Tensors are matched by name; by position only for a recognised layout of another library
    (see the module docstring) or, for any file whose ordered shapes equal the backbone's,
    with ``by_order=True``. Raises ModelError when shapes disagree or more than
    :data:`MAX_MISSING_SHARE` of the backbone's tensors are not in the file.
    """
    p = Path(path).expanduser()
    raw = read_weights_file(p)
    target = model.backbone.state_dict()
    source = _normalise_names(raw, target)
    dropped = [k for k in source if k not in target and k.split(".", 1)[0] in CLASSIFIER_ROOTS]
    dropped_set = set(dropped)
    cand = {k: v for k, v in source.items() if k not in dropped_set}

    t_keys = [k for k in target if not _nbt(k)]
    s_keys = [k for k in cand if not _nbt(k)]
    all_named = all(k in cand for k in t_keys)
    same_order = len(t_keys) == len(s_keys) and all(
        target[a].shape == cand[b].shape for a, b in zip(t_keys, s_keys, strict=True)
    )
    method = "name"
    if not all_named and same_order:
        method = ORDER_METHODS.get((_layout(s_keys), _layout(t_keys)), "name")
        if method == "name" and by_order:
            method = ORDER_REQUESTED

    if method != "name":
        mapped = dict(zip(t_keys, (cand[b] for b in s_keys), strict=True))
        t_nbt = [k for k in target if _nbt(k)]
        s_nbt = [k for k in cand if _nbt(k)]
        if len(t_nbt) == len(s_nbt):  # counters too, when both sides have them
            mapped.update(zip(t_nbt, (cand[b] for b in s_nbt), strict=True))
        unexpected: list[str] = []
    else:
        bad = [
            (k, tuple(v.shape), tuple(target[k].shape))
            for k, v in cand.items()
            if k in target and v.shape != target[k].shape
        ]
        if bad:
            raise _shape_error(p, model.arch, bad)
        mapped = {k: v for k, v in cand.items() if k in target}
        unexpected = [k for k in cand if k not in target]

    loaded = [k for k in t_keys if k in mapped]
    missing = [k for k in t_keys if k not in mapped]
    if not loaded or len(missing) > MAX_MISSING_SHARE * len(t_keys):
        raise _missing_error(
            p, model.arch, len(loaded), missing, s_keys, same_order=same_order, by_order=by_order
        )
    with torch.no_grad():  # load_state_dict copies with a cast to each parameter's dtype
        model.backbone.load_state_dict(mapped, strict=False)
    return LoadReport(str(p), loaded, missing, unexpected, dropped, method)
