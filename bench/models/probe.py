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

from bench.backbones.backbone import Backbone
from bench.models import heads as _heads  # noqa: F401  (registers the built-in heads)
from bench.models.heads import concat_resized
from bench.models.layers import (
    convert_sync_norm,
    cross_entropy,
    pad_to_multiple,
    resize,
    upsample_logits,
)
from bench.models.matmul_upsample import upsample_logits_matmul
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
    """Heads ``i`` reads the feature maps ``inputs[i]`` (indices into the feature list);
    ``head`` is one HEADS name for all, or one per head.

    ``same_init``: every head is drawn from the RNG state the first one starts from, and
    the global RNG is left where building one head leaves it, so each head (and whatever
    is drawn afterwards) is exactly what a one-head probe built under the same seed gets.
    Otherwise the heads are drawn one after another (layer-wise probing's heads).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        inputs: Sequence[Sequence[int]],
        num_classes: int,
        head: str | Sequence[str] = "linear",
        same_init: bool = False,
    ) -> None:
        super().__init__()
        self.inputs = [tuple(int(j) for j in sel) for sel in inputs]
        self.num_classes = num_classes
        kinds = [head] * len(self.inputs) if isinstance(head, str) else list(head)
        if len(kinds) != len(self.inputs):
            raise ValueError(f"{len(kinds)} head types for {len(self.inputs)} heads")
        heads = []
        start = torch.get_rng_state()
        for sel, kind in zip(self.inputs, kinds, strict=True):
            if same_init:
                torch.set_rng_state(start)
            heads.append(HEADS.get(kind)([in_channels[j] for j in sel], num_classes))
        self.heads = nn.ModuleList(heads)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # Heads reading the same maps share one resize+concat (the lr sweep's case).
        joined: dict[tuple[int, ...], torch.Tensor] = {}
        out = []
        for sel, head in zip(self.inputs, self.heads, strict=True):
            if sel not in joined:
                joined[sel] = concat_resized([feats[j] for j in sel])
            out.append(head([joined[sel]]))
        return out


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        # GradScaler multiplies the loss by a (1,)-shaped fp32 scale: the same product.
        return (grad * scale).reshape(grad.shape), None


def scale_grad(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale`` on the way back."""
    return _ScaleGrad.apply(x, scale)


def probe_losses(
    logits: Sequence[torch.Tensor],
    label: torch.Tensor,
    size: tuple[int, int],
    patch: int,
    ignore_index: int = 255,
    loss_norm: str = "all_pixels",
    grad_scales: Sequence[torch.Tensor] | None = None,
    matmul_upsample: bool = False,
) -> dict[str, Any]:
    """Per-head cross-entropy at the label's resolution, and their sum as ``loss``.

    ``grad_scales``: head k's loss gradient is multiplied by ``grad_scales[k]`` (fp16
    loss scaling per head, :mod:`bench.protocols.head_scaler`); the values are unchanged.
    ``matmul_upsample``: logits upsampled by matrix products, equal to float rounding and
    cheaper to back-propagate (:mod:`bench.models.matmul_upsample`)."""
    upsample = upsample_logits_matmul if matmul_upsample else upsample_logits
    per_head = [
        cross_entropy(
            resize(upsample(lg, size, patch), label.shape[-2:]),
            label,
            ignore_index,
            loss_norm,
        )
        for lg in logits
    ]
    if grad_scales is not None:
        per_head = [scale_grad(x, s) for x, s in zip(per_head, grad_scales, strict=True)]
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
        matmul_upsample: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        self.heads = heads
        self.ignore_index = ignore_index
        self.loss_norm = loss_norm
        self.matmul_upsample = matmul_upsample  # training loss only; evaluation unchanged

    @property
    def num_heads(self) -> int:
        return len(self.heads.heads)

    def forward(
        self,
        img: torch.Tensor,
        label: torch.Tensor | None = None,
        grad_scales: Sequence[torch.Tensor] | None = None,
    ) -> Any:
        size = (img.shape[-2], img.shape[-1])
        logits = self.heads(self.features(img))
        if label is not None:
            return probe_losses(
                logits, label, size, self.features.patch_size, self.ignore_index,
                self.loss_norm, grad_scales, self.matmul_upsample,
            )
        return torch.cat(
            [upsample_logits(lg, size, self.features.patch_size) for lg in logits], dim=1
        )


def build_probe(
    backbone: Backbone,
    layers: Sequence[int],
    inputs: Sequence[Sequence[int]],
    num_classes: int,
    head: str | Sequence[str] = "linear",
    ignore_index: int = 255,
    loss_norm: str = "all_pixels",
    same_init: bool = False,
    matmul_upsample: bool = False,
) -> Probe:
    """A probe on blocks ``layers``; head i reads positions ``inputs[i]`` of that list.

    ``same_init``: every head starts from the weights a lone head would (an lr sweep).
    ``matmul_upsample``: the training loss upsamples by matrix products (a sweep's heads:
    the same numbers to float rounding, at about half the per-head cost on CPU)."""
    feats = FrozenFeatures(backbone, layers)
    heads = ProbeHeads([backbone.embed_dim] * len(layers), inputs, num_classes, head,
                       same_init)
    return Probe(feats, convert_sync_norm(heads), ignore_index, loss_norm, matmul_upsample)
