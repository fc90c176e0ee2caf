"""The k-NN probe's run: build the memory bank, then segment the evaluation split by
retrieval, through the same inference (slide/whole) and metric code as the other
protocols. Nothing is trained; the backbone stays frozen in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.models.layers import pad_to_multiple, upsample_logits
from bench.protocols.context import RunContext
from plugins.knn_probe.bank import MemoryBank, build_bank, resolve_layer
from plugins.knn_probe.retrieval import knn_scores
from plugins.knn_probe.settings import KnnProbeSettings

# Query patches searched together: with `chunk` bank rows, the similarity matrix holds
# at most QUERY_BLOCK x chunk floats.
QUERY_BLOCK = 1024


class PatchFeatures(nn.Module):
    """The frozen backbone read at one block: ``B x D x H/p x W/p`` maps."""

    def __init__(self, backbone: nn.Module, layer: int, norm: bool) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.backbone.requires_grad_(False)
        self.layer = layer
        self.norm = norm

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(img, self.backbone.patch_size)
        return self.backbone.features(x, [self.layer], norm=self.norm)[0]


class KnnPredictor:
    """``images B x 3 x h x w -> class scores B x K x h x w``: each patch's k-NN vote,
    upsampled bilinearly (the evaluation takes the argmax at the label's resolution)."""

    def __init__(self, features: PatchFeatures, bank: MemoryBank, s: KnnProbeSettings) -> None:
        self.features = features
        self.bank = bank
        self.s = s

    @torch.no_grad()
    def patch_scores(self, img: torch.Tensor) -> torch.Tensor:
        """Class scores per patch, ``B x K x ceil(h/p) x ceil(w/p)``."""
        fmap = self.features(img)
        b, d, gh, gw = fmap.shape
        queries = fmap.flatten(2).transpose(1, 2).reshape(-1, d)
        s = self.s
        # Retrieval in float32 whatever the autocast around the backbone.
        with torch.autocast(device_type=queries.device.type, enabled=False):
            scores = torch.cat([
                knn_scores(queries[i : i + QUERY_BLOCK], self.bank.features,
                           self.bank.labels, s.k, s.temperature, s.chunk)
                for i in range(0, queries.shape[0], QUERY_BLOCK)
            ])
        return scores.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        size = (img.shape[-2], img.shape[-1])
        return upsample_logits(self.patch_scores(img), size, self.features.backbone.patch_size)


def run(ctx: RunContext) -> dict[str, Any]:
    s = ctx.settings
    if not isinstance(s, KnnProbeSettings):
        raise TypeError(f"the k-NN probe needs KnnProbeSettings, got {type(s).__name__}")
    backbone = ctx.backbone
    layer = resolve_layer(s.layer, backbone.depth)
    bank = build_bank(ctx, layer)
    features = PatchFeatures(backbone.to(ctx.accelerator.device), layer, s.feature_norm)
    metrics = ctx.evaluate(KnnPredictor(features, bank, s), ctx.eval_set(), 1)[0]
    side = s.crop_size // backbone.patch_size
    return {
        "metrics": metrics,
        "layer": layer,
        "bank": bank.describe(),
        # Similarity multiply-adds for one crop_size x crop_size input (what the FLOP
        # count of `evaluated_model` covers): every patch against every bank row.
        "retrieval_gmacs_per_crop": side * side * len(bank) * backbone.embed_dim / 1e9,
    }


def evaluated_model(s: KnnProbeSettings, backbone: nn.Module, num_classes: int) -> nn.Module:
    """The network part of the probe: the backbone up to block ``layer`` (later blocks are
    not run). The retrieval's cost depends on the bank built from the data, so it is not
    in this module; the result records it as ``retrieval_gmacs_per_crop``."""
    return PatchFeatures(backbone, resolve_layer(s.layer, backbone.depth), s.feature_norm)
