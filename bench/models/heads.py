"""Decode heads: UPerNet, the auxiliary FCN, and the linear heads of the probes.

Contract: ``Head(in_channels: list[int], num_classes, **kwargs)``;
``forward(list of maps) -> logits`` at the resolution of the finest input map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.models.layers import ConvModule, resize
from bench.registry import HEADS


class UPerHead(nn.Module):
    """UPerNet: pyramid pooling on the coarsest level, top-down FPN, fused 3x3 bottleneck."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        top = in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(top, channels, 1))
            for s in pool_scales
        )
        self.ppm_bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, 1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, 1) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [resize(m(x), x.shape[-2:]) for m in self.ppm]
        return self.ppm_bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1], strict=True)]
        laterals.append(self._psp(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: ``num_convs`` 3x3 ConvModules on pyramid level ``in_index``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        in_index: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        c = list(in_channels)[in_index]
        convs = []
        for _ in range(num_convs):
            convs.append(ConvModule(c, channels, 3, 1))
            c = channels
        self.convs = nn.Sequential(*convs)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(c, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(feats[self.in_index])))


def concat_resized(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Upsample every map to the largest one and concatenate channels."""
    size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
    return torch.cat([resize(f, size) for f in feats], dim=1)


class LinearHead(nn.Module):
    """The probes' head: input maps resized to the largest and concatenated, one 1x1 conv."""

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.norm: nn.Module = nn.Identity()
        self.conv_seg = nn.Conv2d(sum(in_channels), num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.norm(concat_resized(feats)))


class BNLinearHead(LinearHead):
    """BatchNorm over the concatenated features, then the 1x1 conv (DINOv2-style)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.norm = nn.BatchNorm2d(sum(in_channels))


HEADS.register("uperhead", UPerHead)
HEADS.register("fcn", FCNHead)
HEADS.register("linear", LinearHead)
HEADS.register("bn_linear", BNLinearHead)
