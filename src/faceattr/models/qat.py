"""Quantization-aware training (``--qat``): int8 rounding simulated in the graph while a run
trains, placed as ``faceattr export --int8`` (ONNX Runtime's static QDQ quantization) will
quantize the model, so the weights learn to work after it.

Every ``nn.Conv2d`` and ``nn.Linear`` of the model is turned into a fake-quantized one:

- **its weight**, per output channel, int8, symmetric, from the current weights
  (``max |w| / 127``), which is the scale the export computes from the trained weights, so
  the int8 weights the export writes are the ones the run trained with. Folding a batch
  norm into the convolution (the export does) multiplies each output channel by one number,
  which scales that channel's scale with it: the rounded values do not change.
- **its input**, per tensor, uint8, affine, with a moving average of the minimum and maximum
  seen in training (``torch.ao.quantization.FakeQuantize`` with
  ``MovingAverageMinMaxObserver``); the average moves in training mode only, so validation
  and inference never move it.

The model files of a run save the plain weights (any backend runs them in fp32) and, in
``extra["qat"]``, each layer's input scale and zero point in the order the layers run;
``faceattr export --int8`` gives ONNX Runtime those scales for the layers' inputs instead of
calibrating them (:func:`input_overrides`). Layers of other classes (timm's ``Conv2dSame``,
for instance) are left in fp32 here and calibrated by the export as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QAT_KEY = "qat"  # ModelInfo.extra key of the learned input scales
_FAKE_QUANT = "input_fq"  # the submodule each fake-quantized layer holds


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to int8 per output channel (symmetric, -127..127), straight-through."""
    scale = w.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-8) / 127.0
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -127, 127)


def _input_fake_quant() -> nn.Module:
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        averaging_constant=0.01,
    )


class _FakeQuantized(nn.Module):
    """What the fake-quantized layers share: the input's quantizer, whose observer moves in
    training mode only (in eval mode its last scale and zero point are used as they are)."""

    input_fq: Any

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        fq = self.input_fq
        if self.training:
            return fq(x)  # observes, updates fq.scale and fq.zero_point, rounds
        return torch.fake_quantize_per_tensor_affine(x, fq.scale, fq.zero_point, 0, 255)


class QatConv2d(_FakeQuantized, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _fake_quant_weight(self.weight)
        return self._conv_forward(self._quant_input(x), weight, self.bias)


class QatLinear(_FakeQuantized, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), _fake_quant_weight(self.weight), self.bias)


_SWAPS: dict[type, type] = {nn.Conv2d: QatConv2d, nn.Linear: QatLinear}


def prepare_qat(model: nn.Module) -> tuple[int, int]:
    """Make ``model``'s ``nn.Conv2d`` and ``nn.Linear`` layers fake-quantized, in place (their
    weights stay the same tensors, so an optimizer made before or after sees them).
    Returns (layers fake-quantized, convolution/linear layers of other classes left as they
    are). Call it before the model is moved to its device and before an EMA copy is made."""
    done = other = 0
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.add_module(_FAKE_QUANT, _input_fake_quant())
            done += 1
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, _FakeQuantized):
            other += 1
    return done, other


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, _FakeQuantized) for m in model.modules())


def qat_extra(info: Any) -> dict[str, Any]:
    """The part of a ModelInfo's ``extra`` that says it was quantization-aware trained."""
    return {QAT_KEY: info.extra[QAT_KEY]} if QAT_KEY in info.extra else {}


def plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the fake quantizers' tensors: the weights of the plain model."""
    return {k: v for k, v in state.items() if _FAKE_QUANT not in k.split(".")}


@torch.no_grad()
def learned_scales(model: nn.Module, img_size: int) -> list[dict[str, Any]]:
    """Each fake-quantized layer's input scale and zero point, in the order one forward pass
    first runs them (how they are matched with the exported graph's Conv and Gemm nodes),
    with its name, kind and weight shape; [] for a model without them."""
    order: dict[str, dict[str, Any]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _FakeQuantized):

            def record(m: Any, _args: Any, name: str = name) -> None:
                order.setdefault(name, {
                    "layer": name,
                    "kind": "conv" if isinstance(m, nn.Conv2d) else "linear",
                    "weight_shape": list(m.weight.shape),
                    "scale": float(m.input_fq.scale.reshape(-1)[0]),
                    "zero_point": int(m.input_fq.zero_point.reshape(-1)[0]),
                })  # fmt: skip

            hooks.append(module.register_forward_pre_hook(record))
    if not hooks:
        return []
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, 3, img_size, img_size, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(order.values())


def _well_formed(layer: Any) -> bool:
    """One entry of ``extra["qat"]`` as :func:`learned_scales` writes it (model files are
    untrusted: anything else is not used)."""
    import math

    if not isinstance(layer, dict) or layer.get("kind") not in ("conv", "linear"):
        return False
    shape, scale, zero = layer.get("weight_shape"), layer.get("scale"), layer.get("zero_point")
    if not (isinstance(shape, list) and all(type(d) is int for d in shape)):
        return False
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        return False
    if not (math.isfinite(scale) and scale > 0):
        return False
    return type(zero) is int and 0 <= zero <= 255


def input_overrides(graph: Any, scales: Any) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime's ``TensorQuantOverrides`` for the inputs of the Conv and Gemm nodes of the
    ONNX ``graph``, matched in order with the layers of :func:`learned_scales`. Empty when the
    two do not line up (as many nodes as layers, each of the same kind and weight shape) or
    an entry is malformed: the export then calibrates every tensor itself."""
    import numpy as np

    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not isinstance(scales, list) or len(nodes) != len(scales):
        return {}
    if not all(_well_formed(layer) for layer in scales):
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for node, layer in zip(nodes, scales, strict=True):
        kind = "conv" if node.op_type == "Conv" else "linear"
        shape = weights.get(node.input[1])
        if node.op_type == "MatMul" and shape is not None:
            shape = shape[::-1]  # MatMul holds W transposed
        if kind != layer["kind"] or shape != tuple(layer["weight_shape"]):
            return {}
        if node.input[0] in out:  # one tensor feeding two layers: they must agree
            if out[node.input[0]][0]["scale"] != np.float32(layer["scale"]):
                return {}
            continue
        out[node.input[0]] = [{
            "scale": np.array(layer["scale"], dtype=np.float32),
            "zero_point": np.array(layer["zero_point"], dtype=np.uint8),
        }]  # fmt: skip
    return out
