"""Layer-wise probing: one D -> classes 1x1 conv per block, all trained in one pass.

One backbone forward per batch yields every probed block's map; each head's loss only
touches its own weights, so the heads train exactly as they would separately.
"""

from __future__ import annotations

from typing import Any

from bench.models.probe import build_probe
from bench.protocols.config import LayerwiseProbeSettings
from bench.protocols.context import RunContext
from bench.protocols.probe_training import train_heads


def probed_layers(settings: LayerwiseProbeSettings, depth: int) -> list[int]:
    """Zero-based block indices; negatives count from the end."""
    if settings.layers == "all":
        return list(range(depth))
    out = []
    for i in settings.layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"layer {i} is out of range for a backbone of depth {depth}")
        out.append(j)
    return out


def run(ctx: RunContext) -> dict[str, Any]:
    s = ctx.settings
    assert isinstance(s, LayerwiseProbeSettings)
    layers = probed_layers(s, ctx.backbone.depth)
    probe = build_probe(
        ctx.backbone, layers, inputs=[[k] for k in range(len(layers))],
        num_classes=ctx.info.num_classes, head=s.head, ignore_index=ctx.info.ignore_index,
        loss_norm=s.loss_norm,
    )
    out = train_heads(ctx, probe, [s.lr] * len(layers), probe,
                      ctx.train_stream(ctx.train_set()), f"layer-wise probe {ctx.dataset['name']}")
    per_layer = {str(layer): m for layer, m in zip(layers, out.last, strict=True)}
    best_k = max(range(len(layers)), key=lambda k: out.last[k]["mIoU"])
    return {
        **out.result(best_k),
        "best_layer": layers[best_k],
        "per_layer": per_layer,
        "per_layer_best": {str(layer): b for layer, b in zip(layers, out.best, strict=True)},
    }


def evaluated_model(s: LayerwiseProbeSettings, backbone: Any, num_classes: int) -> Any:
    """What a layer-wise probe evaluates: the backbone + one head per probed block."""
    layers = probed_layers(s, backbone.depth)
    return build_probe(backbone, layers, [[k] for k in range(len(layers))], num_classes,
                       head=s.head)
