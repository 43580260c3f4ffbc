"""CelebNet: a small from-scratch CNN for face crops, fast enough to train on a laptop CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Four poolings halve the input four times: at 32 px the last map is 2x2, still poolable.
CELEBNET_MIN_SIZE = 32


class ConvBlock(nn.Sequential):
    """``convs`` x (3x3 conv -> BatchNorm -> ReLU) followed by a 2x2 max-pool (halves H, W)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 1) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            # No conv bias: the BatchNorm that follows has its own shift.
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1,
                          bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]  # fmt: skip
        layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class CelebNet(nn.Module):
    """Conv/BN/ReLU/max-pool stages and global average pooling: [B, 3, H, W] -> [B, C_last].

    Works at any input size >= 32 px because the pooling at the end is global.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        convs_per_stage: Sequence[int] = (1, 1, 2, 2),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != len(convs_per_stage):
            raise ValueError("channels and convs_per_stage need the same length")
        stages = []
        prev = in_channels
        for ch, n in zip(channels, convs_per_stage, strict=True):
            stages.append(ConvBlock(prev, ch, n))
            prev = ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = prev
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> pooled features [B, num_features]."""
        return torch.flatten(self.pool(self.stages(x)), 1)
