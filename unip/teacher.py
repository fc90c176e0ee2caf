"""The NMI-HAD teacher: any adapter's backbone, frozen, run only up to the chosen layer."""

from __future__ import annotations

import torch
from torch import nn

from bench.backbones.backbone import Backbone


class AttentionTeacher(nn.Module):
    """Images -> pre-softmax attention logits (CLS included) of block ``layer`` (1-based).

    The blocks after ``layer`` are removed: they are never run and would only hold memory
    (a third of a ViT-L for MAE-L's layer 18).
    """

    def __init__(self, backbone: Backbone, layer: int) -> None:
        super().__init__()
        if not 1 <= layer <= backbone.depth:
            raise ValueError(
                f"teacher layer {layer} is outside 1..{backbone.depth} (1-based block index)"
            )
        self.layer = int(layer)
        self.heads = backbone.num_heads[layer - 1]
        backbone.vit.blocks = backbone.vit.blocks[:layer]
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> AttentionTeacher:
        # Frozen in eval mode for good: no dropout / drop path in the targets.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.attention(x, [self.layer - 1], logits=True)[0]
