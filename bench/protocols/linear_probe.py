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

    def forward(
        self,
        feats: torch.Tensor,
        label: torch.Tensor,
        grad_scales: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        maps = list(torch.split(feats, self.embed_dim, dim=1))
        size = (label.shape[-2], label.shape[-1])  # cached crops: image size = label size
        return probe_losses(
            self.heads(maps), label, size, self.patch, self.ignore_index, self.loss_norm,
            grad_scales,
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


def paper_head(s: LinearProbeSettings) -> int | None:
    """The sweep's head that ``select: paper_lr`` reports (None under another rule)."""
    if s.selection != "paper_lr":
        return None
    return s.sweep_grid.index((s.head, s.lr))  # the settings check that both are swept


def sweep_names(s: LinearProbeSettings) -> list[str]:
    """How progress lines name each head of the sweep."""
    return [f"{kind} lr={lr:g}" for kind, lr in s.sweep_grid]


def sweep_result(s: LinearProbeSettings, out: TrainOutcome) -> dict[str, Any]:
    """The reported head's fields, which lr and rule chose it, and every head's numbers
    (a head dropped as diverged: the step it diverged at, no metrics)."""
    grid = s.sweep_grid
    rule = s.selection
    pick = paper_head(s)
    if pick is None:  # best_on_eval, among the heads that did not diverge
        trained = [k for k in range(len(grid)) if out.last[k] is not None]
        pick = max(trained, key=lambda k: out.last[k]["mIoU"])  # type: ignore[index]
    sweep = []
    for k, ((kind, lr), last, best) in enumerate(zip(grid, out.last, out.best, strict=True)):
        row = {"lr": lr, "head": kind, "last": last, "best": best, "reported": k == pick}
        if k in out.diverged:
            row["diverged_at"] = out.diverged[k]
        sweep.append(row)
    return {**out.result(pick), "reported_lr": grid[pick][1], "reported_head": grid[pick][0],
            "selected_by": rule, "lr_sweep": sweep}


def _required(s: LinearProbeSettings) -> list[int]:
    """Heads whose divergence stops the sweep: the reported one, which alone would."""
    pick = paper_head(s)
    return [] if pick is None else [pick]


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
                          f"linear probe sweep {name}", sweep_names(s), _required(s))
        return {"mode": "on_the_fly", **sweep_result(s, out)}
    probe = build_model(ctx, kinds)
    cache = FeatureCache(ctx)
    cache.build(probe.features.to(ctx.accelerator.device), progress=ctx.progress)
    trainer_view = CachedFeatureHeads(probe.heads, ctx.backbone.embed_dim,
                                      ctx.backbone.patch_size, ctx.info.ignore_index,
                                      s.loss_norm)
    out = train_heads(ctx, probe, lrs, trainer_view, cache.stream(ctx.micro_batch, ctx.seed),
                      f"linear probe sweep {name}", sweep_names(s), _required(s))
    return {"mode": "cached", **sweep_result(s, out), "cached_images": len(cache)}


def evaluated_model(s: LinearProbeSettings, backbone: nn.Module, num_classes: int) -> Probe:
    """What a linear probe evaluates: the backbone + one head on the concatenated blocks."""
    layers = list(s.layers)
    return build_probe(backbone, layers, [list(range(len(layers)))], num_classes, head=s.head)
