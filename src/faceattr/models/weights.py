"""Import backbone weights from a local file (``--weights FILE``), e.g. offline ImageNet weights.

Accepted: torchvision ``.pth`` files, timm / Hugging Face ``pytorch_model.bin`` or
``model.safetensors`` files, checkpoints wrapping a state dict under ``state_dict`` / ``model``
/ ``model_state_dict``, and faceattr model files (their ``backbone.*`` part). Names are
matched after stripping wrapper prefixes; a file made by the other library for the same
network (torchvision <-> timm, or the EfficientNet-PyTorch layout) is mapped tensor by tensor
in order when the ordered list of shapes is identical. Nothing is unpickled beyond tensors
(``torch.load(weights_only=True)``).
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


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did; names are the backbone's own tensor names."""

    path: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    dropped: list[str] = field(default_factory=list)  # source classifier tensors, by design
    method: str = "name"  # "name": matched by name; "order": mapped in order by shape

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing)
        how = "by name" if self.method == "name" else "in order (names differ, shapes match)"
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
            "Pass an existing .pth/.pt/.bin or .safetensors file with --weights.",
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


def _shape_error(path: Path, arch: str, bad: list[tuple[str, tuple, tuple]]) -> ModelError:
    listed = "; ".join(f"{n}: file {fs}, model {ms}" for n, fs, ms in bad[:3])
    return ModelError(
        f"{len(bad)} tensors in {path.name} have other shapes than the {arch} backbone: {listed}.",
        "The file is for a different architecture or variant; pass the --arch it was made "
        "for (e.g. mobilenet_v2 for torchvision's mobilenet_v2-b0353104.pth).",
    )


def load_backbone_weights(model: AttributeModel, path: str | os.PathLike) -> LoadReport:
    """Copy the tensors of a weight file into ``model.backbone``; the head is untouched.

    Raises ModelError when shapes disagree or nothing could be matched.
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
    by_name = all(k in cand for k in t_keys)
    same_order = len(t_keys) == len(s_keys) and all(
        target[a].shape == cand[b].shape for a, b in zip(t_keys, s_keys, strict=True)
    )

    if not by_name and same_order:
        mapped = dict(zip(t_keys, (cand[b] for b in s_keys), strict=True))
        t_nbt = [k for k in target if _nbt(k)]
        s_nbt = [k for k in cand if _nbt(k)]
        if len(t_nbt) == len(s_nbt):  # counters too, when both sides have them
            mapped.update(zip(t_nbt, (cand[b] for b in s_nbt), strict=True))
        method, unexpected = "order", []
    else:
        bad = [
            (k, tuple(v.shape), tuple(target[k].shape))
            for k, v in cand.items()
            if k in target and v.shape != target[k].shape
        ]
        if bad:
            raise _shape_error(p, model.arch, bad)
        mapped = {k: v for k, v in cand.items() if k in target}
        method = "name"
        unexpected = [k for k in cand if k not in target]

    if not any(not _nbt(k) for k in mapped):
        raise ModelError(
            f"None of the {len(raw)} tensors in {p.name} match the {model.arch} backbone "
            f"({len(t_keys)} tensors). File names look like {', '.join(s_keys[:3]) or '-'}; "
            f"the backbone expects {', '.join(t_keys[:3])}.",
            "The file is probably for another architecture: pass the --arch it was made for.",
        )
    missing = [k for k in t_keys if k not in mapped]
    with torch.no_grad():  # load_state_dict copies with a cast to each parameter's dtype
        model.backbone.load_state_dict(mapped, strict=False)
    loaded = [k for k in target if k in mapped and not _nbt(k)]
    return LoadReport(str(p), loaded, missing, unexpected, dropped, method)
