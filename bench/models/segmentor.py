"""Segmentor = backbone + neck + decode head (+ auxiliary head), and its builder."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from bench.backbones.backbone import Backbone
from bench.models import heads as _heads  # noqa: F401  (registers the built-in heads)
from bench.models import necks as _necks  # noqa: F401  (registers the built-in necks)
from bench.models.layers import (
    convert_sync_norm,
    cross_entropy,
    pad_to_multiple,
    resize,
    upsample_logits,
)
from bench.registry import HEADS, NECKS


class Segmentor(nn.Module):
    """``forward(img)`` -> logits at the input's resolution; ``forward(img, label)`` -> losses.

    Training goes through ``forward`` (not only ``forward_train``) so that DDP and
    accelerate's autocast wrapper see the call.
    """

    def __init__(
        self,
        backbone: Backbone,
        neck: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        loss_norm: str = "all_pixels",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.aux_head = aux_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.loss_norm = loss_norm

    def _pyramid(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.backbone.features(img, self.neck.layers))

    def forward(self, img: torch.Tensor, label: torch.Tensor | None = None) -> Any:
        if label is not None:
            return self.forward_train(img, label)
        size = (img.shape[-2], img.shape[-1])
        pyramid = self._pyramid(pad_to_multiple(img, self.backbone.patch_size))
        return upsample_logits(self.head(pyramid), size, self.backbone.patch_size)

    def forward_train(self, img: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy (ignore 255, reduced by ``loss_norm``) of the decode head, plus
        ``aux_weight`` x the auxiliary's.

        Logits are upsampled to the label's resolution first, as mmseg does.
        """
        size = (img.shape[-2], img.shape[-1])
        pyramid = self._pyramid(pad_to_multiple(img, self.backbone.patch_size))
        losses = {"loss_decode": self._ce(self.head(pyramid), label, size)}
        total = losses["loss_decode"]
        if self.aux_head is not None:
            losses["loss_aux"] = self._ce(self.aux_head(pyramid), label, size)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses

    def _ce(
        self, logits: torch.Tensor, label: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        logits = resize(upsample_logits(logits, size, self.backbone.patch_size), label.shape[-2:])
        return cross_entropy(logits, label, self.ignore_index, self.loss_norm)


def freeze_unused_backbone(backbone: Backbone, layers: list[int]) -> list[str]:
    """Stop training what cannot affect the output: the final norm (neck features are
    read without it) and blocks after the deepest one read. DDP insists every trainable
    parameter gets a gradient, and AdamW's weight decay would still move them."""
    deepest = max(i % backbone.depth for i in layers)
    frozen = []
    for name, p in backbone.named_parameters():
        m = re.match(r"vit\.blocks\.(\d+)\.", name)
        if name.startswith("vit.norm.") or (m and int(m.group(1)) > deepest):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def build_segmentor(
    backbone: Backbone,
    num_classes: int,
    neck: str = "multilevel",
    head: str = "uperhead",
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    aux_head: str | None = None,
    aux_kwargs: dict[str, Any] | None = None,
    aux_loss_weight: float = 0.4,
    ignore_index: int = 255,
    loss_norm: str = "all_pixels",
) -> Segmentor:
    """Assemble from registry names and explicit kwargs; BN is synchronised only when
    torch.distributed runs several processes."""
    neck_mod = NECKS.get(neck)(backbone, **(neck_kwargs or {}))
    freeze_unused_backbone(backbone, neck_mod.layers)
    in_ch = list(neck_mod.out_channels)
    head_mod = HEADS.get(head)(in_ch, num_classes, **(head_kwargs or {}))
    aux_mod = None
    if aux_head is not None:
        aux_mod = HEADS.get(aux_head)(in_ch, num_classes, **(aux_kwargs or {}))
    model = Segmentor(
        backbone, neck_mod, head_mod, aux_mod, aux_loss_weight, ignore_index, loss_norm
    )
    return convert_sync_norm(model)
