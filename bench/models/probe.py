"""Probes: a frozen backbone read at some blocks, and linear heads trained on its features.

Several heads can be trained at once (an lr sweep, or one head per block): the backbone
runs once per batch, and each head's loss depends only on its own parameters, so summing
the losses trains every head exactly as if it were trained alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench.backbone import Backbone
from bench.models import heads as _heads  # noqa: F401  (registers the built-in heads)
from bench.models.heads import concat_resized
from bench.models.layers import (
    convert_sync_norm,
    cross_entropy,
    pad_to_multiple,
    resize,
    upsample_logits,
)
from bench.registry import HEADS


class FrozenFeatures(nn.Module):
    """Backbone frozen and kept in eval mode; block outputs without the final norm."""

    def __init__(self, backbone: Backbone, layers: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.backbone.requires_grad_(False)
        self.layers = [int(i) for i in layers]
        self.patch_size = backbone.patch_size

    def train(self, mode: bool = True) -> FrozenFeatures:
        # model.train() on the whole probe must not switch on drop path / dropout here.
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.features(pad_to_multiple(img, self.patch_size), self.layers)


class ProbeHeads(nn.Module):
    """Heads ``i`` reads the feature maps ``inputs[i]`` (indices into the feature list)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        inputs: Sequence[Sequence[int]],
        num_classes: int,
        head: str = "linear",
    ) -> None:
        super().__init__()
        self.inputs = [tuple(int(j) for j in sel) for sel in inputs]
        self.num_classes = num_classes
        cls = HEADS.get(head)
        self.heads = nn.ModuleList(
            cls([in_channels[j] for j in sel], num_classes) for sel in self.inputs
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # Heads reading the same maps share one resize+concat (the lr sweep's case).
        joined: dict[tuple[int, ...], torch.Tensor] = {}
        out = []
        for sel, head in zip(self.inputs, self.heads, strict=True):
            if sel not in joined:
                joined[sel] = concat_resized([feats[j] for j in sel])
            out.append(head([joined[sel]]))
        return out


def probe_losses(
    logits: Sequence[torch.Tensor],
    label: torch.Tensor,
    size: tuple[int, int],
    patch: int,
    ignore_index: int = 255,
    loss_norm: str = "all_pixels",
) -> dict[str, Any]:
    """Per-head cross-entropy at the label's resolution, and their sum as ``loss``."""
    per_head = [
        cross_entropy(
            resize(upsample_logits(lg, size, patch), label.shape[-2:]),
            label,
            ignore_index,
            loss_norm,
        )
        for lg in logits
    ]
    return {"loss": torch.stack(per_head).sum(), "per_head": torch.stack(per_head).detach()}


class Probe(nn.Module):
    """Frozen features + heads. ``forward(img)`` -> all heads' logits concatenated on
    channels (head-major) at the input's resolution; ``forward(img, label)`` -> losses."""

    def __init__(
        self,
        features: FrozenFeatures,
        heads: ProbeHeads,
        ignore_index: int = 255,
        loss_norm: str = "all_pixels",
    ) -> None:
        super().__init__()
        self.features = features
        self.heads = heads
        self.ignore_index = ignore_index
        self.loss_norm = loss_norm

    @property
    def num_heads(self) -> int:
        return len(self.heads.heads)

    def forward(self, img: torch.Tensor, label: torch.Tensor | None = None) -> Any:
        size = (img.shape[-2], img.shape[-1])
        logits = self.heads(self.features(img))
        if label is not None:
            return probe_losses(
                logits, label, size, self.features.patch_size, self.ignore_index, self.loss_norm
            )
        return torch.cat(
            [upsample_logits(lg, size, self.features.patch_size) for lg in logits], dim=1
        )


def build_probe(
    backbone: Backbone,
    layers: Sequence[int],
    inputs: Sequence[Sequence[int]],
    num_classes: int,
    head: str = "linear",
    ignore_index: int = 255,
    loss_norm: str = "all_pixels",
) -> Probe:
    """A probe on blocks ``layers``; head i reads positions ``inputs[i]`` of that list."""
    feats = FrozenFeatures(backbone, layers)
    heads = ProbeHeads([backbone.embed_dim] * len(layers), inputs, num_classes, head)
    return Probe(feats, convert_sync_norm(heads), ignore_index, loss_norm)
