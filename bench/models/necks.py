"""Necks: ViT block outputs (all at 1/16) -> a four-level pyramid (1/4, 1/8, 1/16, 1/32).

Contract for every neck, built-in or plug-in: constructed as ``Neck(backbone, **kwargs)``;
``layers`` lists the block indices the segmentor must fetch; ``out_channels`` the channels
of the four outputs; ``forward(list of maps in `layers` order) -> list of 4 maps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.backbones.backbone import Backbone
from bench.registry import NECKS


def pyramid_branches(dim: int) -> nn.ModuleList:
    """BEiT/MAE-style scales: x4 (two transposed convs, BN+GELU between), x2, x1, x0.5."""
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                nn.BatchNorm2d(dim),
                nn.GELU(),
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            ),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ]
    )


class MultiLevelNeck(nn.Module):
    """The baselines' neck: blocks ``layers`` (paper: [3,5,7,11]) -> one scale each."""

    def __init__(self, backbone: Backbone, layers: Sequence[int] = (3, 5, 7, 11)) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"the multi-level neck needs 4 blocks, got {list(layers)}")
        for i in layers:
            if not -backbone.depth <= i < backbone.depth:
                raise ValueError(
                    f"neck block {i} is out of range for a backbone of depth {backbone.depth}"
                )
        self.layers = [int(i) for i in layers]
        self.out_channels = [backbone.embed_dim] * 4
        self.branches = pyramid_branches(backbone.embed_dim)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != 4:
            raise ValueError(f"expected 4 feature maps, got {len(feats)}")
        return [branch(f) for branch, f in zip(self.branches, feats, strict=True)]


NECKS.register("multilevel", MultiLevelNeck)
