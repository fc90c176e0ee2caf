"""Linear probing: frozen backbone, blocks ``layers`` concatenated (4·D), one 1x1 conv.

``on_the_fly`` follows the paper (augmented crops, backbone run every step); with
``sweep`` it trains one head per lr of ``sweep_lrs`` on the same batches, each head
exactly the run of that lr alone (same initial weights, data, augmentation, optimiser
state and loss scale), for the cost of about one probe. ``cached`` computes features
once per training image and trains one head per lr of ``sweep_lrs`` together from the
same cached batches. The result says which mode produced it, keeps every head of a sweep
in ``lr_sweep`` and names the rule (``select``) that chose the reported one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench.models.probe import Probe, ProbeHeads, build_probe, probe_losses
from bench.protocols.config import LinearProbeSettings
from bench.protocols.context import RunContext
from bench.protocols.engine import TrainOutcome
from bench.protocols.feature_cache import FeatureCache
from bench.protocols.probe_training import train_heads


class CachedFeatureHeads(nn.Module):
    """Training view of the heads: input is the cached concatenation of block maps."""

    def __init__(
        self,
        heads: ProbeHeads,
        embed_dim: int,
        patch: int,
        ignore_index: int,
        loss_norm: str = "all_pixels",
    ):
        super().__init__()
        self.heads = heads
        self.embed_dim = embed_dim
        self.patch = patch
        self.ignore_index = ignore_index
        self.loss_norm = loss_norm

    def forward(self, feats: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
        maps = list(torch.split(feats, self.embed_dim, dim=1))
        size = (label.shape[-2], label.shape[-1])  # cached crops: image size = label size
        return probe_losses(
            self.heads(maps), label, size, self.patch, self.ignore_index, self.loss_norm
        )


def build_model(ctx: RunContext, kinds: Sequence[str], same_init: bool = False) -> Probe:
    """One head of each type of ``kinds`` on the concatenated blocks; ``same_init`` (the
    on-the-fly sweep): each starts from the weights a one-head probe gets under the same
    seed, and the training loss upsamples by matrix products (equal to float rounding,
    cheaper)."""
    s = ctx.settings
    layers = list(s.layers)
    return build_probe(
        ctx.backbone, layers, inputs=[list(range(len(layers)))] * len(kinds),
        num_classes=ctx.info.num_classes, head=list(kinds), ignore_index=ctx.info.ignore_index,
        loss_norm=s.loss_norm, same_init=same_init, matmul_upsample=same_init,
    )


def sweep_result(s: LinearProbeSettings, out: TrainOutcome) -> dict[str, Any]:
    """The reported head's fields, which lr and rule chose it, and every head's numbers."""
    grid = s.sweep_grid
    rule = s.selection
    if rule == "paper_lr":
        pick = grid.index((s.head, s.lr))  # the settings check that both are swept
    else:
        pick = max(range(len(grid)), key=lambda k: out.last[k]["mIoU"])
    sweep = [
        {"lr": lr, "head": kind, "last": last, "best": best, "reported": k == pick}
        for k, ((kind, lr), last, best) in enumerate(zip(grid, out.last, out.best,
                                                         strict=True))
    ]
    return {**out.result(pick), "reported_lr": grid[pick][1], "reported_head": grid[pick][0],
            "selected_by": rule, "lr_sweep": sweep}


def run(ctx: RunContext) -> dict[str, Any]:
    s = ctx.settings
    assert isinstance(s, LinearProbeSettings)
    name = ctx.dataset["name"]
    if s.mode == "on_the_fly" and not s.sweep:
        probe = build_model(ctx, [s.head])
        out = train_heads(ctx, probe, [s.lr], probe, ctx.train_stream(ctx.train_set()),
                          f"linear probe {name}")
        return {"mode": "on_the_fly", **out.result()}
    kinds = [kind for kind, _ in s.sweep_grid]
    lrs = [lr for _, lr in s.sweep_grid]
    if s.mode == "on_the_fly":
        probe = build_model(ctx, kinds, same_init=True)
        out = train_heads(ctx, probe, lrs, probe, ctx.train_stream(ctx.train_set()),
                          f"linear probe sweep {name}", headwise_scaling=True)
        return {"mode": "on_the_fly", **sweep_result(s, out)}
    probe = build_model(ctx, kinds)
    cache = FeatureCache(ctx)
    cache.build(probe.features.to(ctx.accelerator.device), progress=ctx.progress)
    trainer_view = CachedFeatureHeads(probe.heads, ctx.backbone.embed_dim,
                                      ctx.backbone.patch_size, ctx.info.ignore_index,
                                      s.loss_norm)
    out = train_heads(ctx, probe, lrs, trainer_view, cache.stream(ctx.micro_batch, ctx.seed),
                      f"linear probe sweep {name}")
    return {"mode": "cached", **sweep_result(s, out), "cached_images": len(cache)}


def evaluated_model(s: LinearProbeSettings, backbone: nn.Module, num_classes: int) -> Probe:
    """What a linear probe evaluates: the backbone + one head on the concatenated blocks."""
    layers = list(s.layers)
    return build_probe(backbone, layers, [list(range(len(layers)))], num_classes, head=s.head)
