"""Exponential moving average (EMA) of a model's weights, for evaluation and saving.

The averaged copy smooths the last few hundred optimiser steps; on small datasets it is a
cheap, reliable gain (the best epoch of a run is then judged and saved on the EMA weights).
"""

from __future__ import annotations

import copy

import torch


class ModelEma:
    """Keeps ``ema = d * ema + (1 - d) * weights`` after every optimiser step.

    ``decay`` is the long-run ``d``; early on the effective decay is
    ``min(decay, (1 + n) / (4 + n))`` at update ``n``, an average over roughly the last third
    of the steps so far, so the initial weights fade out quickly. Buffers (BatchNorm running
    statistics) are copied, not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step towards ``model``, which must be the module this EMA was made from."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (4 + self.updates))
        # The copy has the same parameters and buffers in the same order.
        own: list[torch.Tensor] = list(self.module.parameters())
        new: list[torch.Tensor] = list(model.parameters())
        torch._foreach_mul_(own, d)
        torch._foreach_add_(own, new, alpha=1 - d)
        for target, value in zip(self.module.buffers(), model.buffers(), strict=True):
            target.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])
