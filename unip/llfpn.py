"""LL-FPN, UNIP's neck: the four-level pyramid built from the last block alone.

Registered with bench through the ``unipbench.necks`` entry point ``llfpn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.backbones.backbone import Backbone
from bench.models.necks import pyramid_branches


class LastLayerFPN(nn.Module):
    """out_indices [-1]*4: the last block's map, fetched once, feeds all four scales.

    ``layers`` is accepted because the segmentor passes every neck the protocol's block
    list; LL-FPN reads the last block whatever it says.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.layers = [backbone.depth - 1]
        self.out_channels = [backbone.embed_dim] * 4
        self.branches = pyramid_branches(backbone.embed_dim)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != 1:
            raise ValueError(f"LL-FPN expects the last block's map only, got {len(feats)} maps")
        return [branch(feats[0]) for branch in self.branches]
